"""``attendnets export``: a checkpoint as a float ONNX file and, with --int8, a fully 8-bit one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attendnets.checkpoint import checkpoint_paths, describe, load_checkpoint, read_meta
from attendnets.data import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.evaluate import export_parity

PARITY_IMAGES = 32

HELP = "export a checkpoint to ONNX (float, and int8 calibrated on training images)"
DESCRIPTION = f"""\
Write the model of a checkpoint as a float ONNX graph (dynamic batch axis, checked with the ONNX checker)
that carries its class names and preprocessing, so the file is usable on its own (attendnets eval --onnx,
attendnets predict --onnx, or any ONNX runtime). With --int8, also write a fully 8-bit version: ONNX
Runtime static quantization, QDQ format, per-channel int8 weights, uint8 activations whose ranges are
calibrated on --calib-images real training images. The conv that reads the image stays float unless
--int8-stem (quantizing it and the image cost most of the int8 graph's disagreement with float on
Imagenette, for 1-2% of latency).

The output defaults to NAME.onnx next to checkpoint NAME (runs/b/best -> runs/b/best.onnx); the int8 file
is FILE.int8.onnx beside FILE.onnx. Calibration images come from --calib-data DIR (searched recursively),
else from the training folder DATA/train, DATA being the dataset the run was trained on (its config.json)
or ${DATA_ENV}. Use training images, never the images you will report accuracy on.

Afterwards a parity check runs on {PARITY_IMAGES} of those images (random inputs if there are none): the
largest logit difference of the float graph from PyTorch, and how often the int8 graph's top-1 class is
the float graph's.

examples:
  attendnets export --checkpoint runs/b
  attendnets export --checkpoint runs/b/best --int8 --calib-data ~/imagenette2-224/train
  attendnets export --checkpoint runs/b --int8 --output deploy/b.onnx --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="checkpoint or run folder")
    parser.add_argument("--output", metavar="FILE.onnx", help="float ONNX file (default: NAME.onnx beside the checkpoint)")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    parser.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx, fully 8-bit")
    parser.add_argument("--calib-data", metavar="DIR", help="calibration and parity-check images (default: DATA/train of the run)")
    parser.add_argument("--int8-stem", action="store_true", help="with --int8: quantize the first conv and the image too")
    parser.add_argument("--calib-images", metavar="N", type=int, default=64, help="images to calibrate on (default 64)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads for the parity check (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def training_folder(checkpoint: str | os.PathLike) -> Path:
    """``DATA/train`` of the dataset a checkpoint was trained on: DATA from its sidecar or its run's
    ``config.json``, else ``$ATTENDNETS_DATA``."""
    data, source = read_meta(checkpoint).get("data"), "the checkpoint sidecar"
    config = checkpoint_paths(checkpoint)[0].parent / "config.json"
    if not data and config.is_file():
        try:
            data, source = json.loads(config.read_text()).get("data"), str(config)
        except (json.JSONDecodeError, AttributeError):
            raise AttendNetsError(f"{config} is not a training config; pass --calib-data DIR") from None
    if not data:
        data, source = os.environ.get(DATA_ENV), f"${DATA_ENV}"
    if not data:
        raise AttendNetsError(
            f"no calibration images: pass --calib-data DIR (training images) or set {DATA_ENV} to the dataset root"
        )
    train = Path(data).expanduser() / "train"
    if not train.is_dir():
        raise AttendNetsError(f"no training folder {train} (dataset from {source}); pass --calib-data DIR")
    return train


def _training_folder_or_none(checkpoint: str | os.PathLike) -> Path | None:
    try:
        return training_folder(checkpoint)
    except AttendNetsError:
        return None


def _parity_images(folder: Path | None, meta: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """Up to :data:`PARITY_IMAGES` preprocessed images of ``folder``, or seeded random inputs without one."""
    from attendnets.export import CalibrationImages

    if folder is None:
        generator = torch.Generator().manual_seed(0)
        size = meta["img_size"]
        return torch.randn(8, meta.get("in_chans", 3), size, size, generator=generator), "8 random inputs"
    reader = CalibrationImages(folder, meta, PARITY_IMAGES)
    images = torch.from_numpy(np.concatenate(reader.batches))
    return images, f"{len(images)} images of {folder}"


def run(args: argparse.Namespace) -> int:
    from attendnets.export import export_onnx, quantize_onnx

    if args.calib_images < 1:
        raise AttendNetsError(f"--calib-images must be at least 1, got {args.calib_images}")
    weights, _ = checkpoint_paths(args.checkpoint)
    output = Path(args.output) if args.output else weights.with_suffix(".onnx")
    if output.suffix != ".onnx":
        raise AttendNetsError(f"--output must be a .onnx file, got {output}")
    if args.calib_data:
        calib = Path(args.calib_data).expanduser()
    elif args.int8:
        calib = training_folder(args.checkpoint)
    else:
        calib = _training_folder_or_none(args.checkpoint)  # a float export needs no data
    model, meta = load_checkpoint(args.checkpoint)
    images, source = _parity_images(calib, meta)  # before writing anything: a folder without images fails here
    float_path = export_onnx(model, output, meta)
    int8_path = None
    if args.int8:
        int8_path = quantize_onnx(float_path, output.with_suffix(".int8.onnx"), calib, args.calib_images, not args.int8_stem)
    parity = export_parity(model, float_path, images, int8_path, args.threads)
    record = {
        "checkpoint": str(args.checkpoint),
        "model": describe(meta),
        "float": {"path": str(float_path), "kb": float_path.stat().st_size / 1024},
        "int8": {"path": str(int8_path), "kb": int8_path.stat().st_size / 1024, "calibration": str(calib),
                 "calibration_images": args.calib_images} if int8_path else None,
        "parity": {**parity, "inputs": source},
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{record['model']} from {args.checkpoint}")
    print(f"  float ONNX  {float_path}  {record['float']['kb']:.1f} KB")
    if int8_path:
        print(f"  int8 ONNX   {int8_path}  {record['int8']['kb']:.1f} KB  (calibrated on up to {args.calib_images} "
              f"images of {calib})")
    line = f"parity on {source}: float ONNX vs PyTorch max |logit diff| {parity['float_max_abs_diff']:.2e}"
    if int8_path:
        line += f"; int8 vs float top-1 agreement {parity['int8_top1_agreement']:.1f}%"
    print(line)
    return 0
