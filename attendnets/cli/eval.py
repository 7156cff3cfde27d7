"""``attendnets eval``: accuracy of a checkpoint or an exported model (ONNX, TFLite, ExecuTorch) on an image
folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from attendnets.cli.options import NON_NEGATIVE, POSITIVE, number
from attendnets.env import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.files import check_writable

HELP = "top-1/top-5, per-class accuracy and confusion matrix of a checkpoint or an exported model"
DESCRIPTION = f"""\
Rebuild the model a checkpoint describes (its JSON sidecar), or run a file written by attendnets export in
its runtime on CPU (float or int8): FILE.onnx in ONNX Runtime, FILE.tflite in LiteRT (or in TFLite Micro
with --runtime tflm), FILE.pte in ExecuTorch. Preprocess DATA/SPLIT exactly as it was validated
during training (resize, centre crop, normalise) and report top-1 and top-5 accuracy, accuracy per class
and the confusion matrix. DATA is --data, else ${DATA_ENV}; the class folders must be the ones the model
was trained on. CKPT is a checkpoint (NAME, NAME.safetensors or NAME.json) or a run folder (its best
checkpoint). eval.json and confusion.png are written to --output, default eval-NAME-SPLIT/ beside the model,
NAME being the checkpoint's (runs/b/eval-last-val/ for runs/b/last) or the exported file's
(runs/b/eval-best.int8.onnx-val/): each model and split has its own report. The folder is checked before
the evaluation, and the figures are printed before the report is saved.

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
    parser.add_argument("--batch-size", type=POSITIVE, default=64, help="default 64")
    parser.add_argument("--workers", type=NON_NEGATIVE, default=2, help="data loader processes (default 2)")
    parser.add_argument("--runtime", help="with --file FILE.tflite: litert (default) or tflm (TFLite Micro)")
    parser.add_argument("--threads", type=POSITIVE, help="runtime threads with --file (default: the runtime's own)")
    parser.add_argument("--agreement-with", metavar="OTHER", help="with --file: top-1 agreement with OTHER")
    parser.add_argument("--crop-pct", type=number(0, 1, low_open=True), metavar="P",
                        help="with --checkpoint: centre-crop this share of the image instead of the training run's "
                        "(0.875 for our runs; 1.0 resizes the whole image to the input size)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def report_folder(model: Path, name: str, split: str) -> Path:
    """Where a model's report goes by default: ``eval-NAME-SPLIT/`` beside ``model``."""
    return model.parent / f"eval-{name}-{split}"


def run(args: argparse.Namespace) -> int:
    from attendnets.checkpoint import checkpoint_paths
    from attendnets.evaluate import save_report

    if args.file is None:
        for option in ("threads", "agreement_with", "runtime"):
            if getattr(args, option) is not None:
                raise AttendNetsError(f"--{option.replace('_', '-')} only applies with --file")
        weights = checkpoint_paths(args.checkpoint)[0]
        default_output = report_folder(weights, weights.stem, args.split)
    else:
        if args.crop_pct is not None:
            raise AttendNetsError("--crop-pct only applies with --checkpoint: an exported file keeps the "
                                  "preprocessing of its sidecar")
        default_output = report_folder(Path(args.file), Path(args.file).name, args.split)
    output = Path(args.output) if args.output else default_output
    check_writable(output, "--output")
    result = _evaluate(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result, args)
    written = save_report(result, output)
    if not args.json:
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the checkpoint or file, with the top-1 agreement with ``--agreement-with``."""
    from attendnets.evaluate import agreement_by_margin, evaluate_checkpoint, evaluate_exported, top1_agreement
    from attendnets.export import load_runner

    if args.file is None:
        return evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.workers, args.strict,
                                   args.crop_pct)
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
    return result


def _print(result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

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
        f"loss {result['loss']:.4f}"
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
