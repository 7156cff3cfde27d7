"""``attendnets eval``: accuracy of a checkpoint on an image folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from attendnets.checkpoint import checkpoint_paths
from attendnets.data import DATA_ENV
from attendnets.evaluate import evaluate_checkpoint, save_report

HELP = "top-1/top-5, per-class accuracy and confusion matrix of a checkpoint"
DESCRIPTION = f"""\
Rebuild the model a checkpoint describes (its JSON sidecar), preprocess DATA/SPLIT exactly as it was
validated during training (resize, centre crop, normalise), and report top-1 and top-5 accuracy,
accuracy per class and the confusion matrix. DATA is --data, else ${DATA_ENV}; the class folders must
be the ones the checkpoint was trained on. CKPT is a checkpoint (NAME, NAME.safetensors or NAME.json)
or a run folder (its best checkpoint). eval.json and confusion.png are written to --output (default:
next to the checkpoint, in eval-SPLIT/).

examples:
  attendnets eval --checkpoint runs/b --data ~/imagenette2-224
  attendnets eval --checkpoint runs/b/last.safetensors --data DATA --split val --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="checkpoint or run folder")
    parser.add_argument("--data", metavar="DIR", help=f"dataset root (default: ${DATA_ENV})")
    parser.add_argument("--split", default="val", help="subfolder of DATA to evaluate on (default val)")
    parser.add_argument("--output", metavar="DIR", help="where to write eval.json and confusion.png")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.workers, args.strict)
    output = Path(args.output) if args.output else checkpoint_paths(args.checkpoint)[0].parent / f"eval-{args.split}"
    written = save_report(result, output)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console = Console(width=120)
    console.print(f"{result['model']} (epoch {result['epoch']}, {result['weights']} weights) on {args.split}/")
    table = Table()
    table.add_column("class")
    table.add_column("top-1", justify="right")
    for name, acc in result["per_class_top1"].items():
        table.add_row(name, f"{acc:.1f}%")
    table.add_row("[bold]all[/bold]", f"[bold]{result['top1']:.2f}%[/bold]")
    console.print(table)
    console.print(
        f"{result['images']} images: top-1 {result['top1']:.2f}%, top-{result['top5_k']} {result['top5']:.2f}%, "
        f"loss {result['loss']:.4f}; wrote {', '.join(str(p) for p in written)}"
    )
    return 0
