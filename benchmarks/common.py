"""What every benchmark records beside its numbers: command, commit, machine, and a tuned allocator.

Every benchmark calls :func:`attendnets.runtime.tune_malloc` first (as the command line does).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attendnets.bench import machine_info
from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write_json
from attendnets.runtime import tune_malloc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


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
            "malloc_tuned": tune_malloc(),  # idempotent: records whether glibc took the thresholds
            "load_average_at_start": os.getloadavg(),
        },
    }


def run_main(main: Callable[[], int | None]) -> int:
    """A benchmark's entry point: bad input (no dataset, a malformed checkpoint, ...) and a failed command end it
    with one line naming the problem instead of a traceback (with the command's last line of error, when it was
    captured rather than printed)."""
    name = Path(sys.argv[0]).name
    try:
        return main() or 0
    except AttendNetsError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
    except subprocess.CalledProcessError as err:
        said = (err.stderr or "").strip().splitlines() if isinstance(err.stderr, str) else []
        print(f"{name}: error: {shlex.join(map(str, err.cmd))} failed (exit status {err.returncode})"
              + (f": {said[-1]}" if said else ""), file=sys.stderr)
    return 1


def step(name: str, record: Path, command: list[str],
         resume_from: Path | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Run ``attendnets`` ``command`` (its ``--json`` output kept in ``record``, each report with the command
    line) unless already recorded; ``resume_from``: the command's training folder, continued with ``--resume``
    if a killed run left it."""
    if record.is_file():
        print(f"{name}: done ({record})", flush=True)
        return json.loads(record.read_text())
    full = [sys.executable, "-m", "attendnets", *command, "--json"]
    if resume_from is not None and (resume_from / "config.json").is_file():
        full.append("--resume")
    print(f"{name}: {shlex.join(full[1:])}", flush=True)
    out = subprocess.run(full, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    result = json.loads(out)
    for report in result if isinstance(result, list) else [result]:  # bench --threads 1,2: a report per count
        report["command"] = shlex.join(["python", *full[1:]])
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, result)
    return result


def provenance(context: dict) -> list[str]:
    """A report's "How it was run" lines: driver command, commit, machine (with the CPU's instruction sets,
    which int8 latency depends on) and date."""
    m = context["machine"]
    return [
        f"- driver: `{context['command']}`",
        f"- commit: `{context['commit']}`" + (" (with uncommitted changes)" if context["dirty"] else ""),
        f"- machine: {m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX2'}; latency depends on these: int8 "
        f"convs are much faster with VNNI), {m['cores']} cores, torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}",
        f"- date: {context['date']}",
    ]
