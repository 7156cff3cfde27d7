"""What every benchmark records beside its numbers: command, commit, machine, and a tuned allocator."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from attendnets.bench import machine_info

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"

# glibc malloc returning pages to the OS on every large free costs PyTorch 1.5-3x on this machine
# (shared/notes/performance.md); the thresholds are read at process start, hence the re-exec.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}


def reexec_with_tuned_malloc() -> None:
    """Restart this process once with the malloc thresholds set, unless they already are."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_context() -> dict:
    """Command, commit, machine (CPU, its instruction sets, library versions) and allocator settings."""
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            **machine_info(),
            "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
            "load_average_at_start": os.getloadavg(),
        },
    }
