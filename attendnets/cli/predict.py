"""``attendnets predict``: the top classes of images, from a checkpoint or an exported file."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from attendnets.cli.options import POSITIVE
from attendnets.errors import AttendNetsError

HELP = "top classes of images, from a shipped model, a checkpoint or an exported file (ONNX, TFLite, ExecuTorch)"
DESCRIPTION = """\
Preprocess each IMAGE as the model says (the checkpoint sidecar, or the metadata of a file written by
attendnets export: resize, centre crop, normalise) and print its top classes with their softmax
probabilities. The model is at most one of: --model NAME, a model shipped with attendnets (trained on
Imagenette, so it knows only Imagenette's 10 classes: tench, English springer, cassette player, chain saw,
church, French horn, garbage truck, gas pump, golf ball, parachute; the default, attendnet_b);
--checkpoint CKPT (PyTorch; a checkpoint or a run folder); --file FILE, run on CPU in its runtime (float
or int8): .onnx in ONNX Runtime, .tflite in LiteRT (or TFLite Micro with --runtime tflm), .pte in ExecuTorch.

Images are read and classified --batch-size at a time, each one's classes printed as soon as its batch
is done (with --json, one JSON list at the end), with a progress bar on stderr when it is a terminal. An
image that cannot be read is reported on stderr and skipped; the exit status is then 1 (2 when no image
could be read).

examples:
  attendnets predict photo.jpg
  attendnets predict photo.jpg --model attendnet_a --top 3
  attendnets predict photo.jpg --checkpoint runs/b
  attendnets predict a.jpg b.png --file runs/b/best.int8.onnx --top 3
  attendnets predict photo.jpg --file runs/b/best.int8.tflite
  attendnets predict photos/*.jpg --file model.onnx --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="NAME", help="a shipped model (default attendnet_b, see above)")
    model.add_argument("--checkpoint", metavar="CKPT", help="checkpoint or run folder (PyTorch)")
    model.add_argument("--file", "--onnx", dest="file", metavar="FILE",
                       help="a .onnx, .tflite or .pte file written by attendnets export")
    parser.add_argument("--top", type=POSITIVE, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument("--runtime", help="with --file FILE.tflite: litert (default) or tflm (TFLite Micro)")
    parser.add_argument("--threads", type=POSITIVE, help="runtime threads with --file (default: the runtime's own)")
    parser.add_argument("--batch-size", type=POSITIVE, default=32, help="images read and classified at once (default 32)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {image, top: [{class, label, probability}]}")


def run(args: argparse.Namespace) -> int:
    from attendnets.predict import iter_predictions, load_classifier
    from attendnets.pretrained import DEFAULT_MODEL, class_labels, shipped_checkpoint

    checkpoint, name = args.checkpoint, None
    if args.file is None and checkpoint is None:
        name = args.model or DEFAULT_MODEL
        checkpoint = shipped_checkpoint(name)
    classifier = load_classifier(checkpoint, args.file, args.threads, args.runtime)
    if name and not args.json:
        print(f"{name} (shipped with attendnets) knows only Imagenette's {len(classifier.class_names)} classes: "
              "it names one of them for any image", file=sys.stderr)
    labels = dict(zip(classifier.class_names, class_labels(classifier.meta)))
    width = max(len(label) for label in labels.values())
    records, problems = [], 0
    with _Progress(len(args.images)) as progress:
        for record in iter_predictions(classifier, args.images, args.top, args.batch_size):
            progress.advance()
            if "problem" in record:
                problems += 1
                progress.warn(f"attendnets predict: warning: {record['problem']}")
            elif args.json:
                records.append({**record, "top": [{**g, "label": labels[g["class"]]} for g in record["top"]]})
            else:
                print(_text(record, labels, width), flush=True)
    if problems == len(args.images):
        raise AttendNetsError(f"none of the {len(args.images)} image(s) could be read")
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if problems else 0


def _text(record: dict[str, Any], labels: dict[str, str], width: int) -> str:
    ranks = [f"  {rank}. {labels[guess['class']]:<{width}}  {100 * guess['probability']:5.1f}%"
             for rank, guess in enumerate(record["top"], 1)]
    return "\n".join([record["image"], *ranks])


class _Progress:
    """A progress bar over the images on stderr when stderr is a terminal (nothing otherwise); warnings are
    printed above it. Lines printed to a terminal stdout meanwhile go above the bar too."""

    def __init__(self, total: int) -> None:
        self.bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True, redirect_stdout=sys.stdout.isatty())
            self.task = self.bar.add_task("images", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def warn(self, line: str) -> None:
        if self.bar is None:
            print(line, file=sys.stderr)
        else:
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
