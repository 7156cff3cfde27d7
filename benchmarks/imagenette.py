"""Accuracy on Imagenette: AttendNet-A/B and our found presets against MobileNet-V1/V2, from scratch, one recipe.

Each model is trained by ``attendnets train`` in its own process (one after another: never two heavy
processes at once), then its best checkpoint is re-evaluated by ``attendnets eval --json``. The recipe:
128 px (random-resized crops keeping 35-100% of the image area for training; resize and centre crop for
val), 15 epochs, AdamW lr 2e-3, weight decay 0.05, cosine schedule with 1 warm-up epoch, label smoothing
0.1, batch 64, EMA, fp32 channels_last, seed 0. Runs live in ``runs/imagenette/<model>/`` (outside git)
and the script is resumable: finished models are skipped and a killed one continues with ``--resume``. A
finished run is recorded in the ledger (benchmarks/ledger.py: docs/results/runs/imagenette/<model>.json,
committed), and the report is built from the records, so models trained on different machines, or by
different invocations (``--models``), make up one comparison. ``--seed N`` trains the same recipe at another
seed into ``runs/imagenette-s<N>/``: the report gives each model's top-1 at every recorded seed and their spread.

    python benchmarks/imagenette.py --data ../shared/datasets/imagenette2-224   # or set ATTENDNETS_DATA
    python benchmarks/imagenette.py --models attendnet_a --seed 1   # a second seed of one model
    python benchmarks/imagenette.py --models mobilenet_v2 --epochs 1 --subset 640  # smoke run

The results (docs/results/imagenette.{md,json}) hold top-1 of the re-evaluation, parameters, MACs at
128 px, training images/s, wall time, the commands, the commit and the machine. A run with other
epochs or a subset is a smoke run, and a report that lacks a model's record a partial one: each is written
into its runs folder, not docs/results.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, run_context, run_main  # noqa: E402
from ledger import LEDGER, RUNS, load, record, record_path  # noqa: E402

from attendnets import training  # noqa: E402
from attendnets.cli import build_parser  # noqa: E402
from attendnets.cli.train import config_from_args  # noqa: E402
from attendnets.complexity import profile_model  # noqa: E402
from attendnets.data import resolve_data_dir  # noqa: E402
from attendnets.errors import AttendNetsError  # noqa: E402
from attendnets.files import atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.registry import create_model  # noqa: E402

MODELS = ("attendnet_a", "attendnet_b", "attendnet_found_macs", "attendnet_found_latency", "mobilenet_v1",
          "mobilenet_v2")
IMG_SIZE = 128
EPOCHS = 15
# Written out in full, so that a change of the train verb's defaults cannot change the comparison. The crop
# range is not timm's 8-100%: benchmarks/presets.py's recipe arms (docs/results/presets.md) chose it; the
# zero-initialised last BN of AttendNets' residual blocks won its zero-init-last arm (docs/results/zero_init.md),
# PyTorch's default initialisation its init-torch arm (docs/results/weight_init.md; the runs before it are
# recorded in docs/results/runs/imagenette-kaiming/).
RECIPE = ["--img-size", str(IMG_SIZE), "--batch-size", "64", "--lr", "2e-3", "--weight-decay", "0.05",
          "--warmup-epochs", "1", "--label-smoothing", "0.1", "--crop-scale", "0.35", "1", "--seed", "0", "--ema",
          "--zero-init-last", "--weight-init", "torch"]
# How the runs are made faster without changing them: images decoded once (about 2 GiB for Imagenette).
SPEED = ["--cache-images"]
NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Imagenette root with train/ and val/ (default: $ATTENDNETS_DATA)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS}")
    parser.add_argument("--subset", type=int, help="at most N images of each split (smoke runs)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="train the recipe at this seed (default 0, the comparison's; others go to "
                             "runs/imagenette-s<N> and into the report's seed spread)")
    parser.add_argument("--runs", type=Path, help="runs folder (default runs/imagenette, runs/imagenette-s<N> for "
                                                  "--seed N; smoke runs: the same ending in -smoke)")
    return parser.parse_args()


def completed_epochs(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return max((json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if line.strip()), default=0)


def recipe(seed: int, zero_init_last: bool = True) -> list[str]:
    """The comparison recipe with another seed; ``zero_init_last=False``: as it was before the zero-initialised
    last BN won (the studies run before then pin it)."""
    at = RECIPE.index("--seed")
    options = [*RECIPE[: at + 1], str(seed), *RECIPE[at + 2 :]]
    return options if zero_init_last else ["--no-zero-init-last" if o == "--zero-init-last" else o for o in options]


def recipe_changes(run: Path, model: str, epochs: int, subset: int | None, seed: int = 0,
                   zero_init_last: bool = True) -> list[str]:
    """How the run started in ``run`` (its config.json, or its record's) differs from the comparison recipe
    (``recipe(seed, zero_init_last)``) for ``model``, one ``field: run's -> recipe's`` per difference (none: it
    is that recipe's run, or no run has started)."""
    recorded = load(run)
    if recorded is not None:
        saved = recorded["config"]
    elif (run / "config.json").is_file():
        saved = json.loads((run / "config.json").read_text())
    else:
        return []
    options = [*recipe(seed, zero_init_last), "--epochs", str(epochs), *(["--subset", str(subset)] if subset else [])]
    config = config_from_args(build_parser().parse_args(["train", "--model", model, "--output", str(run), *options]))
    return [f"{field}: {was} -> {now}" for field, was, now in training.recipe_changes(saved, config)]


def comparison_run(model: str, chosen: dict[str, Path], runs: Path = ROOT / "runs" / "imagenette") -> Path:
    """The folder of ``model``'s comparison run: ``runs/<model>``, or ``chosen[model]`` (``--run
    MODEL=FOLDER`` of ship.py and deploy.py: another recorded run of the comparison recipe, at another seed, for
    when the recorded folder is on the machine that trained it, not this one); refuses a chosen run whose recipe
    differs in more than the seed."""
    if model not in chosen:
        return runs / model
    run = chosen[model].resolve()
    recorded = load(run)
    if recorded is None:
        raise AttendNetsError(f"--run {model}={chosen[model]}: no recorded run there ({record_path(run)})")
    changes = recipe_changes(run, model, EPOCHS, None, seed=recorded["config"]["seed"])
    if changes:
        raise AttendNetsError(f"--run {model}={chosen[model]} is not a run of the comparison recipe "
                              f"({'; '.join(changes)})")
    return run


def run_options(values: list[str] | None, models: list[str]) -> dict[str, Path]:
    """``--run MODEL=FOLDER`` values as ``{model: folder}``, each for one of ``models``."""
    chosen = {}
    for value in values or []:
        model, _, folder = value.partition("=")
        if not folder or model not in models:
            raise AttendNetsError(f"--run takes MODEL=FOLDER with MODEL one of {', '.join(models)}, not {value!r}")
        chosen[model] = Path(folder)
    return chosen


def train_command(model: str, run: Path, data: Path, options: list[str], workers: int,
                  epochs: int = EPOCHS) -> list[str]:
    """The train verb for ``model`` into ``run`` with the recipe ``options`` (e.g. ``recipe(seed)``), made
    faster by SPEED: the one command line of every driver's training runs."""
    return [sys.executable, "-m", "attendnets", "train", "--data", str(data), "--model", model, "--epochs", str(epochs),
            *options, *SPEED, "--workers", str(workers), "--output", str(run)]


def resumed(run: Path) -> list[str]:
    """``--resume`` when a killed run left ``run`` behind (the train verb writes its config first), else nothing."""
    return ["--resume"] if (run / "config.json").is_file() else []


def train(model: str, run: Path, args: argparse.Namespace, data: Path) -> list[str]:
    """Train ``model`` into ``run`` unless finished or recorded; returns the command (as first given)."""
    command = train_command(model, run, data, recipe(args.seed), args.workers, args.epochs)
    if args.subset:
        command += ["--subset", str(args.subset)]
    changes = recipe_changes(run, model, args.epochs, args.subset, seed=args.seed)
    if changes:
        sys.exit(f"{run} holds a run of another recipe ({'; '.join(changes)}): move it away or give --runs")
    if load(run) is not None or completed_epochs(run) >= args.epochs:
        print(f"{model}: already trained ({run})", flush=True)
        return command
    resume = resumed(run)
    print(f"{model}: {'resuming' if resume else 'training'}: {shlex.join(command + resume)}", flush=True)
    subprocess.run(command + resume, check=True, cwd=ROOT)
    return command


def summarise(model: str, recorded: dict) -> dict:
    """The report's row of ``model`` from the record of its run."""
    epochs, evaluation = recorded["history"], recorded["eval"]
    complexity = profile_model(create_model(model, num_classes=NUM_CLASSES), img_size=IMG_SIZE)
    return {
        "model": model,
        "top1": recorded["top1"],
        "int8_top1": recorded["int8_top1"],
        "top5": evaluation["top5"],
        "best_epoch": recorded["best_epoch"],
        "best_weights": recorded["weights"],
        "last_epoch_top1": max(recorded["last_raw_top1"], recorded["last_ema_top1"] or 0.0),
        "params": complexity.params,
        "macs": complexity.macs,
        "train_images_per_s": statistics.median(r["train_images_per_s"] for r in epochs),
        "epoch_images_per_s": [round(r["train_images_per_s"], 1) for r in epochs],
        "wall_seconds": sum(r["epoch_seconds"] for r in epochs),
        "epochs": epochs[-1]["epoch"],
        "train_command": recorded["train_command"],
        "eval_command": recorded["eval_command"],
        "quantize_command": recorded["quantize_command"],
        "recorded": {k: recorded["recorded"][k] for k in ("commit", "date", "machine")},
        "per_class_top1": evaluation["per_class_top1"],
    }


def seed_runs(seed: int, smoke: bool = False) -> Path:
    """The runs folder of the comparison recipe at ``seed``: ``runs/imagenette`` for seed 0, else
    ``runs/imagenette-s<N>``; a smoke run's name ends in ``-smoke`` (its records stay out of the ledger)."""
    return RUNS / ("imagenette" + (f"-s{seed}" if seed else "") + ("-smoke" if smoke else ""))


def seed_spread(models: list[str]) -> list[dict]:
    """Each of ``models`` recorded at more than one seed (seed 0 in ``runs/imagenette``, seed N in
    ``runs/imagenette-s<N>``): its top-1 in float and at 8 bits per seed, the spread (max - min) of each, and
    each seed's train command and CPU."""
    seeds = [0, *(int(found[1]) for kept in LEDGER.glob("imagenette-s*")
                  if (found := re.fullmatch(r"imagenette-s(\d+)", kept.name)) and int(found[1]))]
    folders = {seed: seed_runs(seed) for seed in sorted(seeds)}
    spread = []
    for model in models:
        recorded = {seed: r for seed, folder in folders.items() if (r := load(folder / model)) is not None}
        if len(recorded) > 1:
            top1 = {seed: r["top1"] for seed, r in recorded.items()}
            int8 = {seed: r["int8_top1"] for seed, r in recorded.items()}
            spread.append({"model": model, "top1": top1, "int8_top1": int8,
                           "top1_spread": max(top1.values()) - min(top1.values()),
                           "int8_spread": max(int8.values()) - min(int8.values()),
                           "train_commands": {seed: r["train_command"] for seed, r in recorded.items()},
                           "cpus": {seed: r["recorded"]["machine"]["cpu"] for seed, r in recorded.items()}})
    return spread


def ordering(rows: dict[str, dict]) -> list[str]:
    """Plain statements on the paper's two claims, where both models of a claim were run."""
    statements = []
    for ours, theirs in (("attendnet_b", "mobilenet_v1"), ("attendnet_a", "mobilenet_v2")):
        if ours not in rows or theirs not in rows:
            statements.append(f"{ours} vs {theirs}: not both run, no verdict.")
            continue
        a, b = rows[ours], rows[theirs]
        higher = a["top1"] > b["top1"]
        fewer = a["macs"] < b["macs"]
        verdict = "holds" if higher and fewer else "does NOT hold"
        statements.append(
            f"The paper's ordering {ours} > {theirs} at fewer MACs {verdict} here: top-1 {a['top1']:.2f}% vs "
            f"{b['top1']:.2f}% ({a['top1'] - b['top1']:+.2f} points), MACs {a['macs'] / 1e6:.1f}M vs "
            f"{b['macs'] / 1e6:.1f}M ({b['macs'] / a['macs']:.2f}x fewer)."
        )
    return statements


def slow_epochs(row: dict) -> list[int]:
    """Epochs (1-based) whose training speed was below half the run's median."""
    return [i + 1 for i, speed in enumerate(row["epoch_images_per_s"]) if speed < row["train_images_per_s"] / 2]


def write_report(rows: dict[str, dict], seeds: list[dict], context: dict, smoke: bool, out_dir: Path,
                 args: argparse.Namespace) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    statements = ordering(rows)
    report = {**context, "smoke_run": smoke, "img_size": IMG_SIZE, "epochs": args.epochs, "subset": args.subset,
              "recipe": shlex.join(RECIPE), "models": list(rows.values()), "ordering": statements,
              "seed_spread": seeds}
    atomic_write_json(out_dir / "imagenette.json", report)
    m = context["machine"]
    lines = [
        "# Imagenette: AttendNets against MobileNets, trained from scratch with one recipe",
        "",
        *(["**SMOKE RUN: not the comparison (fewer epochs or a subset of the data).**", ""] if smoke else []),
        f"Imagenette (10 classes; {'a subset' if args.subset else '9,469 train / 3,925 val images'}), "
        f"{IMG_SIZE} px, {args.epochs} epochs, recipe `{shlex.join(RECIPE)}` (AdamW, cosine with warm-up, "
        "label smoothing, EMA, fp32 channels_last, random-resized crop + flip; val: resize and centre crop 0.875). "
        "Top-1 is the re-evaluation (`attendnets eval`) of each run's best checkpoint, chosen on val/ among "
        "the raw and EMA weights of every epoch, which flatters every model a little; the last epoch's "
        "top-1 is shown beside it. 8-bit weights: that checkpoint quantized after training (`attendnets "
        "quantize`). Accuracy here is not the paper's ImageNet50 at 224 px."
        + ("" if set(MODELS) <= set(rows) else " **PARTIAL: not every model has a recorded run yet.**"),
        "",
        "| model | top-1 (best ckpt) | 8-bit weights | top-1 last epoch | top-5 | params | MACs @128 px | train img/s "
        "| wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['model']} | {r['top1']:.2f}% (epoch {r['best_epoch']}, {r['best_weights']}) | "
            f"{r['int8_top1']:.2f}% | {r['last_epoch_top1']:.2f}% | {r['top5']:.2f}% | {r['params'] / 1e3:,.0f}K | "
            f"{r['macs'] / 1e6:,.1f}M | {r['train_images_per_s']:.0f} | {r['wall_seconds'] / 60:.1f} min |"
        )
    lines += ["", "## Does the paper's ordering hold?", "", *[f"- {s}" for s in statements], "", "## How it was run", ""]
    lines += [f"- driver: `{context['command']}`", f"- commit: `{context['commit']}`"
              + (" (with uncommitted changes)" if context["dirty"] else ""),
              f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}",
              f"- date: {context['date']}", ""]
    for r in rows.values():
        at = r["recorded"]
        lines += [f"- {r['model']}, recorded at commit `{at['commit'][:7]}` on {at['machine']['cpu']} ({at['date']}):",
                  f"  `{r['train_command']}`; `{r['eval_command']}`; `{r['quantize_command']}`"]
    lines += ["", "Training images/s is the median over epochs, data loading included; wall time sums the "
              "epochs (training, evaluation and checkpoints), process start-up excluded. The table is seed 0 of "
              "each model; " + ("the models also run at other seeds follow." if seeds else
                                "the seed-to-seed spread of top-1 is not measured here.")]
    if seeds:
        lines += ["", "## Seed spread", "", "The same recipe at other seeds (`--seed N`, runs/imagenette-s<N>): "
                  "top-1 of the best checkpoint, float / 8-bit weights.", "",
                  "| model | top-1 per seed | 8-bit per seed | spread of top-1 (float / 8-bit) |", "|---|---|---|---|"]
        lines += [f"| {s['model']} | {', '.join(f's{k}: {v:.2f}%' for k, v in s['top1'].items())} | "
                  f"{', '.join(f's{k}: {v:.2f}%' for k, v in s['int8_top1'].items())} | "
                  f"{s['top1_spread']:.2f} / {s['int8_spread']:.2f} points |" for s in seeds]
        lines += ["", *[f"- {s['model']} seed {k}, on {s['cpus'][k]}: `{c}`"
                        for s in seeds for k, c in s["train_commands"].items() if k]]
    slowed = {r["model"]: slow_epochs(r) for r in rows.values()}
    if any(slowed.values()):
        lines += ["", "Epochs that ran at less than half their run's median speed (the machine was shared or the "
                  "run paused then; they inflate the wall time, not the median images/s):"]
        lines += [f"- {m}: epochs {', '.join(map(str, e))}" for m, e in slowed.items() if e]
    atomic_write_text(out_dir / "imagenette.md", "\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'imagenette.md'} and {out_dir / 'imagenette.json'}")
    for s in statements:
        print(s)


def main() -> int:
    args = parse_args()
    data = resolve_data_dir(args.data).resolve()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    smoke = args.epochs != EPOCHS or args.subset is not None
    runs = args.runs or seed_runs(args.seed, smoke)
    context = run_context()
    for m in models:
        record(runs / m, train(m, runs / m, args, data), data, args.workers)
    # Every model recorded so far at seed 0, wherever it was trained; docs/results holds the whole comparison only.
    comparison = seed_runs(0) if args.seed and not smoke else runs
    everyone = list(dict.fromkeys([*MODELS, *models]))
    rows = {m: summarise(m, r) for m in everyone if (r := load(comparison / m)) is not None}
    partial = not set(MODELS) <= set(rows)
    seeds = [] if smoke else seed_spread(everyone)
    write_report(rows, seeds, context, smoke, comparison if smoke or partial else RESULTS, args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
