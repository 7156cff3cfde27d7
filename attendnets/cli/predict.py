"""``attendnets predict``: the top classes of images, from a checkpoint or an exported file."""

from __future__ import annotations

import argparse
import json
import sys

from attendnets.errors import AttendNetsError
from attendnets.predict import load_classifier, predict_images

HELP = "top classes of images, from a checkpoint or an exported file (ONNX, TFLite, ExecuTorch)"
DESCRIPTION = """\
Preprocess each IMAGE as the model says (the checkpoint sidecar, or the metadata of a file written by
attendnets export: resize, centre crop, normalise) and print its top classes with their softmax
probabilities. Give exactly one model: --checkpoint CKPT (PyTorch; a checkpoint or a run folder) or
--file FILE, run on CPU in its runtime (float or int8): .onnx in ONNX Runtime, .tflite in LiteRT (or
TFLite Micro with --runtime tflm), .pte in ExecuTorch.

An image that cannot be read is reported on stderr and skipped; the exit status is then 1 (2 when no
image could be read).

examples:
  attendnets predict photo.jpg --checkpoint runs/b
  attendnets predict a.jpg b.png --file runs/b/best.int8.onnx --top 3
  attendnets predict photo.jpg --file runs/b/best.int8.tflite
  attendnets predict photos/*.jpg --file model.onnx --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="checkpoint or run folder (PyTorch)")
    model.add_argument("--file", "--onnx", dest="file", metavar="FILE",
                       help="a .onnx, .tflite or .pte file written by attendnets export")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument("--runtime", help="with --file FILE.tflite: litert (default) or tflm (TFLite Micro)")
    parser.add_argument("--threads", type=int, help="runtime threads with --file (default: the runtime's own)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {image, top: [{class, probability}]}")


def run(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.checkpoint, args.file, args.threads, args.runtime)
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
