"""``attendnets eval``: accuracy of a checkpoint or an exported model (ONNX, TFLite, ExecuTorch) on an image
folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from attendnets.checkpoint import checkpoint_paths
from attendnets.data import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.evaluate import (
    agreement_by_margin,
    evaluate_checkpoint,
    evaluate_exported,
    save_report,
    top1_agreement,
)
from attendnets.export import load_runner

HELP = "top-1/top-5, per-class accuracy and confusion matrix of a checkpoint or an exported model"
DESCRIPTION = f"""\
Rebuild the model a checkpoint describes (its JSON sidecar), or run a file written by attendnets export in
its runtime on CPU (float or int8): FILE.onnx in ONNX Runtime, FILE.tflite in LiteRT (or in TFLite Micro
with --runtime tflm), FILE.pte in ExecuTorch. Preprocess DATA/SPLIT exactly as it was validated
during training (resize, centre crop, normalise) and report top-1 and top-5 accuracy, accuracy per class
and the confusion matrix. DATA is --data, else ${DATA_ENV}; the class folders must be the ones the model
was trained on. CKPT is a checkpoint (NAME, NAME.safetensors or NAME.json) or a run folder (its best
checkpoint). eval.json and confusion.png are written to --output (default: next to the checkpoint, in
eval-SPLIT/; next to an exported FILE.EXT, in eval-SPLIT-FILE/).

--agreement-with OTHER (an exported file of the same model, in any format) also runs OTHER on the same images and reports on how many of them both give
the same top-1 class (how closely an int8 export follows its float one, say), overall and among the images
OTHER called by a clear margin (its top-1 probability at least 0.02 / 0.05 / 0.1 / 0.2 above its top-2):
disagreements on near-ties are rounding noise, on clear calls they are damage.

examples:
  attendnets eval --checkpoint runs/b --data ~/imagenette2-224
  attendnets eval --checkpoint runs/b/last.safetensors --data DATA --split val --json
  attendnets eval --file runs/b/best.onnx --data DATA
  attendnets eval --file runs/b/best.int8.onnx --data DATA --agreement-with runs/b/best.onnx
  attendnets eval --file runs/b/best.micro.tflite --runtime tflm --data DATA --agreement-with runs/b/best.tflite
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="checkpoint or run folder (PyTorch)")
    model.add_argument("--file", "--onnx", dest="file", metavar="FILE",
                       help="a .onnx, .tflite or .pte file written by attendnets export")
    parser.add_argument("--data", metavar="DIR", help=f"dataset root (default: ${DATA_ENV})")
    parser.add_argument("--split", default="val", help="subfolder of DATA to evaluate on (default val)")
    parser.add_argument("--output", metavar="DIR", help="where to write eval.json and confusion.png")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--runtime", help="with --file FILE.tflite: litert (default) or tflm (TFLite Micro)")
    parser.add_argument("--threads", type=int, help="runtime threads with --file (default: the runtime's own)")
    parser.add_argument("--agreement-with", metavar="OTHER", help="with --file: top-1 agreement with OTHER")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    if args.file is None:
        for option in ("threads", "agreement_with", "runtime"):
            if getattr(args, option) is not None:
                raise AttendNetsError(f"--{option.replace('_', '-')} only applies with --file")
        result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.workers, args.strict)
        default_output = checkpoint_paths(args.checkpoint)[0].parent / f"eval-{args.split}"
    else:
        common = dict(batch_size=args.batch_size, workers=args.workers, strict=args.strict)
        compare = args.agreement_with is not None
        runner = load_runner(args.file, args.runtime, args.threads)
        result = evaluate_exported(runner, args.data, args.split, predictions=compare, **common)
        if compare:
            other_runner = load_runner(args.agreement_with, threads=args.threads)
            other = evaluate_exported(other_runner, args.data, args.split, predictions=True, **common)
            ours = result.pop("predictions")
            result["agreement"] = {
                "with": args.agreement_with,
                "with_weights": other["weights"],
                "with_top1": other["top1"],
                "top1_agreement": top1_agreement(ours, other["predictions"]),
                "by_margin_of_other": agreement_by_margin(ours, other["predictions"], other["margins"]),
            }
            for key in ("files", "margins"):
                del result[key]
        default_output = Path(args.file).parent / f"eval-{args.split}-{Path(args.file).stem}"
    written = save_report(result, Path(args.output) if args.output else default_output)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console = Console(width=120)
    if args.file is None:
        console.print(f"{result['model']} (epoch {result['epoch']}, {result['weights']} weights) on {args.split}/")
    else:
        console.print(f"{result['model']} ({result['weights']}, {args.file}) on {args.split}/")
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
    if "agreement" in result:
        a = result["agreement"]
        console.print(
            f"top-1 agreement with {a['with']} ({a['with_weights']}, top-1 {a['with_top1']:.2f}%): "
            f"{a['top1_agreement']:.2f}% of the images"
        )
        for row in a["by_margin_of_other"]:
            console.print(
                f"  where its top-1 leads its top-2 by >= {row['min_margin']:.2f} probability "
                f"({row['images_share']:.1f}% of the images): {row['top1_agreement']:.2f}%"
            )
    return 0
