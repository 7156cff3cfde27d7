"""The harness of the reliability tests: run ``attendnets`` as a user would (a subprocess, real files) and
check that a bad input fails as promised: exit code 2, one line on stderr naming the problem, and every file
under the watched folders exactly as it was (same names, same bytes).

A case module builds its inputs in ``tmp_path`` and calls :func:`expect_refusal`::

    expect_refusal(["train", "--epochs", "0", ...], "--epochs", watch=[tmp_path])
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snapshot(*folders: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file under ``folders`` (a missing folder contributes nothing)."""
    hashes = {}
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def run_cli(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m attendnets ARGS`` in a fresh process (one torch thread, no dataset from the environment)."""
    base = {k: v for k, v in os.environ.items() if k != "ATTENDNETS_DATA"}
    full_env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "attendnets", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def expect_refusal(args: list[str], names: str | list[str], watch: list[Path], cwd: Path | None = None,
                   env: dict[str, str] | None = None) -> str:
    """Run ``args`` and assert it is refused: exit code 2, stderr one line that starts with ``attendnets`` and
    contains every string of ``names``, no traceback, and the files under ``watch`` unchanged. Returns the line."""
    before = snapshot(*watch)
    done = run_cli(args, cwd, env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    context = f"attendnets {' '.join(args)}\nexit {done.returncode}\nstderr:\n{done.stderr}"
    assert done.returncode == 2, context
    assert len(lines) == 1 and lines[0].startswith("attendnets"), context
    assert "Traceback" not in done.stderr, context
    for name in [names] if isinstance(names, str) else names:
        assert name in lines[0], context
    assert snapshot(*watch) == before, f"files changed by a refused command\n{context}"
    return lines[0]
