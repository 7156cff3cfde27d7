"""The ledger of finished training runs: one small JSON record per run, committed under docs/results/runs/.

A run's folder (``runs/...``: checkpoints, tens of MB) stays on the machine that trained it; a study that takes
more runs than one session can train spans machines. So when a run is finished its record is written: the
train, eval and quantize commands, the training config and per-epoch metrics, the best checkpoint's val top-1
in float and at 8-bit weights, and the commit, machine and date of the recording. Reports
(benchmarks/imagenette.py, presets.py, ablation.py, ship.py) read the records, so a run finished on another
machine counts, and a run with a record is never trained again. ``runs/<path>`` is recorded in
``docs/results/runs/<path>.json``; a smoke run (``runs/<name>-smoke/...``) or a run kept outside ``runs/`` (a
test's) beside its folder. A record migrated from a report written before the ledger existed holds that
report's summary and commands only (``migrated_from`` says which).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, run_context

from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write_json
from attendnets.spec import ArchSpec

RUNS = ROOT / "runs"
LEDGER = RESULTS / "runs"


def under_runs(run: Path) -> Path | None:
    """``run``'s path under ``runs/`` (a folder linked to another is that one); ``None`` for a smoke run or a run
    kept elsewhere, whose record is not committed."""
    try:
        inside = run.resolve().relative_to(RUNS.resolve())
    except ValueError:
        return None
    return None if inside.parts[0].endswith("-smoke") else inside


def record_path(run: Path) -> Path:
    """Where the record of ``run`` is kept."""
    inside = under_runs(run)
    return run.parent / f"{run.name}.record.json" if inside is None else LEDGER / f"{inside}.json"


def load(run: Path) -> dict[str, Any] | None:
    """The record of ``run``, or ``None`` while it has none."""
    path = record_path(run)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AttendNetsError(f"{path}: not a run record ({err.msg}); delete it to record the run again") from None


def portable(command: list[str] | str, data: Path) -> str:
    """``command`` as run from the project root: ``python`` for this interpreter, paths inside the project and
    the data folder relative to the root."""
    text = shlex.join(["python", *command[1:]]) if isinstance(command, list) else command
    return text.replace(str(data), os.path.relpath(data, ROOT)).replace(f"{ROOT}/", "")


def history(run: Path) -> list[dict[str, Any]]:
    """The run's per-epoch metrics (``metrics.jsonl``)."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def evaluate(run: Path, data: Path, workers: int) -> tuple[dict, list[str]]:
    """``attendnets eval`` of the run's best checkpoint: its report and the command."""
    command = [sys.executable, "-m", "attendnets", "eval", "--checkpoint", str(run / "best"), "--data", str(data),
               "--json", "--workers", str(workers)]
    out = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return json.loads(out), command


def quantize(run: Path, data: Path, workers: int) -> dict:
    """Post-training 8-bit weights of the run's best checkpoint, in ``<run>-int8/``, evaluated on val: the
    ``attendnets quantize`` report (cached: a run is quantized once), its command and the 8-bit checkpoint."""
    out = run.parent / f"{run.name}-int8"
    command = [sys.executable, "-m", "attendnets", "quantize", "--checkpoint", str(run), "--output", str(out),
               "--data", str(data), "--workers", str(workers), "--json"]
    if not (out / "quantize.json").is_file():
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return {**json.loads((out / "quantize.json").read_text()), "command": shlex.join(["python", *command[1:]]),
            "checkpoint": str(out / "best")}


def record(run: Path, train_command: list[str], data: Path, workers: int) -> dict[str, Any]:
    """The record of the finished run in ``run`` (trained by ``train_command``): read from the ledger, else made
    by evaluating its best checkpoint in float and at 8-bit weights, and written to the ledger."""
    found = load(run)
    if found is not None:
        return found
    evaluation, eval_command = evaluate(run, data, workers)
    int8 = quantize(run, data, workers)
    epochs = history(run)
    last = epochs[-1]
    made = {
        "run": str(run) if under_runs(run) is None else f"runs/{under_runs(run)}",
        "top1": evaluation["top1"], "int8_top1": int8["int8_top1"], "best_epoch": evaluation["epoch"],
        "weights": evaluation["weights"], "last_raw_top1": last["val_top1"], "last_ema_top1": last.get("ema_val_top1"),
        "train_command": portable(train_command, data), "eval_command": portable(eval_command, data),
        "quantize_command": portable(int8["command"], data),
        "config": json.loads((run / "config.json").read_text()), "eval": evaluation,
        "int8": {k: v for k, v in int8.items() if k not in ("command", "checkpoint")}, "history": epochs,
        "recorded": run_context(),
    }
    model = Path(made["config"]["model"])
    if model.suffix in (".json", ".yaml", ".yml") and model.is_file():  # a spec file written beside the runs
        made["spec"] = ArchSpec.load(model).to_dict()
    path = record_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, made)
    print(f"recorded {run} in {path}", flush=True)
    return made
