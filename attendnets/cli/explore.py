"""``attendnets explore``: search for AttendNets that meet a user's requirements (Optuna, successive halving)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attendnets.bench import RUNTIMES
from attendnets.cli.options import POSITIVE, integer, number
from attendnets.env import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.search.settings import COSTS, MIN_DESIGNS, PREDICTION_MARGIN, SAMPLERS, Fidelity, parse_count
from attendnets.search.space import SPACE_DIR

if TYPE_CHECKING:  # the modules that run a search load torch and optuna: imported when a search runs
    from attendnets.search.pilot import PilotConfig
    from attendnets.search.requirements import Requirements
    from attendnets.search.study import ExploreConfig

HELP = "search for designs that meet your requirements (params, MACs, 8-bit KB, MCU arena, latency, top-1)"
DESCRIPTION = f"""\
Explore a search space around a prototype (attendnet_a, attendnet_b or your own space file) with Optuna
and return the designs on the Pareto front of top-1 (hold-out, after 8-bit weight quantization) against a
cost (--cost; MACs by default), among those that meet your requirements.

How: every proposed design is built and its costs measured at the deployment size (--img-size, default
the prototype's 224 px; the dataset's class count) before any training. Designs the builder refuses or
over a cap are not trained; the sampler (TPE by default) learns from them through Optuna constraints.
The others train from scratch on a cached subset of DATA/train (--images-per-class at --img-size-search
px; the same seed and data order for all) and are scored on a hold-out split of DATA/train (DATA/val is
never read). Successive halving: rung r trains --epochs x --eta^r epochs; the top 1/eta of each rung (by
non-dominated rank) go on to the next; the prototype is trained at every rung as the reference.

The study (OUTPUT/NAME) is resumable: an interrupted run continues with --resume, keeping every finished
trial. With --storage URL (e.g. PostgreSQL) several machines run the same command with --resume and
different --seed as workers. At the end (and with 'explore report'): pareto.png, trials.csv,
summary.json and pareto/<design>.json spec files for 'attendnets train --spec'.

Without --data (and ${DATA_ENV} unset), or with --synthetic, it runs on generated shapes with small
settings (the demo space, 32 px, 3-epoch rung 0, 12 designs): a few minutes on two cores.

examples:
  attendnets explore run --name demo                       # generated data, end to end in minutes
  attendnets explore run --data ~/imagenette2-320 --space attendnet_b --name b600k \\
      --max-weight-kb 600 --max-macs 150M --trials 40 --rungs 3
  attendnets explore run --data DATA --name b600k --resume  # continue an interrupted study
  attendnets explore run --data DATA --name lat --cost latency_ms --max-latency-ms 10 --threads 2
  attendnets explore run --data DATA --name int8 --cost latency_ratio --runtime ort-int8 --max-latency-ratio 0.5
  attendnets explore run --data DATA --name mcu --img-size 128 --cost micro_arena_kb --max-micro-arena-kb 320 \\
      --max-weight-kb 700                                   # a microcontroller: SRAM arena and flash
  attendnets explore run --data DATA --name shared --storage postgresql+psycopg://u:p@host/db --resume --seed 1
  attendnets explore report explore/b600k                  # re-draw pareto.png, trials.csv, pareto/*.json
  attendnets explore space attendnet_b > my_space.yaml      # edit, then --space my_space.yaml
  attendnets explore pilot --data DATA --designs 8 --low-epochs 3 --high-epochs 9   # does rung 0 rank well?
"""

PILOT_DESCRIPTION = """\
Measure how well the search's cheap rung predicts a longer training: draw --designs designs of the space
(the prototype and random points that meet the requirements, fixed by --seed), train each at the search
fidelity for --low-epochs and for --high-epochs epochs (same data, seed and recipe as 'explore run'), and
compare the two rankings of hold-out top-1 at 8 bits: Kendall's tau-b with its p-value, the overlap of the
two top-k sets, and how far the cheap rung's favourite lands below the best of the long training.

Writes OUTPUT/pilot.json (every design's spec, costs and scores, the agreement, a plain verdict) and
OUTPUT/pilot.png (cheap against expensive top-1). Resumable: each finished training is kept in
OUTPUT/results/, so running the same command again trains only what is missing.

examples:
  attendnets explore pilot --synthetic --designs 6 --low-epochs 1 --high-epochs 3   # generated data, minutes
  attendnets explore pilot --data ~/imagenette2-224 --designs 8 --low-epochs 3 --high-epochs 9 \\
      --max-macs 63M --img-size 128 --output explore/pilot-b
"""

SYNTHETIC_DEFAULTS = dict(space="demo", img_size=32, images_per_class=128, holdout_per_class=16, epochs=3, lr=1e-2,
                          trials=12)
DATA_DEFAULTS = dict(space="attendnet_b", img_size=Fidelity.img_size, images_per_class=Fidelity.images_per_class,
                     holdout_per_class=Fidelity.holdout_per_class, epochs=Fidelity.epochs,
                     lr=Fidelity.lr, trials=24)
SEED = integer(0, 2**32 - 1)  # what numpy's generators, and so Optuna's samplers, accept
POSITIVE_NUMBER = number(0, low_open=True)


def count(text: str) -> float:
    """An argparse type: a positive count as :func:`parse_count` reads it (``150M``, ``200k``, ``1500000``)."""
    try:
        value = parse_count(text)
    except AttendNetsError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a count > 0 such as 150M, 200k or 1500000, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    run = actions.add_parser("run", help="run, resume or join a search", description=DESCRIPTION, formatter_class=fmt)
    what = run.add_argument_group("what to search")
    what.add_argument("--name", required=True, help="study name; its folder is OUTPUT/NAME")
    what.add_argument("--space", help="a shipped space (attendnet_a, attendnet_b, demo) or a space file "
                      "(default attendnet_b; on generated data demo, a small prototype that learns in seconds)")
    what.add_argument("--data", metavar="DIR", help=f"dataset root with train/ (default: ${DATA_ENV}, else generated data)")
    what.add_argument("--synthetic", action="store_true", help="search on generated shapes (8 classes)")
    what.add_argument("--output", metavar="DIR", default="explore", help="folder holding study folders (default explore)")
    req = run.add_argument_group("requirements (at the deployment size, before training)")
    _add_caps(req)
    req.add_argument("--min-top1", type=number(0, 100, low_open=True), metavar="PCT",
                     help="hold-out top-1 at 8 bits, as measured at each rung's (short) fidelity")
    req.add_argument("--train-threads", type=POSITIVE, default=1,
                     help="torch threads while training a design (default 1; run more workers to use more cores)")
    req.add_argument("--latency-table", metavar="FILE",
                     help="with --max-latency-ratio: predict each design's ratio from per-layer latencies kept in "
                          f"FILE (measured on first use, for this runtime and machine) and reject designs predicted "
                          f"over the cap x{PREDICTION_MARGIN} without exporting them")
    obj = run.add_argument_group("objectives and budget")
    obj.add_argument("--cost", choices=COSTS, default="macs", help="the cost to minimise (default macs)")
    obj.add_argument("--trials", type=POSITIVE, help="designs trained at rung 0 (default 24; synthetic 12)")
    obj.add_argument("--rungs", type=POSITIVE, default=2, help="successive-halving rungs (default 2)")
    obj.add_argument("--eta", type=integer(2), default=Fidelity.eta,
                     help=f"keep the top 1/eta per rung (default {Fidelity.eta})")
    obj.add_argument("--epochs", type=POSITIVE, help=f"epochs at rung 0 (default {Fidelity.epochs})")
    _add_fidelity(obj)
    obj.add_argument("--give-up-after", type=POSITIVE, default=50,
                     help="stop rung 0 after this many infeasible or repeated designs in a row (default 50)")
    how = run.add_argument_group("sampler, storage, output")
    how.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (default), nsga2, or random (the control)")
    how.add_argument("--seed", type=SEED, default=0, help="sampler seed; give each worker its own (default 0)")
    how.add_argument("--train-seed", type=SEED, default=0, help="hold-out split, initial weights, data order (default 0)")
    how.add_argument("--storage", metavar="URL", help="database URL shared by workers (default: a file in the study folder)")
    how.add_argument("--resume", action="store_true", help="continue the study (or join it as a worker)")
    how.add_argument("--json", action="store_true", help="print the summary as JSON")

    report = actions.add_parser("report", help="write pareto.png, trials.csv and pareto/*.json of a study",
                                description="Re-draw the report files of a study folder (also while it runs).")
    report.add_argument("study_dir", metavar="STUDY_DIR", help="the study folder (OUTPUT/NAME)")
    report.add_argument("--storage", metavar="URL", help="the database URL, when the study lives in one with a password")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")

    _add_pilot(actions.add_parser("pilot", help="how well the cheap rung ranks designs (Kendall tau, low vs high epochs)",
                                  description=PILOT_DESCRIPTION, formatter_class=fmt))

    space = actions.add_parser("space", help="print a shipped search space (YAML) to copy and edit",
                               description="Print a shipped search space, commented, to start your own from.")
    space.add_argument("name", choices=sorted(p.stem for p in SPACE_DIR.glob("*.yaml")), help="the preset it surrounds")


def _add_pilot(pilot: argparse.ArgumentParser) -> None:
    what = pilot.add_argument_group("what to compare")
    what.add_argument("--space", help="a shipped space or a space file (default attendnet_b; on generated data demo)")
    what.add_argument("--data", metavar="DIR", help=f"dataset root with train/ (default: ${DATA_ENV}, else generated data)")
    what.add_argument("--synthetic", action="store_true", help="use generated shapes (8 classes)")
    what.add_argument("--output", metavar="DIR", default="explore/pilot", help="the pilot's folder (default explore/pilot)")
    what.add_argument("--designs", type=integer(MIN_DESIGNS), default=8,
                      help="designs, the prototype included (default 8)")
    what.add_argument("--low-epochs", type=POSITIVE,
                      help=f"the cheap rung's epochs (default: run's rung 0, {Fidelity.epochs})")
    what.add_argument("--high-epochs", type=integer(2), help="the expensive rung's epochs (default 3x --low-epochs)")
    what.add_argument("--top-k", type=POSITIVE, help="size of the top sets compared (default: a third of the designs)")
    what.add_argument("--seed", type=SEED, default=0, help="which designs are drawn (default 0)")
    _add_caps(pilot.add_argument_group("requirements every drawn design meets (the prototype is always in)"))
    fid = pilot.add_argument_group("fidelity (as for 'explore run')")
    _add_fidelity(fid)
    fid.add_argument("--train-seed", type=SEED, default=0, help="hold-out split, initial weights, data order (default 0)")
    fid.add_argument("--train-threads", type=POSITIVE, default=1, help="torch threads while training (default 1)")
    pilot.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_caps(group: argparse._ArgumentGroup) -> None:
    """The cost caps of 'run' and 'pilot', with the deployment they are measured at."""
    group.add_argument("--max-params", type=count, metavar="N", help="parameters, e.g. 500k")
    group.add_argument("--max-macs", type=count, metavar="N", help="multiply-adds at batch 1, e.g. 150M")
    group.add_argument("--max-weight-kb", type=POSITIVE_NUMBER, metavar="KB",
                       help="weight memory with 8-bit conv/linear weights")
    group.add_argument("--max-peak-activation-kb", type=POSITIVE_NUMBER, metavar="KB",
                       help="peak activation memory at 1 byte per element (8-bit activations)")
    group.add_argument("--max-micro-arena-kb", type=POSITIVE_NUMBER, metavar="KB",
                       help="TFLite Micro's tensor arena for the int8 model (a microcontroller's SRAM budget, e.g. "
                            "320), as 'attendnets profile' estimates it")
    group.add_argument("--max-latency-ms", type=POSITIVE_NUMBER, metavar="MS",
                       help="batch-1 latency in --runtime, --threads threads")
    group.add_argument("--max-latency-ratio", type=POSITIVE_NUMBER, metavar="R",
                       help="batch-1 latency as a fraction of MobileNet-V1's in the same runtime, timed interleaved "
                            "with it (0.5: twice as fast); survives machine load better than --max-latency-ms")
    group.add_argument("--img-size", type=POSITIVE,
                       help="deployment image size for the costs (default: the prototype's)")
    group.add_argument("--runtime", default="eager", choices=RUNTIMES,
                       help="where latency is measured (default eager): each design is exported as 'attendnets export' "
                            "does (int8: all-integer, calibrated on generated images), a few seconds per design")
    group.add_argument("--threads", type=POSITIVE, default=2, help="CPU threads for latency (default 2)")


def _add_fidelity(group: argparse._ArgumentGroup) -> None:
    """How 'run' and 'pilot' train each design (besides epochs and seed)."""
    group.add_argument("--img-size-search", type=integer(8),
                       help=f"training resolution (default {Fidelity.img_size}; synthetic 32)")
    group.add_argument("--images-per-class", type=POSITIVE,
                       help=f"training images per class (default {Fidelity.images_per_class}; synthetic 128)")
    group.add_argument("--holdout-per-class", type=POSITIVE,
                       help=f"hold-out images per class (default {Fidelity.holdout_per_class}; synthetic 16)")
    group.add_argument("--batch-size", type=POSITIVE, default=Fidelity.batch_size,
                       help=f"default {Fidelity.batch_size}; at most --images-per-class x classes")
    group.add_argument("--lr", type=POSITIVE_NUMBER, help=f"peak learning rate (default {Fidelity.lr}; synthetic 0.01)")


def _given(value: Any, default: Any) -> Any:
    """An option's value, or ``default`` when it was not given (a given 0 stays 0)."""
    return default if value is None else value


def _defaults_and_fidelity(args: argparse.Namespace, epochs: int | None, eta: int = Fidelity.eta) -> tuple[dict, Fidelity]:
    """The defaults for the data in use (generated or real) and the fidelity the arguments ask for."""
    synthetic = args.synthetic or not (args.data or os.environ.get(DATA_ENV))
    d = SYNTHETIC_DEFAULTS if synthetic else DATA_DEFAULTS
    fidelity = Fidelity(img_size=_given(args.img_size_search, d["img_size"]),
                        images_per_class=_given(args.images_per_class, d["images_per_class"]),
                        holdout_per_class=_given(args.holdout_per_class, d["holdout_per_class"]),
                        epochs=_given(epochs, d["epochs"]), eta=eta, batch_size=args.batch_size,
                        lr=_given(args.lr, d["lr"]), seed=args.train_seed)
    return d, fidelity


def _requirements(args: argparse.Namespace, min_top1: float | None = None) -> Requirements:
    from attendnets.search.requirements import Requirements

    return Requirements(max_params=args.max_params, max_macs=args.max_macs, max_weight_kb=args.max_weight_kb,
                        max_peak_activation_kb=args.max_peak_activation_kb, max_micro_arena_kb=args.max_micro_arena_kb,
                        max_latency_ms=args.max_latency_ms, max_latency_ratio=args.max_latency_ratio, min_top1=min_top1)


def pilot_config_from_args(args: argparse.Namespace) -> PilotConfig:
    from attendnets.search.pilot import PilotConfig

    d, fidelity = _defaults_and_fidelity(args, args.low_epochs)
    return PilotConfig(
        space=_given(args.space, d["space"]), data=args.data, synthetic=args.synthetic, output=args.output,
        designs=args.designs, low_epochs=fidelity.epochs,
        high_epochs=_given(args.high_epochs, fidelity.epochs * Fidelity.eta),
        fidelity=fidelity, requirements=_requirements(args),
        img_size=args.img_size, threads=args.threads, runtime=args.runtime, train_threads=args.train_threads,
        top_k=args.top_k, seed=args.seed,
    )


def config_from_args(args: argparse.Namespace) -> ExploreConfig:
    from attendnets.search.study import ExploreConfig

    d, fidelity = _defaults_and_fidelity(args, args.epochs, args.eta)
    return ExploreConfig(
        name=args.name, space=_given(args.space, d["space"]), data=args.data, synthetic=args.synthetic,
        output=args.output, requirements=_requirements(args, args.min_top1), cost=args.cost, fidelity=fidelity,
        trials=_given(args.trials, d["trials"]), rungs=args.rungs, img_size=args.img_size, threads=args.threads,
        runtime=args.runtime, latency_table=args.latency_table, train_threads=args.train_threads,
        sampler=args.sampler, seed=args.seed, storage=args.storage, resume=args.resume, give_up_after=args.give_up_after,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if getattr(args, "json", False) else logging.INFO, format="%(message)s")
    if args.action == "space":
        print((SPACE_DIR / f"{args.name}.yaml").read_text(), end="")
        return 0
    import optuna

    from attendnets.search.report import write_report

    # a search trains many small designs: their per-epoch lines and Optuna's per-trial ones would drown its progress
    logging.getLogger("attendnets.training").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Progress bars on a terminal; elsewhere (a log file) a line per finished design, and nothing with --json.
    if args.action == "pilot":
        from attendnets.search.pilot import Pilot

        summary = Pilot(pilot_config_from_args(args)).run(progress=not args.json)
        print(json.dumps(summary, indent=2) if args.json else summary["verdict"])
        return 0
    if args.action == "report":
        if not Path(args.study_dir).is_dir():
            raise AttendNetsError(f"study folder {args.study_dir} does not exist")
        summary = write_report(Path(args.study_dir), url=args.storage)
    else:
        from attendnets.search.study import Explorer

        explorer = Explorer(config_from_args(args))
        explorer.run(progress=not args.json)
        summary = write_report(explorer.study_dir, explorer.storage)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from attendnets.search.requirements import COST_LABELS, format_cost

    console = Console(width=120)
    cost = summary["cost"]
    for rung in summary["rungs"]:
        proto = rung["prototype_top1"]
        console.print(f"rung {rung['rung']} ({rung['epochs']} epochs): {rung['trials']} trials, {rung['feasible']} feasible"
                      f"{f', prototype {proto:.1f}%' if proto is not None else ''}")
    if not summary["pareto"]:
        console.print("no design met every requirement yet")
    else:
        table = Table(title=f"Pareto designs (rung {summary['pareto_rung']}): hold-out top-1 at 8 bits vs {COST_LABELS[cost]}")
        for column in ("design", "top-1 8-bit", "top-1 float", "params", "MACs", "8-bit KB", "peak act. KB"):
            table.add_column(column, justify="left" if column == "design" else "right")
        for d in summary["pareto"]:
            c = d["costs"]
            table.add_row(Path(d["file"]).name + (" (prototype)" if d["reference"] else ""), f"{d['top1_int8']:.2f}%",
                          f"{d['top1_float']:.2f}%", format_cost("params", c["params"]).split()[0],
                          format_cost("macs", c["macs"]).split()[0], f"{c['weight_kb']:.1f}", f"{c['peak_activation_kb']:.1f}")
        console.print(table)
    files = summary["files"]
    console.print(f"wrote {files['plot']}, {files['trials']}, {files['pareto']}/")
