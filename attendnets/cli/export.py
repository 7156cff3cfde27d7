"""``attendnets export``: a checkpoint as a model file for a runtime (ONNX, TFLite, ExecuTorch), float and,
with --int8, fully 8-bit."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attendnets.cli.options import POSITIVE
from attendnets.env import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.files import check_writable

if TYPE_CHECKING:
    import torch

PARITY_IMAGES = 32
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}

HELP = "export a checkpoint for ONNX Runtime, LiteRT, TFLite Micro or ExecuTorch (float, and all-integer int8)"
DESCRIPTION = f"""\
Write the model of a checkpoint as a file that its runtime runs on its own, carrying its class names and
preprocessing, with every block written the way that runtime is fast at (the same math):

  --format onnx        NAME.onnx for ONNX Runtime (dynamic batch axis, checked with the ONNX checker)
  --format tflite      NAME.tflite for LiteRT with XNNPACK (phones), channels-last input; --micro also
                       writes NAME.micro.tflite for TFLite Micro (microcontrollers: buffers inline)
  --format executorch  NAME.pte for ExecuTorch lowered to XNNPACK, with a side file NAME.pte.json

With --int8, also NAME.int8.EXT: all-integer 8 bits, weights int8 per output channel, activations 8-bit per
tensor with ranges calibrated on --calib-images real training images (ONNX Runtime static QDQ with uint8
activations; ai-edge-quantizer for TFLite; XNNPACK's PT2E quantizer for ExecuTorch). --float-stem keeps
the ONNX graph's image-reading conv in float (closer to float, but ONNX Runtime then moves activations
between layouts). ONNX int8 weights are 7-bit on x86 CPUs with AVX2 but no VNNI, where ONNX Runtime's
uint8 x int8 sums saturate (--weight-bits 8 to export for another CPU). The optional runtimes install with
pip install 'attendnets[litert]', '[micro]' and '[executorch]'.

The output defaults to NAME.EXT next to checkpoint NAME (runs/b/best -> runs/b/best.onnx). Calibration
images come from --calib-data DIR (searched recursively), else from the training folder DATA/train, DATA
being the dataset the run was trained on (its config.json) or ${DATA_ENV}. Use training images, never the
images you will report accuracy on.

Afterwards a parity check runs on {PARITY_IMAGES} of those images (random inputs if there are none), each
file in its runtime: the largest logit difference of the float file from PyTorch, and how often each 8-bit
file's top-1 class is the float file's. With --micro, the TFLite Micro arena the model really used is
reported beside the profiler's estimate of it (attendnets profile: TFLite Micro arena).

examples:
  attendnets export --checkpoint runs/b
  attendnets export --checkpoint runs/b/best --int8 --calib-data ~/imagenette2-224/train
  attendnets export --checkpoint runs/b --format tflite --int8 --micro
  attendnets export --checkpoint runs/b --format executorch --int8 --output deploy/b.pte --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="checkpoint or run folder")
    parser.add_argument("--format", choices=list(SUFFIXES), default="onnx", help="file format (default onnx)")
    parser.add_argument("--output", metavar="FILE", help="float model file (default: NAME.EXT beside the checkpoint)")
    parser.add_argument("--int8", action="store_true", help="also write FILE.int8.EXT, all-integer 8 bits")
    parser.add_argument("--micro", action="store_true", help="with --format tflite --int8: also FILE.micro.tflite for TFLite Micro")
    parser.add_argument("--float-stem", action="store_true", help="with --format onnx --int8: keep the image-reading conv float")
    parser.add_argument("--weight-bits", type=int, choices=(7, 8),
                        help="with --format onnx --int8: 8, or 7 for x86 CPUs with AVX2 but no VNNI, where ONNX "
                             "Runtime's int8 sums saturate (default: 7 on such a CPU, else 8; 8 to deploy elsewhere)")
    parser.add_argument("--attention-outputs", action="store_true",
                        help="with --format onnx: also output each condenser's attention values (attention_block<i>)")
    parser.add_argument("--calib-data", metavar="DIR", help="calibration and parity-check images (default: DATA/train of the run)")
    parser.add_argument("--calib-images", metavar="N", type=POSITIVE, default=64, help="images to calibrate on (default 64)")
    parser.add_argument("--threads", type=POSITIVE, help="runtime threads for the parity check (default: the runtime's own)")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def training_folder(checkpoint: str | os.PathLike) -> Path:
    """``DATA/train`` of the dataset a checkpoint was trained on: DATA from its sidecar or its run's
    ``config.json``, else ``$ATTENDNETS_DATA``."""
    from attendnets.checkpoint import checkpoint_paths, read_meta

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


def _images(folder: Path | None, meta: dict[str, Any], count: int) -> tuple[torch.Tensor, str]:
    """Up to ``count`` preprocessed images of ``folder``, or 8 seeded random inputs without one."""
    import numpy as np
    import torch

    from attendnets.export import CalibrationImages

    if folder is None:
        generator = torch.Generator().manual_seed(0)
        size = meta["img_size"]
        return torch.randn(8, meta.get("in_chans", 3), size, size, generator=generator), "8 random inputs"
    reader = CalibrationImages(folder, meta, count)
    images = torch.from_numpy(np.concatenate(reader.batches))
    return images, f"{len(images)} images of {folder}"


def _check_options(args: argparse.Namespace) -> None:
    if args.micro and (args.format != "tflite" or not args.int8):
        raise AttendNetsError("--micro needs --format tflite --int8 (TFLite Micro runs all-integer models)")
    if args.float_stem and (args.format != "onnx" or not args.int8):
        raise AttendNetsError("--float-stem applies to --format onnx --int8 only")
    if args.weight_bits and (args.format != "onnx" or not args.int8):
        raise AttendNetsError("--weight-bits applies to --format onnx --int8 only")
    if args.attention_outputs and args.format != "onnx":
        raise AttendNetsError("--attention-outputs applies to --format onnx only")


def _write(args: argparse.Namespace, model: torch.nn.Module, meta: dict[str, Any], output: Path,
           calib: Path | None) -> dict[str, Path]:
    """Write the requested files: ``{"float": path, "int8": path, "micro": path}`` (those asked for)."""
    from attendnets.export import export_executorch, export_onnx, export_tflite, quantize_onnx

    suffix = SUFFIXES[args.format]
    int8_path = output.with_suffix(f".int8{suffix}")
    calibration = _images(calib, meta, args.calib_images)[0] if args.int8 and args.format != "onnx" else None
    if args.format == "onnx":
        paths = {"float": export_onnx(model, output, meta, args.attention_outputs)}
        if args.int8:
            paths["int8"] = quantize_onnx(paths["float"], int8_path, calib, args.calib_images, args.float_stem,
                                          args.weight_bits)
    elif args.format == "tflite":
        paths = {"float": export_tflite(model, output, meta)}
        if args.int8:
            paths["int8"] = export_tflite(model, int8_path, meta, int8=True, calibration=calibration)
        if args.micro:
            micro_path = output.with_suffix(".micro.tflite")
            paths["micro"] = export_tflite(model, micro_path, meta, int8=True, calibration=calibration, micro=True)
    else:
        paths = {"float": export_executorch(model, output, meta)}
        if args.int8:
            paths["int8"] = export_executorch(model, int8_path, meta, int8=True, calibration=calibration)
    return paths


def run(args: argparse.Namespace) -> int:
    from attendnets.checkpoint import checkpoint_paths, describe, load_checkpoint
    from attendnets.export import MicroRunner, export_parity, load_runner, profile_for_micro

    _check_options(args)
    weights, _ = checkpoint_paths(args.checkpoint)
    suffix = SUFFIXES[args.format]
    output = Path(args.output) if args.output else weights.with_suffix(suffix)
    if output.suffix != suffix:
        raise AttendNetsError(f"--output must be a {suffix} file for --format {args.format}, got {output}")
    check_writable(output, "--output", is_file=True)
    if args.calib_data:
        calib = Path(args.calib_data).expanduser()
    elif args.int8:
        calib = training_folder(args.checkpoint)
    else:
        calib = _training_folder_or_none(args.checkpoint)  # a float export needs no data
    model, meta = load_checkpoint(args.checkpoint)
    images, source = _images(calib, meta, PARITY_IMAGES)  # before writing anything: a folder without images fails here
    paths = _write(args, model, meta, output, calib)
    runners = {label: load_runner(path, threads=args.threads) for label, path in paths.items()}
    if "micro" in paths:
        runners["micro_litert"] = runners["micro"]
        runners["micro"] = MicroRunner(paths["micro"])
    parity = export_parity(model, runners.pop("float"), images, runners)
    record: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "model": describe(meta),
        "format": args.format,
        "files": {label: {"path": str(path), "kb": path.stat().st_size / 1024} for label, path in paths.items()},
        "calibration": {"folder": str(calib), "images": args.calib_images} if args.int8 else None,
        "parity": {**parity, "inputs": source},
    }
    if "micro" in paths:
        estimate = profile_for_micro(model, meta["img_size"])
        micro = runners["micro"]
        record["micro"] = {"arena_bytes": micro.arena_bytes, "arena_planned_bytes": micro.arena_planned_bytes,
                           "arena_persistent_bytes": micro.arena_persistent_bytes,
                           "profiler_arena_bytes": estimate.micro_arena_bytes,
                           "profiler_arena_planned_bytes": estimate.micro_arena_planned_bytes,
                           "profiler_arena_persistent_bytes": estimate.micro_arena_persistent_bytes}
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    _print(record, args)
    return 0


def _print(record: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"{record['model']} from {args.checkpoint}")
    for label, file in record["files"].items():
        print(f"  {label:<6} {file['path']}  {file['kb']:.1f} KB")
    if record["calibration"]:
        print(f"  8-bit ranges calibrated on up to {args.calib_images} images of {record['calibration']['folder']}")
    parity = record["parity"]
    line = f"parity on {parity['inputs']}: float vs PyTorch max |logit diff| {parity['float_max_abs_diff']:.2e}"
    for label in ("int8", "micro", "micro_litert"):
        if f"{label}_top1_agreement" in parity:
            line += f"; {label.replace('_', ' in ')} vs float top-1 agreement {parity[f'{label}_top1_agreement']:.1f}%"
    print(line)
    if "micro" in record:
        micro = record["micro"]
        print(f"TFLite Micro arena used {micro['arena_bytes'] / 1024:.1f} KB ({micro['arena_planned_bytes'] / 1024:.1f} "
              f"planned tensors + {micro['arena_persistent_bytes'] / 1024:.1f} bookkeeping); the profiler's estimate "
              f"{micro['profiler_arena_bytes'] / 1024:.1f} KB ({micro['profiler_arena_planned_bytes'] / 1024:.1f} + "
              f"{micro['profiler_arena_persistent_bytes'] / 1024:.1f})")
