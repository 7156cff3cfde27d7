"""Does our recipe leave accuracy on the table? Recipe arms on Imagenette, 2 seeds each (issue 17).

An independent trainer with nearly our recipe (128 px, 15 epochs, AdamW 2e-3, cosine, label smoothing 0.1,
batch 64) but random-resized crops keeping 35-100% of the image area (ours: timm's 8-100%), no EMA and the
last epoch's weights got about 4 points more on Imagenette for attendnet_b and MobileNet-V1. Each arm here
changes our comparison recipe (benchmarks/imagenette.py) in one respect or several, for both models:

- ``recipe``: the comparison recipe as it is (seed 0 is benchmarks/imagenette.py's run, reused);
- ``crop035``: crops keep 35-100% of the area;
- ``crop035-noema``: that, without the EMA (the picked weights are then the raw ones).

Each run is ``attendnets train`` in its own process, one after another, in ``runs/presets/<arm>/<model>-s<seed>``
(resumable: a finished run is skipped, a killed one continues with ``--resume``); its best checkpoint is
re-evaluated with ``attendnets eval``. Reported per arm and model: best-checkpoint top-1 and last-epoch top-1
(raw and EMA weights) per seed, their mean and spread. The report (docs/results/presets.{md,json}) is written
once every run has finished; until then ``--report`` writes what there is into the runs folder.

    python benchmarks/presets.py --data ../shared/datasets/imagenette2-224
    python benchmarks/presets.py --arms crop035 --models attendnet_b --seeds 0   # one run
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, provenance, run_context  # noqa: E402
from imagenette import EPOCHS, RECIPE, completed_epochs, evaluate  # noqa: E402

from attendnets.data import resolve_data_dir  # noqa: E402
from attendnets.files import atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402

ARMS = {
    "recipe": ("the comparison recipe (crops keep 8-100% of the area, EMA, best epoch)", []),
    "crop035": ("crops keep 35-100% of the area", ["--crop-scale", "0.35", "1"]),
    "crop035-noema": ("crops keep 35-100% of the area, no EMA", ["--crop-scale", "0.35", "1", "--no-ema"]),
}
MODELS = ("attendnet_b", "mobilenet_v1")
SEEDS = (0, 1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Imagenette root with train/ and val/ (default: $ATTENDNETS_DATA)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated (default {','.join(ARMS)})")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated (default 0,1)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "presets")
    parser.add_argument("--report", action="store_true", help="only write the report of the runs finished so far")
    return parser.parse_args()


def run_folder(args: argparse.Namespace, arm: str, model: str, seed: int) -> Path:
    if arm == "recipe" and seed == 0:  # benchmarks/imagenette.py's run is this arm's seed 0
        return ROOT / "runs" / "imagenette" / model
    return args.runs / arm / f"{model}-s{seed}"


def train_command(arm: str, model: str, seed: int, run: Path, data: Path, workers: int) -> list[str]:
    recipe = [a if prev != "--seed" else str(seed) for prev, a in zip(["", *RECIPE], RECIPE)]
    return [sys.executable, "-m", "attendnets", "train", "--data", str(data), "--model", model, "--epochs",
            str(EPOCHS), *recipe, *ARMS[arm][1], "--workers", str(workers), "--output", str(run)]


def train(command: list[str], run: Path) -> None:
    if completed_epochs(run) >= EPOCHS:
        return
    resume = ["--resume"] if (run / "config.json").is_file() else []
    print(f"{'resuming' if resume else 'training'}: {shlex.join(command + resume)}", flush=True)
    subprocess.run(command + resume, check=True, cwd=ROOT)


def result(run: Path, data: Path, workers: int, command: list[str]) -> dict[str, Any]:
    """The run's best-checkpoint evaluation (cached in the run folder) and its last epoch's top-1."""
    cache = run / "presets-eval.json"
    if cache.is_file():
        evaluation = json.loads(cache.read_text())
    else:
        evaluation, eval_command = evaluate(run, data, workers)
        evaluation["command"] = shlex.join(["python", *eval_command[1:]])
        atomic_write_json(cache, evaluation)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = history[-1]
    return {"top1": evaluation["top1"], "best_epoch": evaluation["epoch"], "weights": evaluation["weights"],
            "last_raw_top1": last["val_top1"], "last_ema_top1": last.get("ema_val_top1"),
            "train_command": shlex.join(["python", *command[1:]]), "eval_command": evaluation["command"]}


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f}% ({max(values) - min(values):.2f})" if len(values) > 1 else f"{values[0]:.2f}%"


def write_report(rows: dict[str, dict[str, dict[int, dict]]], context: dict, out_dir: Path, complete: bool) -> None:
    lines = ["# Recipe arms on Imagenette: does our comparison recipe leave accuracy on the table?", "",
             *([] if complete else ["**PARTIAL: not every run has finished.**", ""]),
             f"{EPOCHS} epochs at 128 px, the comparison recipe of benchmarks/imagenette.py changed as each arm says; "
             "val top-1 (3,925 images), float weights. Mean over seeds, in brackets the spread (max - min).", "",
             "| arm | model | best checkpoint top-1 | per seed | last epoch, raw weights | last epoch, EMA |",
             "|---|---|---|---|---|---|"]
    for arm, models in sorted(rows.items(), key=lambda kv: list(ARMS).index(kv[0])):
        for model, seeds in models.items():
            runs = list(seeds.values())
            per_seed = ", ".join(f"s{s} {r['top1']:.2f}%" for s, r in seeds.items())
            ema = [r["last_ema_top1"] for r in runs if r["last_ema_top1"] is not None]
            lines.append(f"| {arm}: {ARMS[arm][0]} | {model} | {_mean_spread([r['top1'] for r in runs])} | {per_seed} | "
                         f"{_mean_spread([r['last_raw_top1'] for r in runs])} | {_mean_spread(ema)} |")
    lines += ["", "## How it was run", "", *provenance(context), "",
              "Commands of each run are in presets.json (train_command, eval_command)."]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "presets.md", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "presets.json", {**context, "complete": complete, "runs": rows})
    print(f"wrote {out_dir / 'presets.md'}")


def main() -> int:
    tune_malloc()
    args = parse_args()
    data = resolve_data_dir(args.data)
    arms, models = args.arms.split(","), args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    context = run_context()
    rows: dict[str, dict[str, dict[int, dict]]] = {}
    for arm in arms:
        for model in models:
            for seed in seeds:
                run = run_folder(args, arm, model, seed)
                command = train_command(arm, model, seed, run, data, args.workers)
                if not args.report:
                    train(command, run)
                if completed_epochs(run) >= EPOCHS:
                    rows.setdefault(arm, {}).setdefault(model, {})[seed] = result(run, data, args.workers, command)
    complete = not args.report and (set(arms), set(models), set(seeds)) == (set(ARMS), set(MODELS), set(SEEDS))
    write_report(rows, context, RESULTS if complete else args.runs, complete)
    return 0


if __name__ == "__main__":
    sys.exit(main())
