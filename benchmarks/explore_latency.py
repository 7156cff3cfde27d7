"""Accuracy per millisecond: search AttendNets on measured int8 latency, against MobileNet-V1 on Imagenette.

The target (issue 13): a design whose Imagenette top-1 at 8 bits (comparison recipe, 2 seeds, the lower
counts) is at least MobileNet-V1's + 7 points, at no more than 0.5x MobileNet-V1's int8 batch-1 latency in
ONNX Runtime (1 and 2 threads) and in LiteRT + XNNPACK, measured interleaved on this machine.

Stages, each resumable (``--stages``; a killed stage continues where it stopped when started again):

1. ``search``: ``attendnets explore run`` with TPE on the ``attendnet_b_fast`` space. Objectives: hold-out
   top-1 at 8 bits and the ORT int8 latency ratio to MobileNet-V1 (1 thread, 128 px, 10 classes, each
   design exported and timed interleaved with MobileNet-V1), capped at 0.5; a per-layer latency table
   rejects designs predicted over the cap x1.2 before they are exported. Same fidelity as
   ``benchmarks/explore.py`` (64 px, 800 + 50 images per class of train/, 3 epochs at rung 0, x3 per rung).
2. ``random``: the same search with ``--sampler random``: the control, with the same trained budget.
3. ``retrain``: each search's pick (the highest hold-out top-1 among the non-prototype designs of its top
   rung's Pareto front) trained with the comparison recipe of ``benchmarks/imagenette.py`` as this study
   ran it (:data:`ZERO_INIT_LAST`) at seeds 0 and 1, quantized to 8-bit weights and evaluated on val/;
   MobileNet-V1 at both seeds (the target is checked against its better one), attendnet_b, attendnet_a and
   MobileNet-V2 at seed 0; seed-0 runs are taken from ``runs/imagenette`` when finished there with the same
   recipe, the others trained here.
4. ``latency``: every retrained model and the MobileNets, int8, in ORT, LiteRT and ExecuTorch at 1 and 2
   threads and in TFLite Micro (1 thread), interleaved per thread count (``attendnets bench``, random
   weights: latency does not depend on the weights' values); and each model's TFLite Micro arena at
   128 px (the profiler's estimate). The target is checked in ORT and LiteRT, the runtimes it names. Needs no
   trained model, so it can run first, on an idle machine, while the retraining waits.
5. ``report``: docs/results/explore_latency.{md,json}, explore_latency.png (val top-1 against measured
   latency, the MobileNets and the presets on the same plot) and each search's Pareto plot at its
   fidelity (explore_latency_<sampler>_pareto.png).

    python benchmarks/explore_latency.py --data ../shared/datasets/imagenette2-224
    python benchmarks/explore_latency.py --stages search        # another terminal: --stages random
    python benchmarks/explore_latency.py --smoke                # every stage on a tiny subset
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, provenance, run_context, run_main  # noqa: E402
from explore import (  # noqa: E402
    SEARCH_STAGES,
    Steps,
    attendnets,
    flags,
    parse_args,
    prepare,
    quantize,
    search,
    train_run,
)
from imagenette import IMG_SIZE, NUM_CLASSES  # noqa: E402

from attendnets.files import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.export import profile_for_micro  # noqa: E402
from attendnets.registry import BASELINES, create_model  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402

STAGES = ("search", "random", "retrain", "latency", "report")
SPACE = "attendnet_b_fast"
MAX_RATIO = 0.5
TARGET_POINTS = 7.0
SEARCH_LATENCY = {"runtime": "ort-int8", "threads": 1}
PRESETS = ("attendnet_b", "attendnet_a")
OBJECTIVE = ["--space", SPACE, "--cost", "latency_ratio", "--max-latency-ratio", str(MAX_RATIO),
             *flags(SEARCH_LATENCY)]
SEEDS = (0, 1)
RUNTIMES = ("ort-int8", "litert-int8")  # the target's
OTHER_RUNTIMES = ("executorch-int8",)  # reported beside them
THREADS = (1, 2)
MICRO = "tflm"  # TFLite Micro: one thread, timed once
# The comparison recipe as this study ran, before the zero-initialised last BN won (docs/results/zero_init.md):
# the references' condensers start with their up-mixing BN at 1 (the picks have no condensers).
ZERO_INIT_LAST = False


def picks(runs: Path) -> dict[str, Path]:
    """``{label: spec file}``: each search's non-prototype Pareto design with the highest hold-out top-1."""
    out = {}
    for sampler in SEARCH_STAGES:
        path = runs / "search" / sampler / "summary.json"
        found = [d for d in json.loads(path.read_text())["pareto"] if not d["reference"]] if path.is_file() else []
        if found:
            best = max(found, key=lambda d: (d["top1_int8"], -d["costs"]["latency_ratio"]))
            spec = runs / "found" / f"fast_{sampler}.json"
            spec.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(spec, Path(best["file"]).read_text())
            out[f"fast_{sampler}"] = spec
    return out


def lineup(runs: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{label: (model name or spec file, seeds)}``: the picks and MobileNet-V1 (the target's reference) at
    every seed, the other references at seed 0. Spec files by absolute path: they key the latency cache."""
    models = {label: (str(spec.resolve()), SEEDS) for label, spec in picks(runs).items()}
    return models | {m: (m, SEEDS if m == "mobilenet_v1" else (0,)) for m in (*PRESETS, *BASELINES)}


def retrain(steps: Steps, models: dict[str, tuple[str, tuple[int, ...]]], data: Path, runs: Path, trained: Path,
            budget: dict, workers: int) -> dict[str, Any]:
    """``{label: {model, seeds: [{seed, top1_int8, top1_float}]}}`` for the picks and the references."""
    rows = {}
    for label, (model, seeds) in models.items():
        out = []
        for seed in seeds:
            run = train_run(steps, model, seed, data, runs, trained, budget, workers, ZERO_INIT_LAST)
            q = quantize(steps, run, f"{label}-s{seed}", data, runs, workers)
            out.append({"seed": seed, "run": str(run), "top1_int8": q["int8_top1"], "top1_float": q["float_top1"]})
        rows[label] = {"model": model, "seeds": out}
    return rows


def latency(steps: Steps, names: dict[str, str], runs: Path, budget: dict) -> tuple[dict[str, dict[str, float]],
                                                                                   dict[str, dict[str, Any]]]:
    """``{label: {"<runtime>/<threads>t" or "tflm": batch-1 median ms}}`` of each ``{label: model}`` from
    ``attendnets bench``, and ``{thread count: when, at which commit and under which load it was measured}``
    (both cached in ``latency.json``; random weights, so no model need be trained first)."""
    path = runs / "latency.json"
    models = [model for label, model in names.items() if label not in BASELINES]
    runs_of = {f"{t}t": (",".join((*RUNTIMES, *OTHER_RUNTIMES)), t) for t in THREADS} | {"micro": (MICRO, 1)}
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if (cached.get("models"), cached.get("runs")) != (models, {k: list(v) for k, v in runs_of.items()}):
        cached = {"models": models, "runs": runs_of, "ms": {}}
    for key, (runtimes, threads) in runs_of.items():
        if key in cached["ms"] and key in cached.get("measured", {}):
            continue
        context = run_context()
        out = steps.run("latency", attendnets(
            "bench", *models, "--img-size", str(IMG_SIZE), "--num-classes", str(NUM_CLASSES), "--runtimes", runtimes,
            "--batch", "0", "--rounds", str(budget["bench_rounds"] if key != "micro" else 1), "--threads", str(threads),
            "--json"), capture=True)
        cached["ms"][key] = {f"{r['model']}|{r['runtime']}": r["batch1_median_ms"] for r in json.loads(out)["results"]}
        cached.setdefault("measured", {})[key] = {"date": context["date"], "commit": context["commit"],
                                                  "load_average_at_start": context["machine"]["load_average_at_start"]}
        atomic_write_json(path, cached)
    out: dict[str, dict[str, float]] = {}
    for label, model in names.items():
        for key, ms in cached["ms"].items():
            for runtime in (*RUNTIMES, *OTHER_RUNTIMES, MICRO):
                column = f"{runtime}/{key}" if key != "micro" else runtime
                if f"{model}|{runtime}" in ms:
                    out.setdefault(label, {})[column] = ms[f"{model}|{runtime}"]
    return out, cached["measured"]


def as_ratios(ms: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each model's latencies as multiples of MobileNet-V1's in the same runtime, thread count and run."""
    return {label: {c: v / ms["mobilenet_v1"][c] for c, v in row.items()} for label, row in ms.items()}


def arenas(rows: dict[str, Any]) -> dict[str, float]:
    """``{label: TFLite Micro arena KB}`` of each model at 128 px, 10 classes (the profiler's estimate)."""
    out = {}
    for label, row in rows.items():
        model = create_model(row["model"], num_classes=NUM_CLASSES).eval()
        out[label] = profile_for_micro(model, IMG_SIZE).micro_arena_bytes / 1024
    return out


def verdict(label: str, row: dict[str, Any], ratios: dict[str, float], reference: float) -> str:
    low = min(s["top1_int8"] for s in row["seeds"])
    worst = max(ratios[f"{r}/{t}t"] for r in RUNTIMES for t in THREADS)
    met = low >= reference + TARGET_POINTS and worst <= MAX_RATIO
    return (f"{label}: {'MEETS' if met else 'does NOT meet'} the target: lower-seed top-1 {low:.2f}% "
            f"({low - reference:+.2f} points over MobileNet-V1's better seed, {reference:.2f}%, "
            f"needed +{TARGET_POINTS:g}); "
            f"slowest int8 ratio to MobileNet-V1 {worst:.2f}x (needed <= {MAX_RATIO}x)")


def plot(rows: dict[str, Any], ratios: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, row in rows.items():
        x = ratios[label]["ort-int8/1t"]
        y = min(s["top1_int8"] for s in row["seeds"])
        marker = "s" if label in BASELINES else "^" if label in PRESETS else "o"
        ax.scatter([x], [y], marker=marker, s=50)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(MAX_RATIO, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("ONNX Runtime int8 latency / MobileNet-V1's (1 thread, 128 px, batch 1)")
    ax.set_ylabel("Imagenette val top-1 at 8 bits (lower seed), %")
    ax.set_title("Accuracy against measured int8 latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_report(runs: Path, out_dir: Path, rows: dict[str, Any], ms: dict[str, dict[str, float]],
                 measured: dict[str, dict[str, Any]], steps: Steps, context: dict[str, Any], smoke: bool) -> None:
    ratios = as_ratios(ms)
    reference = max(s["top1_int8"] for s in rows["mobilenet_v1"]["seeds"])  # its better seed: the stricter test
    verdicts = [verdict(label, row, ratios[label], reference) for label, row in rows.items()
                if label.startswith("fast_")]
    searches = {s: json.loads((runs / "search" / s / "summary.json").read_text())
                for s in SEARCH_STAGES if (runs / "search" / s / "summary.json").is_file()}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "explore_latency.png", lambda tmp: plot(rows, ratios, Path(tmp)))
    for s in searches:
        atomic_write(out_dir / f"explore_latency_{s}_pareto.png",
                     lambda tmp, s=s: shutil.copyfile(runs / "search" / s / "pareto.png", tmp))
    for label in rows:
        if label.startswith("fast_"):
            atomic_write(out_dir / f"explore_latency_{label}.json",
                         lambda tmp, label=label: shutil.copyfile(rows[label]["model"], tmp))
    columns = [f"{r}/{t}t" for r in (*RUNTIMES, *OTHER_RUNTIMES) for t in THREADS] + [MICRO]
    arena = arenas(rows)
    lines = ["# Accuracy per millisecond: designs searched on measured int8 latency", "",
             *(["**SMOKE RUN: a tiny budget on a tiny subset; not the comparison.**", ""] if smoke else []),
             f"`attendnets explore run --space {SPACE} --cost latency_ratio --runtime {SEARCH_LATENCY['runtime']} "
             f"--threads {SEARCH_LATENCY['threads']} --max-latency-ratio {MAX_RATIO} --latency-table ...` (TPE, and "
             "random sampling as the control), each pick retrained with the comparison recipe at seeds "
             f"{', '.join(map(str, SEEDS))} and scored on val/ at 8-bit weights"
             f"{'' if ZERO_INIT_LAST else ' (the recipe before zero-init won: condensers start with their BN at 1)'}"
             ". Plot: [explore_latency.png](explore_latency.png); each search's designs at its own fidelity "
             "(hold-out top-1 after 3 and 9 epochs at 64 px): "
             + ", ".join(f"[{s}](explore_latency_{s}_pareto.png)" for s in searches) + ".", "",
             "| search | rung-0 proposals | trained | over a cap | CPU-hours |", "|---|---|---|---|---|"]
    hours = {k: v / 3600 for k, v in steps.cpu.items()}
    for s, summary in searches.items():
        rung = summary["rungs"][0]
        lines.append(f"| {s} | {rung['trials']} | {rung['by_status'].get('trained', 0)} | "
                     f"{rung['by_status'].get('over_cap', 0)} | {hours.get(SEARCH_STAGES[s], 0.0):.2f} |")
    lines += ["", "Latency as a multiple of MobileNet-V1's in the same runtime, thread count and run (batch 1, int8; "
              "below 1 is faster); TFLite Micro: its reference kernels, 1 thread, as on a microcontroller.", "",
              "| model | top-1 8-bit (per seed) | " + " | ".join(columns) + " | TFLite Micro arena KB |",
              "|---|---|" + "---|" * (len(columns) + 1)]
    for label, row in rows.items():
        per_seed = ", ".join(f"s{s['seed']} {s['top1_int8']:.2f}%" for s in row["seeds"])
        cells = " | ".join(f"{ratios[label][c]:.2f}x" for c in columns)
        lines.append(f"| {label} | {per_seed} | {cells} | {arena[label]:,.0f} |")
    own = ", ".join(f"{c} {ms['mobilenet_v1'][c]:.2f} ms" for c in columns)
    when = "; ".join(f"{key}: {m['date']}, commit {m['commit'][:7]}, load average at start "
                     f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}" for key, m in measured.items())
    lines += ["", f"MobileNet-V1's own batch-1 median: {own} (128 px, 10 classes, on the machine below).",
              f"Latency measured by `python benchmarks/explore_latency.py --stages latency` ({when})."]
    lines += ["", "## Verdict", "", *(f"- {v}" for v in verdicts or ["no design besides the prototype was found"]),
              "", "## How it was run", "", *provenance(context), ""]
    atomic_write_text(out_dir / "explore_latency.md", "\n".join(lines))
    atomic_write_json(out_dir / "explore_latency.json",
                      {**context, "smoke_run": smoke, "models": rows, "latency_ms": ms, "latency_measured": measured,
                       "ratios": ratios, "arena_kb": arena, "verdicts": verdicts, "searches": searches,
                       "cpu_seconds": steps.cpu})
    print("\n".join(verdicts))


def main() -> int:
    tune_malloc()
    args = parse_args(__doc__, STAGES, "explore-latency")
    budget, runs, data, stages, steps = prepare(args, "explore-latency")
    context = run_context()
    for sampler, stage in SEARCH_STAGES.items():
        if stage in stages:
            table = ["--latency-table", str(runs / "latency-table.json")]
            search(steps, sampler, data, runs, budget, OBJECTIVE + table)
    models = lineup(runs)
    rows = {}
    if {"retrain", "report"} & set(stages):
        rows = retrain(steps, models, data, runs, args.trained, budget, args.workers)
    if {"latency", "report"} & set(stages):
        ms, measured = latency(steps, {label: model for label, (model, _) in models.items()}, runs, budget)
    if "report" in stages:
        write_report(runs, runs if args.smoke else RESULTS, rows, ms, measured, steps, context, args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
