"""Process-wide settings that make PyTorch on a CPU fast.

glibc's malloc returns freed memory to the system eagerly and serves large blocks with fresh ``mmap``
pages, so every training step page-faults its activations back in: 1.5-3x slower training measured on
2-core machines (see ``shared/notes/performance.md``). Raising both thresholds to 1 GB keeps that
memory in the process. The environment variables ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
only act at process start; :func:`tune_malloc` sets the same parameters with ``mallopt`` at any time
(measured equally fast), so no process needs restarting with the variables set.

It is the one process-wide setting of the package, and the library never makes it on its own: the command
line (:func:`attendnets.cli.main`), the benchmarks and the test suite call :func:`tune_malloc` at start; a
program that trains or measures through the Python API should do the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1_000_000_000


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GB; ``False`` where there is no glibc ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``count`` inside the block and restored after it."""
    import torch  # this module stays free of heavy imports: the command line loads it before parsing

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read: not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
