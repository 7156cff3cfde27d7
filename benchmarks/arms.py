"""Arms of a controlled comparison on Imagenette: the comparison recipe changed in one respect, 2 seeds each.

An arm is a change to benchmarks/imagenette.py's recipe (train options) and/or to attendnet_b's spec (a
function of the preset, written as a spec file beside the arm's runs). Each run is ``attendnets train`` in its
own process, one after another, in ``<runs>/<arm>/<model>-s<seed>`` (resumable: a finished run is skipped, a
killed one continues with ``--resume``); its best checkpoint is then re-evaluated (``attendnets eval``) and
quantized to 8-bit weights (``attendnets quantize``, post-training), and the run is recorded in the ledger
(benchmarks/ledger.py, committed): the reports are built from the records, so a study's runs may be trained on
several machines, and a recorded run is not trained again. An arm may reuse another arm's runs (a shared
baseline) instead of training its own.

benchmarks/presets.py (recipe and preset arms) and benchmarks/ablation.py (the attention ablation) are the
drivers; this module is what they share.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import shlex
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, provenance, run_context
from imagenette import EPOCHS, IMG_SIZE, NUM_CLASSES, completed_epochs, recipe, resumed, train_command
from ledger import load, record

from attendnets.bench import REFERENCE, run_bench
from attendnets.complexity import Complexity, profile_model
from attendnets.data import resolve_data_dir
from attendnets.files import atomic_write_json, atomic_write_text
from attendnets.registry import PRESETS, create_model, is_attendnet, load_preset
from attendnets.runtime import tune_malloc
from attendnets.spec import ArchSpec, PEPESpec, VACSpec

SEEDS = (0, 1)
# timm's crop range, 8-100% of the image area: the comparison recipe's before benchmarks/presets.py's recipe
# arms chose 35-100% (docs/results/presets.md). An arm's --crop-scale replaces the recipe's.
TIMM_CROP = ("--crop-scale", "0.08", "1")
# Each arm's architecture is also timed (``--latency``): batch 1 at the paper's setting (224 px, 50 classes,
# random weights) in the int8 runtimes edge users deploy to, at 1 and 2 threads, against MobileNet-V1.
LATENCY_RUNTIMES = ("ort-int8", "litert-int8", "executorch-int8")
LATENCY_THREADS = (1, 2)


@dataclass(frozen=True)
class Arm:
    """One arm: ``options`` added to the comparison recipe, for ``models``; ``spec`` turns the model's preset
    into the arm's architecture (``None``: the preset); ``reuse``: the runs are another study's, in this folder
    under ``runs/`` (``presets/crop035``), trained by that study's driver; ``zero_init_last=False``: AttendNets
    start with the residual condensers' last BN at 1, as the comparison recipe did before zero-init-last won;
    ``weight_init``: AttendNets' initialisation (``--weight-init``), named in every AttendNet's command so that
    the command stays the one the run trained with when the default changes (Kaiming's: the arms' baseline,
    trained before PyTorch's default became the comparison recipe's); ``seed0_run``: the folder under
    ``runs/`` of the first model's seed-0 run when it is another driver's run of the same command
    (``imagenette-kaiming/attendnet_b``: benchmarks/imagenette.py's comparison run, Kaiming-initialised)."""

    description: str
    options: tuple[str, ...] = ()
    models: tuple[str, ...] = ("attendnet_b",)
    spec: Callable[[ArchSpec], ArchSpec] | None = None
    reuse: str | None = None
    zero_init_last: bool = True
    weight_init: str = "kaiming"
    seed0_run: str | None = None


def without_option(options: list[str], flag: str, nargs: int) -> list[str]:
    """``options`` without ``flag`` and its ``nargs`` values."""
    if flag not in options:
        return options
    at = options.index(flag)
    return options[:at] + options[at + 1 + nargs :]


def with_option(options: list[str], flag: str, *values: str) -> list[str]:
    """``options`` with ``flag`` given ``values``: in its place if it is there, else at the end."""
    if flag not in options:
        return [*options, flag, *values]
    at = options.index(flag)
    return [*options[: at + 1], *values, *options[at + 1 + len(values) :]]


def with_blocks(spec: ArchSpec, change: Callable[[int, Any], Any]) -> ArchSpec:
    """``spec`` with each block ``b`` at index ``i`` replaced by ``change(i, b)``."""
    return dataclasses.replace(spec, blocks=[change(i, b) for i, b in enumerate(spec.blocks)])


def vacs(spec: ArchSpec, **fields: Any) -> list[int]:
    """Indices of the condensers (whose fields equal ``fields``)."""
    return [i for i, b in enumerate(spec.blocks)
            if isinstance(b, VACSpec) and all(getattr(b, k) == v for k, v in fields.items())]


def pepes(spec: ArchSpec) -> list[int]:
    return [i for i, b in enumerate(spec.blocks) if isinstance(b, PEPESpec)]


def profile_of(name: str, img_size: int = 224, num_classes: int = 50) -> Complexity:
    """Parameters and multiply-adds of ``name`` (a model or a spec file), by default at the paper's setting."""
    return profile_model(create_model(name, num_classes=num_classes), img_size=img_size)


class Study:
    """Runs, results and report rows of a set of arms (``arms``: name -> :class:`Arm`)."""

    def __init__(self, arms: dict[str, Arm], runs: Path, data: Path, workers: int) -> None:
        self.arms, self.runs, self.data, self.workers = arms, runs, data, workers

    def folder(self, arm: str, model: str, seed: int) -> Path:
        chosen = self.arms[arm]
        if chosen.seed0_run and seed == 0 and model == chosen.models[0]:
            return ROOT / "runs" / chosen.seed0_run
        return (ROOT / "runs" / chosen.reuse if chosen.reuse else self.runs / arm) / f"{model}-s{seed}"

    def model_argument(self, arm: str, model: str) -> str:
        """``--model``'s value: the model's name, or the arm's spec file (written when it is not there yet)."""
        spec = self.arms[arm].spec
        if spec is None or model not in PRESETS:
            return model
        path = self.runs / arm / f"{model}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            changed = spec(load_preset(model))
            description = f"{model} changed as the arm {arm} says: {self.arms[arm].description}"
            dataclasses.replace(changed, name=f"{model}-{arm}", description=description).save(path)
        return str(path)

    def train_command(self, arm: str, model: str, seed: int) -> list[str]:
        options, base = self.arms[arm].options, recipe(seed, self.arms[arm].zero_init_last)
        if "--crop-scale" in options:
            base = without_option(base, "--crop-scale", 2)
        if is_attendnet(model):
            base = with_option(base, "--weight-init", self.arms[arm].weight_init)
        return train_command(self.model_argument(arm, model), self.folder(arm, model, seed), self.data,
                             [*base, *options], self.workers)

    def train(self, arm: str, model: str, seed: int) -> None:
        run, command = self.folder(arm, model, seed), self.train_command(arm, model, seed)
        if self.finished(run):
            return
        resume = resumed(run)
        print(f"{'resuming' if resume else 'training'}: {shlex.join(command + resume)}", flush=True)
        subprocess.run(command + resume, check=True, cwd=ROOT)

    @staticmethod
    def finished(run: Path) -> bool:
        """Whether ``run`` is recorded in the ledger or has trained every epoch here."""
        return load(run) is not None or completed_epochs(run) >= EPOCHS

    def result(self, arm: str, model: str, seed: int) -> dict[str, Any]:
        """The run's best checkpoint re-evaluated in float and at 8-bit weights, its last epoch's top-1, its
        commands and where it was recorded (commit, machine, date): from its record (made now if it has none)."""
        recorded = record(self.folder(arm, model, seed), self.train_command(arm, model, seed), self.data, self.workers)
        return {key: recorded[key] for key in ("top1", "int8_top1", "best_epoch", "weights", "last_raw_top1",
                                               "last_ema_top1", "run", "train_command", "eval_command",
                                               "quantize_command", "recorded")}

    def complexity(self, arm: str, model: str) -> dict[str, int]:
        """Parameters and multiply-adds at the paper's setting (224 px, 50 classes) and at the recipe's."""
        name = self.model_argument(arm, model)
        paper, ours = profile_of(name), profile_of(name, IMG_SIZE, NUM_CLASSES)
        return {"params_224_50": paper.params, "macs_224_50": paper.macs, "params": ours.params, "macs": ours.macs}

    def collect(self, names: Sequence[str], seeds: Sequence[int], train: bool) -> dict[str, dict[str, Any]]:
        """Train (when ``train``) and gather every finished run: ``{arm: {model: {seeds, complexity}}}``."""
        rows: dict[str, dict[str, Any]] = {}
        for arm in names:
            for model in self.arms[arm].models:
                for seed in seeds:
                    if train and not self.arms[arm].reuse:
                        self.train(arm, model, seed)
                    if self.finished(self.folder(arm, model, seed)):
                        row = rows.setdefault(arm, {}).setdefault(model, {"seeds": {}})
                        row["seeds"][seed] = self.result(arm, model, seed)
                if model in rows.get(arm, {}):
                    rows[arm][model]["complexity"] = self.complexity(arm, model)
        return rows


def mean_spread(values: list[float]) -> str:
    """``mean% (max - min)`` of per-seed values; one value as it is; ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}%"
    return f"{statistics.mean(values):.2f}% ({max(values) - min(values):.2f})"


@dataclass(frozen=True)
class Gap:
    """``arm`` minus ``base`` in top-1 points, seed by seed (``per_seed``), their mean, and the larger of the
    two arms' seed spreads (max - min over seeds): a gap within it is not told apart from noise, nor is one
    measured at a single seed in common (there is no spread to judge it by)."""

    mean: float
    per_seed: list[float]
    spread: float

    @property
    def clear(self) -> bool:
        return len(self.per_seed) > 1 and abs(self.mean) > self.spread

    def details(self) -> str:
        """``per seed +2.00, +1.80; beyond the larger seed spread, 0.60``."""
        per_seed = f"per seed {', '.join(f'{g:+.2f}' for g in self.per_seed)}"
        if len(self.per_seed) == 1:
            return f"{per_seed}; one seed in common, too few to judge"
        return f"{per_seed}; {'beyond' if self.clear else 'within'} the larger seed spread, {self.spread:.2f}"


def gap(rows: dict[str, dict[str, Any]], arm: str, base: str, key: str = "int8_top1", model: str = "attendnet_b",
        base_model: str | None = None) -> Gap | None:
    """``arm`` against ``base`` (each on its model) in ``key`` (``int8_top1`` or ``top1``) over the seeds both
    have finished; ``None`` until they share one."""
    def top1(name: str, of: str) -> dict[int, float]:
        return {s: r[key] for s, r in rows.get(name, {}).get(of, {}).get("seeds", {}).items()}

    ours, theirs = top1(arm, model), top1(base, base_model or model)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return None
    gaps = [ours[s] - theirs[s] for s in shared]
    return Gap(statistics.mean(gaps), gaps, max(max(v.values()) - min(v.values()) for v in (ours, theirs)))


def compare(rows: dict[str, dict[str, Any]], arm: str, base: str, model: str = "attendnet_b",
            base_model: str | None = None) -> str | None:
    """``arm`` against ``base`` at 8-bit weights and in float, as one line (see :class:`Gap`); ``None`` until
    they share a finished seed."""
    gaps = {label: gap(rows, arm, base, key, model, base_model)
            for key, label in (("int8_top1", "8-bit weights"), ("top1", "float"))}
    if None in gaps.values():
        return None
    parts = "; ".join(f"{g.mean:+.2f} points at {label} ({g.details()})" for label, g in gaps.items())
    return f"{arm} vs {base} ({model}{'' if base_model in (None, model) else ' vs ' + base_model}): {parts}"


def table(rows: dict[str, dict[str, Any]], arms: dict[str, Arm], names: Sequence[str]) -> list[str]:
    """The markdown table of ``rows``, one line per arm and model in ``names``' order."""
    lines = ["| arm | model | params / MACs (224 px, 50 classes) | best checkpoint top-1, float | 8-bit weights | "
             "per seed (float / 8-bit) | last epoch, raw weights | last epoch, EMA |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in names:
        for model, row in rows.get(arm, {}).items():
            runs = list(row["seeds"].values())
            per_seed = ", ".join(f"s{s} {r['top1']:.2f} / {r['int8_top1']:.2f}" for s, r in row["seeds"].items())
            ema = [r["last_ema_top1"] for r in runs if r["last_ema_top1"] is not None]
            c = row["complexity"]
            lines.append(
                f"| {arm}: {arms[arm].description} | {model} | {c['params_224_50'] / 1e3:,.0f}K / "
                f"{c['macs_224_50'] / 1e6:.1f}M | {mean_spread([r['top1'] for r in runs])} | "
                f"{mean_spread([r['int8_top1'] for r in runs])} | {per_seed} | "
                f"{mean_spread([r['last_raw_top1'] for r in runs])} | {mean_spread(ema)} |")
    return lines


def machines(rows: dict[str, dict[str, Any]]) -> str:
    """The CPUs the runs were recorded on (training follows the record on the same machine), with how many
    runs each: a study spans sessions and machines, and fp32 kernels differ between instruction sets."""
    cpus = collections.Counter(f"{m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX2'})"
                               for row in rows.values() for model in row.values()
                               for m in (run["recorded"]["machine"] for run in model["seeds"].values()))
    return "; ".join(f"{cpu}: {n} run{'s' if n > 1 else ''}" for cpu, n in cpus.most_common())


def run_study(doc: str, arms: dict[str, Arm], stem: str, title: str, intro: str,
              findings: Callable[[dict[str, Any]], list[str]] = lambda rows: []) -> int:
    """A study driver's main: parse its options, train the arms asked for, and write ``<stem>.{md,json}`` (into
    docs/results once every arm has both seeds, else into the runs folder) with ``title``, ``intro``, the table
    and ``findings(rows)``. With ``--name``, the report is ``<name>.{md,json}`` on the arms of ``--arms`` only."""
    tune_malloc()
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, arms, ROOT / "runs" / stem)
    args = parser.parse_args()
    names, seeds = selected(args, arms)
    if args.latency:
        latency_report(Study({a: arms[a] for a in names}, args.runs, Path(), args.workers), stem, title, args.rounds)
        return 0
    study = Study(arms, args.runs, resolve_data_dir(args.data), args.workers)
    if not args.report:
        study.collect(names, seeds, train=True)
    if args.name:
        stem, arms = args.name, {a: arms[a] for a in names}
    rows = study.collect(list(arms), SEEDS, train=False)  # the report shows every finished run
    done = complete(rows, arms)
    context = run_context()
    lines = [f"# {title}", "", *([] if done else ["**PARTIAL: not every run has finished.**", ""]), intro, "",
             *table(rows, arms, list(arms)), "", *findings(rows), "", "## How it was run", "", *provenance(context),
             f"- runs recorded on: {machines(rows)}", "",
             f"Each run's train, eval and quantize commands are in {stem}.json."]
    out_dir = RESULTS if done else args.runs
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{stem}.md", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / f"{stem}.json", {**context, "complete": done, "arms": rows})
    print(f"wrote {out_dir / f'{stem}.md'}")
    return 0


def architectures(study: Study) -> dict[str, list[str]]:
    """``{model name or spec file: ["arm (model)", ...]}``: each distinct architecture the arms train, with the
    arms that train it (arms of the same architecture differ only in their recipe)."""
    names: dict[str, list[str]] = {}
    for arm, chosen in study.arms.items():
        for model in chosen.models:
            names.setdefault(study.model_argument(arm, model), []).append(f"{arm} ({model})")
    return names


def latency_report(study: Study, stem: str, title: str, rounds: int) -> None:
    """Time every architecture of the study (see LATENCY_RUNTIMES) interleaved with MobileNet-V1, at each thread
    count from one export, and write ``<stem>_latency.{md,json}`` into docs/results."""
    names = architectures(study)
    context = run_context()
    print(f"timing {len(names)} architectures and {REFERENCE} at {', '.join(map(str, LATENCY_THREADS))} thread(s)",
          flush=True)
    reports = run_bench(list(names), baselines=[REFERENCE], runtimes=list(LATENCY_RUNTIMES), img_size=224,
                        num_classes=50, threads=LATENCY_THREADS, batch=0, rounds=rounds)
    measured = dict(zip(LATENCY_THREADS, reports, strict=True))
    arms_of = {**names, REFERENCE: names.get(REFERENCE, [REFERENCE])}
    columns = [(t, r) for t in LATENCY_THREADS for r in LATENCY_RUNTIMES]
    cells = {(row["model"], t, row["runtime"]): row for t, report in measured.items() for row in report["results"]}
    lines = [f"# {title}: int8 latency of each arm's architecture", "",
             "Batch 1, 224 px, 50 classes (the paper's setting), random weights (latency does not depend on their "
             "values), int8 as `attendnets bench` exports it for each runtime; median ms of interleaved rounds, in "
             f"brackets the speed against {REFERENCE} measured in the same run (>1: faster). Recipe-only arms share "
             "their model's row.", "",
             "| architecture | MACs | " + " | ".join(f"{r}, {t} thread{'s' * (t > 1)}" for t, r in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, labels in arms_of.items():
        macs = profile_of(name).macs
        timed = [cells[(name, t, r)] for t, r in columns]
        lines.append(f"| {', '.join(labels)} | {macs / 1e6:.1f}M | " + " | ".join(
            f"{c['batch1_median_ms']:.2f} ({c[f'batch1_speedup_vs_{REFERENCE}']:.2f}x)" for c in timed) + " |")
    lines += ["", "## How it was run", "", *provenance(context), f"- {rounds} interleaved rounds per thread count", ""]
    atomic_write_text(RESULTS / f"{stem}_latency.md", "\n".join(lines))
    atomic_write_json(RESULTS / f"{stem}_latency.json", {**context, "architectures": arms_of,
                                                          "measured": {str(t): m for t, m in measured.items()}})
    print(f"wrote {RESULTS / f'{stem}_latency.md'}")


def add_arguments(parser: argparse.ArgumentParser, arms: dict[str, Arm], runs: Path) -> None:
    """The options every study driver takes."""
    parser.add_argument("--data", help="Imagenette root with train/ and val/ (default: $ATTENDNETS_DATA)")
    parser.add_argument("--arms", default=",".join(arms), help=f"comma-separated, in order (default {','.join(arms)})")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated (default 0,1)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--runs", type=Path, default=runs, help=f"runs folder (default {runs.relative_to(ROOT)})")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the report of the runs finished so far (into the runs folder)")
    parser.add_argument("--name", help="write the report as NAME.{md,json}, on the arms of --arms only (e.g. one "
                        "comparison that has finished before the others)")
    parser.add_argument("--latency", action="store_true", help="train nothing: time each arm's architecture in the "
                        f"int8 runtimes ({', '.join(LATENCY_RUNTIMES)}) against {REFERENCE}, on idle cores")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds of --latency (default 10)")


def selected(args: argparse.Namespace, arms: dict[str, Arm]) -> tuple[list[str], list[int]]:
    names, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [a for a in names if a not in arms]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(arms)}")
    return names, seeds


def complete(rows: dict[str, dict[str, Any]], arms: dict[str, Arm]) -> bool:
    """Whether every arm has every model at every seed."""
    return all(len(rows.get(a, {}).get(m, {}).get("seeds", {})) == len(SEEDS)
               for a, arm in arms.items() for m in arm.models)
