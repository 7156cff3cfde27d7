"""A fair test of the design search on Imagenette: does ``attendnets explore`` find an AttendNet that beats
its prototype (attendnet_b) under the prototype's own costs?

Stages, each resumable (run them all at once or one at a time with ``--stages``; a killed stage continues
where it stopped when started again):

1. ``pilot``: ``attendnets explore pilot`` on 6 designs of the attendnet_b space: how well the search's
   cheap rung ranks designs against 3x longer training (Kendall tau).
2. ``search``: ``attendnets explore run`` with TPE on the attendnet_b space, cost = MACs, capped at
   attendnet_b's own MACs and 8-bit weight KB (at 128 px, 10 classes), 2 rungs of successive halving.
3. ``random``: the same search with ``--sampler random`` (sampler seed 1: TPE's first proposals are random,
   so one seed would repeat them): the control, same budget.
4. ``retrain``: the TPE search's pick (rule: among the non-prototype Pareto designs of the study's top
   rung, the highest hold-out top-1 at 8 bits, then the fewer MACs; the random control's pick too when its
   rung top-1 is higher) and the prototype, trained
   with the comparison recipe of ``benchmarks/imagenette.py`` (same data, 128 px, 15 epochs, seeds 0 and 1;
   a seed-0 run of that recipe in ``runs/imagenette/`` is reused), plus attendnet_a and the MobileNets at
   seed 0 (reused likewise); each quantized to 8-bit weights (``attendnets quantize``) and evaluated on
   val/, profiled (params, MACs, peak activation KB at 128 px) and timed (``attendnets bench``, batch 1,
   PyTorch eager and ONNX Runtime int8, interleaved, random weights).
5. ``report``: docs/results/explore.{md,json}.

The search fidelity (64 px, 800 training and 50 hold-out images per class of train/, 3 epochs at rung 0,
9 at rung 1, lr 2e-3, 1 thread) was chosen from a short measurement of attendnet_b at rung 0
(:data:`FIDELITY_PROBE`, also in the report): at the search's default 100 images per class attendnet_b stays
at chance (10%) on Imagenette; about 25k training images seen lift it to 30%, 3x chance on 500 hold-out
images (binomial standard error ~2 points), at 64 px as at 96 px, so the cheaper 64 px was kept.

    python benchmarks/explore.py --data ../shared/datasets/imagenette2-224   # or set ATTENDNETS_DATA
    python benchmarks/explore.py --stages search      # one stage (another terminal: --stages random;
                                                      # the two searches train on one core each)
    python benchmarks/explore.py --smoke              # every stage on a tiny subset, into runs/explore-smoke

CPU time is measured per stage (the children's user + system time, summed over the invocations that
finished) and recorded with the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, run_context, run_main  # noqa: E402
from imagenette import (  # noqa: E402
    EPOCHS,
    IMG_SIZE,
    NUM_CLASSES,
    completed_epochs,
    recipe,
    recipe_changes,
    resumed,
    train_command,
)

from attendnets.complexity import profile_model  # noqa: E402
from attendnets.data import image_files, list_classes, resolve_data_dir  # noqa: E402
from attendnets.files import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.registry import create_model, load_preset  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402
from attendnets.search.pilot import rank_agreement, verdict as pilot_verdict  # noqa: E402
from attendnets.search.requirements import Deployment, measure_costs  # noqa: E402
from attendnets.search.trials import PROTOTYPE as PROTOTYPE_TAG, SCORED  # noqa: E402

# attendnet_b at rung 0 on Imagenette (hold-out top-1 at 8 bits, 1 thread, the machine shared with another
# benchmark): (img px, train images/class, hold-out/class, epochs, lr) -> (top-1 %, seconds)
FIDELITY_PROBE = {
    (64, 100, 25, 3, 2e-3): (9.6, 40), (64, 300, 50, 5, 5e-3): (20.4, 315), (64, 300, 50, 5, 2e-3): (25.0, 383),
    (64, 850, 50, 3, 2e-3): (30.2, 425), (96, 400, 50, 3, 2e-3): (29.4, 401),
}
STAGES = ("pilot", "search", "random", "retrain", "report")
SPACE = "attendnet_b"
PROTOTYPE = "attendnet_b"
ONE_SEED = ("attendnet_a", "mobilenet_v1", "mobilenet_v2")  # trained with seed 0 only, as in benchmarks/imagenette.py
SEEDS = (0, 1)
# TPE's first 10 proposals are random: with one seed for both, the control would repeat them exactly
SAMPLER_SEEDS = {"tpe": 0, "random": 1}
SEARCH_STAGES = {"tpe": "search", "random": "random"}  # sampler -> the stage that runs it (and owns its CPU time)
CLEARLY_LOWER = 0.8  # "clearly lower cost": at most 80% of the prototype's MACs
FULL = {
    "fidelity": {"img-size-search": 64, "images-per-class": 800, "holdout-per-class": 50, "epochs": 3, "lr": 2e-3},
    "pilot": {"designs": 6, "high-epochs": 9},  # rung 0 against rung 1 of the search
    # infeasible proposals cost only the profiler (~0.5 s): random sampling meets the prototype's own caps
    # about once in 50 proposals, so it must not give up after 50 infeasible ones in a row
    "search": {"trials": 12, "rungs": 2, "eta": 3, "give-up-after": 2000},
    "epochs": EPOCHS, "subset": None, "bench_rounds": 10,
}
SMOKE = {
    "fidelity": {"img-size-search": 32, "images-per-class": 8, "holdout-per-class": 4, "epochs": 1, "lr": 5e-3},
    "pilot": {"designs": 3, "high-epochs": 2},
    "search": {"trials": 3, "rungs": 2, "eta": 2, "give-up-after": 2000},
    "epochs": 1, "subset": None, "bench_rounds": 2,
    "smoke_data": {"train": 12, "val": 6},  # images per class linked into a small copy of the dataset
}


def parse_args(description: str = __doc__, stages: tuple[str, ...] = STAGES, folder: str = "explore") -> argparse.Namespace:
    """The driver's options (shared with benchmarks/explore_latency.py): ``stages`` it knows, runs in ``runs/folder``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Imagenette root with train/ and val/ (default: $ATTENDNETS_DATA)")
    parser.add_argument("--stages", default=",".join(stages), help=f"comma-separated (default {','.join(stages)})")
    parser.add_argument("--smoke", action="store_true", help=f"tiny budget on a tiny subset, into runs/{folder}-smoke")
    parser.add_argument("--runs", type=Path, help=f"working folder (default runs/{folder}, or runs/{folder}-smoke)")
    parser.add_argument("--trained", type=Path, default=ROOT / "runs" / "imagenette",
                        help="runs of benchmarks/imagenette.py to reuse at seed 0 (default runs/imagenette)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes for retraining (default 2)")
    args = parser.parse_args()
    unknown = set(args.stages.split(",")) - set(stages)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(stages)}")
    return args


class Steps:
    """Runs the library's commands one at a time and adds each finished one's CPU time to its stage, in
    ``cpu_seconds.json`` (re-read before each update: stages may run in two processes at once)."""

    def __init__(self, runs: Path) -> None:
        self.path = runs / "cpu_seconds.json"

    @property
    def cpu(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, stage: str, command: list[str], capture: bool = False) -> str:
        print(f"[{stage}] {shlex.join(['python', *command[1:]])}", flush=True)
        before = _children_cpu()
        out = subprocess.run(command, check=True, cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None).stdout
        cpu = self.cpu
        cpu[stage] = cpu.get(stage, 0.0) + _children_cpu() - before
        atomic_write_json(self.path, cpu)
        return out or ""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def attendnets(*args: str) -> list[str]:
    return [sys.executable, "-m", "attendnets", *args]


def flags(options: dict[str, Any]) -> list[str]:
    return [a for k, v in options.items() for a in (f"--{k}", str(v))]


def prototype_caps() -> dict[str, float]:
    """attendnet_b's own costs at the comparison's size: the search's caps."""
    costs = measure_costs(load_preset(PROTOTYPE), Deployment(IMG_SIZE, NUM_CLASSES), {"macs", "weight_kb"}, {})
    return {"max-macs": int(costs["macs"]), "max-weight-kb": math.ceil(costs["weight_kb"] * 100) / 100}


def smoke_dataset(source: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """A small copy of ``source`` made of symbolic links: the first images of each class and split."""
    for split, count in per_class.items():
        for name in list_classes(source / split):
            folder = dest / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in image_files(source / split / name)[:count]:
                if not (folder / path.name).exists():
                    (folder / path.name).symlink_to(path.resolve())
    return dest


# -- stages 1-3: pilot and searches --------------------------------------------------------------------


def pilot(steps: Steps, data: Path, runs: Path, budget: dict, caps: dict) -> None:
    fid = {k: v for k, v in budget["fidelity"].items() if k != "epochs"}
    steps.run("pilot", attendnets(
        "explore", "pilot", "--data", str(data), "--space", SPACE, "--output", str(runs / "pilot"),
        "--low-epochs", str(budget["fidelity"]["epochs"]), *flags(budget["pilot"]), *flags(fid), *flags(caps),
        "--img-size", str(IMG_SIZE), "--train-threads", "1", "--json"), capture=True)


def search(steps: Steps, sampler: str, data: Path, runs: Path, budget: dict, objective: list[str]) -> None:
    """``attendnets explore run`` with ``sampler`` into ``runs/search/<sampler>`` (resumed if started);
    ``objective``: the space, cost and caps options."""
    folder = runs / "search"
    resume = ["--resume"] if (folder / sampler / "study.json").is_file() else []
    steps.run(SEARCH_STAGES[sampler], attendnets(
        "explore", "run", "--data", str(data), *objective, "--name", sampler, "--output", str(folder),
        "--sampler", sampler, "--seed", str(SAMPLER_SEEDS[sampler]), "--img-size", str(IMG_SIZE),
        *flags(budget["search"]), *flags(budget["fidelity"]), "--train-threads", "1", "--json", *resume), capture=True)


# -- stage 4: retraining, 8 bits, profile, latency -------------------------------------------------------


def pick_found(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The documented rule: the non-prototype Pareto design of the top rung with the highest hold-out
    top-1 at 8 bits (then the fewer MACs); None when the prototype is the whole front."""
    found = [d for d in summary["pareto"] if not d["reference"]]
    return max(found, key=lambda d: (d["top1_int8"], -d["costs"]["macs"]), default=None)


def found_designs(runs: Path) -> dict[str, dict[str, Any]]:
    """``{label: pareto entry}`` of the designs to retrain: the TPE search's pick, and the random control's
    pick too when its rung top-1 is higher (and it is another design)."""
    picks = {}
    for sampler in ("tpe", "random"):
        path = runs / "search" / sampler / "summary.json"
        design = pick_found(json.loads(path.read_text())) if path.is_file() else None
        if design:
            picks[f"found_{sampler}"] = design
    tpe, rnd = picks.get("found_tpe"), picks.get("found_random")
    if tpe and rnd and (rnd["top1_int8"] <= tpe["top1_int8"] or _blocks(rnd) == _blocks(tpe)):
        del picks["found_random"]
    return picks


def _blocks(design: dict[str, Any]) -> list:
    return json.loads(Path(design["file"]).read_text())["blocks"]


def reusable(run: Path, model: str, data: Path, epochs: int, subset: int | None, zero_init_last: bool = True) -> bool:
    """Whether ``run`` is a finished seed-0 run of ``model`` with the comparison recipe on ``data``."""
    if completed_epochs(run) < epochs or recipe_changes(run, model, epochs, subset, zero_init_last=zero_init_last):
        return False
    return Path(json.loads((run / "config.json").read_text())["data"]).resolve() == data


def train_run(steps: Steps, model: str, seed: int, data: Path, runs: Path, trained: Path, budget: dict,
              workers: int, zero_init_last: bool = True) -> Path:
    """The run folder of ``model`` at ``seed`` with the comparison recipe (``recipe(seed, zero_init_last)``),
    trained (or resumed) if needed."""
    if seed == 0 and reusable(trained / model, model, data, budget["epochs"], budget["subset"], zero_init_last):
        return trained / model
    run = runs / "retrain" / f"{Path(model).stem}-s{seed}"
    if completed_epochs(run) < budget["epochs"]:
        options = recipe(seed, zero_init_last)
        steps.run("retrain", [*train_command(model, run, data, options, workers, budget["epochs"]), *resumed(run)])
    return run


def quantize(steps: Steps, run: Path, label: str, data: Path, runs: Path, workers: int) -> dict[str, Any]:
    """Post-training 8-bit weights of ``run``'s best checkpoint, evaluated on val/ (cached)."""
    out = runs / "int8" / label
    report = out / "quantize.json"
    if not (report.is_file() and json.loads(report.read_text())["checkpoint"] == str(run)):
        shutil.rmtree(out, ignore_errors=True)  # this driver's own output for an earlier checkpoint: quantize keeps out
        steps.run("retrain", attendnets("quantize", "--checkpoint", str(run), "--output", str(out), "--data", str(data),
                                        "--workers", str(workers), "--json"), capture=True)
    return json.loads(report.read_text())


def bench(steps: Steps, models: list[str], runs: Path, rounds: int) -> dict[str, dict[str, float]]:
    """``{model: {runtime: batch-1 median ms}}`` at 128 px, 10 classes, interleaved with the MobileNets."""
    path = runs / "bench.json"
    if path.is_file() and json.loads(path.read_text())["models"] == models:
        return json.loads(path.read_text())["latency_ms"]
    out = steps.run("retrain", attendnets("bench", *[m for m in models if m not in ("mobilenet_v1", "mobilenet_v2")],
                                          "--img-size", str(IMG_SIZE), "--num-classes", str(NUM_CLASSES),
                                          "--runtimes", "eager,ort-int8", "--batch", "0", "--rounds", str(rounds),
                                          "--threads", "2", "--json"), capture=True)
    latency: dict[str, dict[str, float]] = {}
    for row in json.loads(out)["results"]:
        latency.setdefault(row["model"], {})[row["runtime"]] = row["batch1_median_ms"]
    atomic_write_json(path, {"models": models, "latency_ms": latency})
    return latency


def retrain(steps: Steps, data: Path, runs: Path, trained: Path, budget: dict, workers: int) -> dict[str, Any]:
    """Train, quantize, profile and time every model of the comparison; returns its rows."""
    found = found_designs(runs)
    models: dict[str, tuple[str, tuple[int, ...]]] = {PROTOTYPE: (PROTOTYPE, SEEDS)}
    for label, design in found.items():
        spec = runs / "found" / f"{label}.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec, Path(design["file"]).read_text())
        models[label] = (str(spec), SEEDS)
    models.update({m: (m, (0,)) for m in ONE_SEED})
    rows: dict[str, Any] = {}
    for label, (model, seeds) in models.items():
        seeds_out = []
        for seed in seeds:
            run = train_run(steps, model, seed, data, runs, trained, budget, workers)
            q = quantize(steps, run, f"{label}-s{seed}", data, runs, workers)
            seeds_out.append({"seed": seed, "run": str(run), "top1_int8": q["int8_top1"], "top1_float": q["float_top1"],
                              "weight_kb_int8": q["weight_memory"]["quantized_bytes"] / 1024})
        profile = profile_model(create_model(model, num_classes=NUM_CLASSES), img_size=IMG_SIZE)
        rows[label] = {"model": model, "seeds": seeds_out, "params": profile.params, "macs": profile.macs,
                       "peak_activation_kb_int8": profile.peak_activation_bytes_int8 / 1024,
                       "found": found.get(label)}
    latency = bench(steps, [m for m, _ in models.values()], runs, budget["bench_rounds"])
    for row in rows.values():
        row["latency_ms"] = latency.get(row["model"], {})
    return rows


# -- stage 5: report ------------------------------------------------------------------------------------


def mean_top1(row: dict[str, Any]) -> float:
    return statistics.mean(s["top1_int8"] for s in row["seeds"])


def spread(row: dict[str, Any]) -> float:
    values = [s["top1_int8"] for s in row["seeds"]]
    return max(values) - min(values)


def beats(found: dict[str, Any], proto: dict[str, Any]) -> str:
    """The plain statement: higher top-1 at no more cost by more than the seed spread, or the same top-1
    (within the spread) at clearly lower cost (<= 80% of the MACs), or neither."""
    gain = mean_top1(found) - mean_top1(proto)
    noise = max(spread(found), spread(proto))
    no_costlier = found["macs"] <= proto["macs"] and found["seeds"][0]["weight_kb_int8"] <= proto["seeds"][0]["weight_kb_int8"]
    ratio = found["macs"] / proto["macs"]
    what = (f"{gain:+.2f} points of top-1 at 8 bits (mean of seeds {', '.join(str(s['seed']) for s in found['seeds'])}; "
            f"seed spread {noise:.2f}) at {ratio:.2f}x the prototype's MACs")
    if no_costlier and gain > noise:
        return f"beats the prototype: {what}."
    if abs(gain) <= noise and ratio <= CLEARLY_LOWER:
        return f"beats the prototype on cost: the same top-1 within the seed spread, {what}."
    return f"does NOT beat the prototype: {what}."


def top_rung(study_dir: Path) -> list[dict[str, Any]]:
    """The designs trained at the study's highest rung (from ``trials.csv``), each with its rung-0 top-1
    and the search choices where it differs from the prototype."""
    with (study_dir / "trials.csv").open(newline="") as f:
        trials = list(csv.DictReader(f))
    rung0 = {t["trial"]: t for t in trials if t["rung"] == "0"}
    prototype = json.loads(next(t for t in trials if t["reference"] == PROTOTYPE_TAG)["choices"])
    last = max(int(t["rung"]) for t in trials)
    rows = []
    for t in trials:
        if int(t["rung"]) != last or t["status"] not in SCORED:
            continue
        choices = json.loads(t["choices"])
        rows.append({"trial": int(t["trial"]), "prototype": t["reference"] == "prototype",
                     "top1_rung0": float(rung0[t["parent"] or t["trial"]]["top1_int8"]) if last else None,
                     "top1_int8": float(t["top1_int8"]), "macs": float(t["macs"]), "weight_kb": float(t["weight_kb"]),
                     "params": float(t["params"]),
                     "changes": {k: v for k, v in choices.items() if prototype.get(k) != v}})
    return sorted(rows, key=lambda r: -r["top1_int8"])


def search_section(sampler: str, summary: dict[str, Any], designs: list[dict[str, Any]], cpu_hours: float,
                   plot: str) -> list[str]:
    """The report's lines on one search: what it proposed, and its top rung's designs."""
    rungs = summary["rungs"]
    status = rungs[0]["by_status"]
    proposed = rungs[0]["trials"]
    lines = [f"### {sampler} (sampler seed {SAMPLER_SEEDS[sampler]})", "",
             f"Rung 0: {proposed} proposals: {status.get('trained', 0)} trained besides the prototype, "
             f"{status.get('over_cap', 0)} over a cap (profiled, not trained), {rungs[0]['failed']} failed. "
             f"{cpu_hours:.2f} CPU-hours. Plot: [{plot}]({plot}).", "",
             f"Designs of rung {rungs[-1]['rung']} ({rungs[-1]['epochs']} epochs; hold-out top-1 at 8 bits, "
             f"{summary['fidelity']['holdout_per_class'] * NUM_CLASSES} images):", "",
             "| trial | rung-0 top-1 | top-1 | MACs | 8-bit weight KB | params | choices changed from the prototype |",
             "|---|---|---|---|---|---|---|"]
    for d in designs:
        name = "prototype" if d["prototype"] else str(d["trial"])
        rung0 = "-" if d["top1_rung0"] is None else f"{d['top1_rung0']:.1f}%"
        lines.append(f"| {name} | {rung0} | {d['top1_int8']:.1f}% | {d['macs'] / 1e6:.1f}M | "
                     f"{d['weight_kb']:.0f} | {d['params'] / 1e3:.0f}K | {len(d['changes'])} |")
    return lines + [""]


def pilot_unfinished(folder: Path, budget: dict) -> str:
    """What the report says while the pilot stage has not finished: how far it got, how to continue."""
    done = {e: len(list((folder / "results" / f"e{e}").glob("*.json")))
            for e in (budget["fidelity"]["epochs"], budget["pilot"]["high-epochs"])}
    return (f"**Not finished when this report was written**: of {budget['pilot']['designs']} designs, "
            + ", ".join(f"{n} trained for {e} epochs" for e, n in done.items())
            + ". Continue with `python benchmarks/explore.py --stages pilot,report`.")


def promoted_agreement(designs: dict[str, list[dict[str, Any]]], rungs: list[dict[str, Any]]) -> str:
    """Rank agreement between rung 0 and the top rung over the designs the searches promoted (the prototype
    once): a second, free look at the cheap rung, biased towards designs that already scored well."""
    seen: dict[str, tuple[float, float]] = {}
    for d in (d for ds in designs.values() for d in ds):  # one entry per distinct design
        seen[json.dumps(d["changes"], sort_keys=True)] = (d["top1_rung0"], d["top1_int8"])
    if len(seen) < 3:
        return "Too few promoted designs to rank."
    low, high = zip(*seen.values())
    stats = rank_agreement(list(low), list(high), top_k=1)
    return (f"The designs the two searches promoted (prototype once), rung 0 against rung {rungs[-1]['rung']}: "
            f"{pilot_verdict(stats, rungs[0]['epochs'], rungs[-1]['epochs'])}. Only designs that already ranked "
            "high at rung 0 were promoted, so this sample is narrow.")


def samplers_compared(designs: dict[str, list[dict[str, Any]]], holdout: int) -> str:
    """TPE's best top-rung design against the random control's, with the binomial standard error of one
    hold-out estimate: whether the difference says anything."""
    best = {s: max((d["top1_int8"] for d in ds if not d["prototype"]), default=None) for s, ds in designs.items()}
    if best["tpe"] is None or best["random"] is None:
        return "One of the searches has no design besides the prototype at its top rung: no sampler comparison."
    gap = best["tpe"] - best["random"]
    p = (best["tpe"] + best["random"]) / 200
    se = 100 * math.sqrt(p * (1 - p) / holdout)
    judged = ("more than twice the standard error of the difference" if abs(gap) > 2 * math.sqrt(2) * se
              else "within twice the standard error of the difference: no demonstrated difference between the samplers")
    return (f"Best design of the top rung: TPE {best['tpe']:.1f}%, random {best['random']:.1f}% ({gap:+.1f} points; "
            f"one estimate on {holdout} hold-out images has a binomial standard error of {se:.1f} points, so this is "
            f"{judged}).")


def pilot_section(summary: dict[str, Any]) -> list[str]:
    """The pilot's verdict, its designs' hold-out top-1 at both rungs, and a link to its plot."""
    low, high = summary["low_epochs"], summary["high_epochs"]
    fid = summary["fidelity"]
    rows = sorted(summary["designs"], key=lambda d: -d["high"]["top1"])
    return [
        f"`attendnets explore pilot`: {len(rows)} designs of the space (the prototype and designs sampled at random "
        f"under the caps), each trained at the search's fidelity ({fid['holdout_images']} hold-out images) for "
        f"{low} and for {high} epochs. {summary['verdict']}. Plot: [explore_pilot.png](explore_pilot.png).",
        "",
        f"| design | top-1 at {low} epochs | top-1 at {high} epochs | MACs | 8-bit weight KB |",
        "|---|---|---|---|---|",
        *(f"| {d['name']}{' (prototype)' if d['reference'] else ''} | {d['low']['top1']:.1f}% | {d['high']['top1']:.1f}% "
          f"| {d['costs']['macs'] / 1e6:.1f}M | {d['costs']['weight_kb']:.0f} |" for d in rows),
        "",
    ]


def write_report(runs: Path, out_dir: Path, budget: dict, caps: dict, rows: dict[str, Any], steps: Steps,
                 context: dict[str, Any], smoke: bool) -> None:
    pilot_path = runs / "pilot" / "pilot.json"
    pilot_summary = json.loads(pilot_path.read_text()) if pilot_path.is_file() else None
    searches = {s: json.loads((runs / "search" / s / "summary.json").read_text()) for s in ("tpe", "random")}
    designs = {s: top_rung(runs / "search" / s) for s in searches}
    proto = rows[PROTOTYPE]
    found = {label: row for label, row in rows.items() if label.startswith("found_")}
    verdicts = {label: beats(row, proto) for label, row in found.items()}
    report = {**context, "smoke_run": smoke, "budget": budget, "caps": caps, "cpu_seconds": steps.cpu,
              "pilot": pilot_summary and {k: pilot_summary[k] for k in ("agreement", "verdict", "low_epochs", "high_epochs",
                                                                        "fidelity", "train_seconds")},
              "searches": {s: {**{k: v[k] for k in ("rungs", "pareto", "fidelity", "requirements")},
                               "top_rung": designs[s]} for s, v in searches.items()},
              "models": rows, "verdicts": verdicts}
    out_dir.mkdir(parents=True, exist_ok=True)
    # the plots and the retrained found designs' specs go next to the report
    plots = {s: f"explore_{s}_pareto.png" for s in searches}
    copies = {name: runs / "search" / s / "pareto.png" for s, name in plots.items()}
    copies |= {f"explore_{label}.json": Path(row["model"]) for label, row in found.items()}
    if pilot_summary:
        copies["explore_pilot.png"] = Path(pilot_summary["files"]["plot"])
    for name, source in copies.items():
        atomic_write(out_dir / name, lambda tmp, source=source: shutil.copyfile(source, tmp))
    atomic_write_json(out_dir / "explore.json", report)
    hours = {k: v / 3600 for k, v in steps.cpu.items()}
    search_hours = {s: hours.get(SEARCH_STAGES[s], 0.0) for s in searches}
    lines = [*_intro_lines(runs, budget, caps, smoke, pilot_summary),
             *_search_lines(searches, designs, rows, search_hours, plots),
             *_retrained_lines(budget, rows, verdicts), *_cost_lines(hours, pilot_summary, context)]
    atomic_write_text(out_dir / "explore.md", "\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'explore.md'} and {out_dir / 'explore.json'}")
    for label, v in verdicts.items():
        print(f"{label} {v}")


def _intro_lines(runs: Path, budget: dict, caps: dict, smoke: bool, pilot_summary: dict | None) -> list[str]:
    """The report's head: what was searched, at which fidelity and why, and the pilot's verdict."""
    fid = budget["fidelity"]
    return [
        "# Design search on Imagenette: found designs against their prototype (attendnet_b)",
        "",
        *(["**SMOKE RUN: a tiny budget on a tiny subset; not the comparison.**", ""] if smoke else []),
        f"`attendnets explore run` on the attendnet_b space, cost = MACs, capped at attendnet_b's own cost at "
        f"{IMG_SIZE} px and {NUM_CLASSES} classes ({caps['max-macs'] / 1e6:.1f}M MACs, {caps['max-weight-kb']:.1f} KB "
        f"of 8-bit weights), so any found design is no costlier than the prototype. Search fidelity: "
        f"{fid['images-per-class']} training and {fid['holdout-per-class']} hold-out images per class of train/ at "
        f"{fid['img-size-search']} px, {fid['epochs']} epochs at rung 0 x{budget['search']['eta']} per rung, "
        f"{budget['search']['trials']} designs trained at rung 0, {budget['search']['rungs']} rungs; val/ never seen.",
        "",
        "Why this fidelity: attendnet_b at rung 0 (hold-out top-1 at 8 bits; chance is 10%), measured before "
        "the run, 1 thread on a shared machine:",
        "",
        "| px | train img/class | hold-out/class | epochs | lr | top-1 | seconds |",
        "|---|---|---|---|---|---|---|",
        *(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {k[4]:g} | {v[0]:.1f}% | {v[1]} |" for k, v in FIDELITY_PROBE.items()),
        "",
        "## Does the cheap rung rank designs? (pilot)",
        "",
        *(pilot_section(pilot_summary) if pilot_summary else [pilot_unfinished(runs / "pilot", budget), ""]),
    ]


def _search_lines(searches: dict[str, dict], designs: dict[str, list], rows: dict[str, Any],
                  search_hours: dict[str, float], plots: dict[str, str]) -> list[str]:
    """Both searches side by side, then each in detail, then what the found designs change."""
    lines = [
        "## The searches",
        "",
        "| sampler | designs trained at rung 0 | prototype hold-out top-1 per rung | picked design: rung top-1, MACs | CPU |",
        "|---|---|---|---|---|",
    ]
    for s, summary in searches.items():
        picked = rows.get(f"found_{s}", {}).get("found") or pick_found(summary)
        protos = ", ".join(f"{r['prototype_top1']:.1f}%" for r in summary["rungs"] if r["prototype_top1"] is not None)
        lines.append(f"| {s} | {summary['rungs'][0]['by_status'].get('trained', 0)} + prototype | {protos} | "
                     + (f"{picked['top1_int8']:.1f}%, {picked['costs']['macs'] / 1e6:.1f}M" if picked else "none (prototype alone on the front)")
                     + f" | {search_hours[s]:.2f} h |")
    lines += ["", samplers_compared(designs, searches["tpe"]["fidelity"]["holdout_per_class"] * NUM_CLASSES), "",
              promoted_agreement(designs, searches["tpe"]["rungs"]), ""]
    for s, summary in searches.items():
        lines += search_section(s, summary, designs[s], search_hours[s], plots[s])
    for label, row in rows.items():
        if not label.startswith("found_"):
            continue
        changed = next(d["changes"] for d in designs[label.removeprefix("found_")] if d["trial"] == row["found"]["trial"])
        lines += [f"{label} ([explore_{label}.json](explore_{label}.json), a spec for `attendnets train --spec`) "
                  f"changes {len(changed)} choices of the prototype: "
                  + ", ".join(f"`{k}`={v}" for k, v in sorted(changed.items())) + ".", ""]
    return lines


def _retrained_lines(budget: dict, rows: dict[str, Any], verdicts: dict[str, str]) -> list[str]:
    """The retrained models' table and the verdicts with their rule."""
    lines = ["", f"## Retrained with the comparison recipe ({budget['epochs']} epochs, {IMG_SIZE} px), 8-bit weights, val/", "",
              "| model | top-1 8-bit (per seed) | mean | float top-1 mean | params | MACs | 8-bit weight KB | peak act. KB | eager ms | ORT int8 ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        per_seed = ", ".join(f"s{s['seed']} {s['top1_int8']:.2f}%" for s in r["seeds"])
        lat = r["latency_ms"]
        lines.append(f"| {label} | {per_seed} | {mean_top1(r):.2f}% | {statistics.mean(s['top1_float'] for s in r['seeds']):.2f}% | "
                     f"{r['params'] / 1e3:,.0f}K | {r['macs'] / 1e6:,.1f}M | {r['seeds'][0]['weight_kb_int8']:.1f} | "
                     f"{r['peak_activation_kb_int8']:.1f} | {lat.get('eager', float('nan')):.2f} | {lat.get('ort-int8', float('nan')):.2f} |")
    lines += ["", "## Does a found design beat the prototype?", ""]
    lines += [f"- {label} {v}" for label, v in verdicts.items()] or ["- No design was found besides the prototype."]
    lines += ["", "Rule: a found design beats the prototype when its mean top-1 at 8 bits is higher by more than the "
              "larger seed spread of the two at no more MACs or 8-bit weight memory, or the same within that spread at "
              f"<= {CLEARLY_LOWER:.0%} of the prototype's MACs. The picked design of each search: the highest hold-out "
              "top-1 among the non-prototype Pareto designs of its top rung."]
    return lines


def _cost_lines(hours: dict[str, float], pilot_summary: dict | None, context: dict[str, Any]) -> list[str]:
    """CPU time per stage, and how the report was made."""
    lines = ["", "## Cost", "",
              "Process CPU time of each stage's invocations that ran to their end (cpu_seconds.json, summed over "
              "invocations); an invocation stopped part-way (a session ending) is not counted, although the "
              "trainings it finished are kept and reused.", ""]
    lines += [f"- {stage}: {h:.2f} CPU-hours" for stage, h in hours.items()]
    if pilot_summary:
        seconds = pilot_summary["train_seconds"]
        lines.append(f"- the pilot's own record of its trainings, wall-clock: {seconds['low'] / 3600:.2f} h at "
                     f"{pilot_summary['low_epochs']} epochs, {seconds['high'] / 3600:.2f} h at {pilot_summary['high_epochs']} "
                     "epochs, across all its invocations (slowed wherever it shared the cores with another stage)")
    lines += ["", "## How it was run", "", f"- driver: `{context['command']}`",
              f"- commit: `{context['commit']}`" + (" (with uncommitted changes)" if context["dirty"] else ""),
              f"- machine: {context['machine']['cpu']} ({', '.join(context['machine']['cpu_flags'])}), {context['machine']['cores']} cores, torch {context['machine']['torch']}",
              f"- date: {context['date']}",
              "- latency: `attendnets bench`, batch 1, 2 threads, random weights, interleaved with the MobileNets; "
              "the machine may have been shared, so compare within this table only."]
    return lines


def prepare(args: argparse.Namespace, name: str) -> tuple[dict, Path, Path, list[str], Steps]:
    """A driver run's budget, runs folder (``runs/NAME``, ``runs/NAME-smoke``), data (a small copy for
    ``--smoke``), stages and step recorder."""
    budget = SMOKE if args.smoke else FULL
    runs = args.runs or ROOT / "runs" / (f"{name}-smoke" if args.smoke else name)
    runs.mkdir(parents=True, exist_ok=True)
    data = resolve_data_dir(args.data).resolve()
    if args.smoke:
        data = smoke_dataset(data, runs / "data", budget["smoke_data"])
    return budget, runs, data, args.stages.split(","), Steps(runs)


def main() -> int:
    tune_malloc()
    args = parse_args()
    budget, runs, data, stages, steps = prepare(args, "explore")
    caps = prototype_caps()
    context = run_context()
    if "pilot" in stages:
        pilot(steps, data, runs, budget, caps)
    for sampler, stage in SEARCH_STAGES.items():
        if stage in stages:
            search(steps, sampler, data, runs, budget, ["--space", SPACE, "--cost", "macs", *flags(caps)])
    rows = retrain(steps, data, runs, args.trained, budget, args.workers) if {"retrain", "report"} & set(stages) else {}
    if "report" in stages:
        write_report(runs, runs if args.smoke else RESULTS, budget, caps, rows, steps, context, args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
