"""``attendnets predict``: the top classes of images, from a checkpoint or an exported ONNX file."""

from __future__ import annotations

import argparse
import json
import sys

from attendnets.errors import AttendNetsError
from attendnets.predict import load_classifier, predict_images

HELP = "top classes of images, from a checkpoint or an ONNX file"
DESCRIPTION = """\
Preprocess each IMAGE as the model says (the checkpoint sidecar, or the metadata of a file written by
attendnets export: resize, centre crop, normalise) and print its top classes with their softmax
probabilities. Give exactly one model: --checkpoint CKPT (PyTorch; a checkpoint or a run folder) or
--onnx FILE (ONNX Runtime on CPU, float or int8).

An image that cannot be read is reported on stderr and skipped; the exit status is then 1 (2 when no
image could be read).

examples:
  attendnets predict photo.jpg --checkpoint runs/b
  attendnets predict a.jpg b.png --onnx runs/b/best.int8.onnx --top 3
  attendnets predict photos/*.jpg --onnx model.onnx --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="checkpoint or run folder (PyTorch)")
    model.add_argument("--onnx", metavar="FILE", help="ONNX file written by attendnets export (ONNX Runtime)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {image, top: [{class, probability}]}")


def run(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.checkpoint, args.onnx, args.threads)
    records, problems = predict_images(classifier, args.images, args.top)
    for problem in problems:
        print(f"attendnets predict: warning: {problem}", file=sys.stderr)
    if not records:
        raise AttendNetsError(f"none of the {len(args.images)} image(s) could be read")
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        width = max(len(name) for name in classifier.class_names)
        for record in records:
            print(record["image"])
            for rank, guess in enumerate(record["top"], 1):
                print(f"  {rank}. {guess['class']:<{width}}  {100 * guess['probability']:5.1f}%")
    return 1 if problems else 0
