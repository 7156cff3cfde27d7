"""``attendnets bench``: CPU latency and throughput in PyTorch eager, ONNX Runtime float and int8, side by side."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from attendnets.bench import DEFAULT_RUNTIMES, REFERENCE, RUNTIMES
from attendnets.cli.options import NON_NEGATIVE, POSITIVE, integer
from attendnets.files import check_writable
from attendnets.registry import BASELINES

if TYPE_CHECKING:
    from rich.console import Console

HELP = "batch-1 latency and batch-N throughput in PyTorch and the deployment runtimes, vs the MobileNets"
DESCRIPTION = f"""\
Measure each MODEL (a preset, baseline, timm name or spec file, with random weights) or CKPT (a checkpoint
or run folder, with its weights) in each runtime, on CPU with --threads threads (several counts, as 1,2, time
each count in turn from one export of every model: one report per count, a JSON list with --json):

  eager                        PyTorch, channels_last
  ort, ort-int8                ONNX Runtime (int8: static QDQ, per-channel int8 weights, uint8 activations)
  litert, litert-int8          LiteRT interpreter with XNNPACK (int8: all-integer, ai-edge-quantizer)
  executorch, executorch-int8  ExecuTorch lowered to XNNPACK (int8: PT2E XNNPACK quantizer)
  tflm                         TFLite Micro's reference kernels, int8 (what a microcontroller runs; 1 thread)

Each model is exported as attendnets export writes it for that runtime (pip install 'attendnets[litert]',
'[micro]', '[executorch]' for the last three kinds).
The MobileNets ({', '.join(BASELINES)}) are measured in the same run, interleaved round by round with a
pause and untimed calls before each turn, so the printed ratios (speed vs {REFERENCE} in the same runtime,
and vs eager) hold even when absolute times drift. Latency does not depend on the weights' values: random
weights and int8 ranges calibrated on generated images measure the same graph and kernels.

examples:
  attendnets bench attendnet_b                           # vs MobileNet-V1/V2, all runtimes, 224 px
  attendnets bench attendnet_a attendnet_b --runtimes ort-int8 --rounds 20
  attendnets bench runs/b --img-size 128 --no-baselines --batch 0   # a checkpoint, batch 1 only
  attendnets bench attendnet_b --profile prof/ --json    # + time by ONNX operator type, as JSON
  attendnets bench attendnet_b --runtimes ort-int8,litert-int8,executorch-int8 --threads 1,2 --batch 0
"""


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _thread_counts(text: str) -> list[int]:
    counts = [POSITIVE(item) for item in _list(text)]
    if not counts:
        raise argparse.ArgumentTypeError(f"must name one or more thread counts (as 2 or 1,2), got {text!r}")
    return counts


_thread_counts.__name__ = "thread counts"  # argparse names the type in its own messages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL|CKPT", help="models or checkpoints to measure")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--baselines", type=_list, default=list(BASELINES), metavar="A,B",
                       help=f"baselines measured alongside (default {','.join(BASELINES)})")
    group.add_argument("--no-baselines", dest="baselines", action="store_const", const=[], help="measure no baselines")
    parser.add_argument("--runtimes", type=_list, default=list(DEFAULT_RUNTIMES), metavar="R,R",
                        help=f"any of {','.join(RUNTIMES)} (default {','.join(DEFAULT_RUNTIMES)})")
    parser.add_argument("--img-size", type=integer(8), default=224, help="input size in pixels, >= 8 (default 224)")
    parser.add_argument("--num-classes", type=POSITIVE, default=50, help="classes of named models (default 50)")
    parser.add_argument("--threads", type=_thread_counts, default=[2], metavar="N[,N]",
                        help="threads of PyTorch and the runtimes; several counts are timed in turn (default 2)")
    parser.add_argument("--batch", type=NON_NEGATIVE, default=32, help="batch for throughput; 0 skips it (default 32)")
    parser.add_argument("--rounds", type=POSITIVE, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--profile", metavar="DIR", help="write ONNX Runtime's time by operator type per ORT model")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from attendnets.bench import run_bench

    if args.profile:
        check_writable(args.profile, "--profile")  # before minutes of measuring
    console = Console(stderr=True)
    with Progress(
        TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:

        def progress(total: int):
            task = bar.add_task("bench", total=total)
            return lambda: bar.advance(task)

        console.print("exporting and quantizing...", style="dim")
        reports = run_bench(
            args.models, args.baselines, args.runtimes, args.img_size, args.num_classes, args.threads,
            args.batch, args.rounds, args.profile, progress,
        )
    if args.json:
        shown = [{k: v for k, v in report.items() if k != "raw_ms"} for report in reports]
        print(json.dumps(shown[0] if len(shown) == 1 else shown, indent=2))
        return 0
    out = Console(width=140)
    for report in reports:
        _print_report(out, report)
    if args.profile:
        out.print(f"operator profiles written to {args.profile}/")
    return 0


def _print_report(out: Console, report: dict[str, Any]) -> None:
    """One thread count's results as a table, then the machine and the ORT operator profiles."""
    from rich.table import Table

    settings, rows = report["settings"], report["results"]
    columns = {
        "batch 1 median ms": lambda r: f"{r['batch1_median_ms']:.2f}",
        "p90 ms": lambda r: f"{r['batch1_p90_ms']:.2f}",
        f"batch {settings['batch']} img/s": lambda r: f"{r['batchN_images_per_s']:.0f}",
        f"vs {REFERENCE} (b1)": lambda r: f"{r['batch1_speedup_vs_' + REFERENCE]:.2f}x",
        f"vs {REFERENCE} (b{settings['batch']})": lambda r: f"{r['batchN_speedup_vs_' + REFERENCE]:.2f}x",
        "vs eager (b1)": lambda r: f"{r['batch1_speedup_vs_eager']:.2f}x",
    }
    shown = {}
    for title, cell in columns.items():  # a column only when some row has its value
        try:
            shown[title] = [cell(r) for r in rows]
        except KeyError:
            continue
    table = Table(title=f"{settings['img_size']} px, {settings['threads']} threads, {settings['rounds']} rounds")
    table.add_column("model")
    table.add_column("runtime")
    for title in shown:
        table.add_column(title, justify="right")
    for i, row in enumerate(rows):
        table.add_row(row["model"], row["runtime"], *(cells[i] for cells in shown.values()))
    out.print(table)
    out.print(f"ratios > 1 are faster. {report['note']}. Machine: {report['machine']['cpu']}, "
              f"{report['machine']['cores']} cores, load average {report['machine']['load_average']}.")
    for key, prof in report["profiles"].items():
        top = ", ".join(f"{op} {100 * v['share']:.0f}%" for op, v in list(prof["ops"].items())[:6])
        out.print(f"{key}: {prof['total_ms']:.2f} ms of kernel time: {top}")
