"""Deployment: a model in the form a runtime is fast at, written as a file that runtime runs on its own.

- :mod:`~attendnets.export.forms`: the walker that puts every block in its deployment form for a target;
- :mod:`~attendnets.export.onnx`: ONNX (float and int8 QDQ) for ONNX Runtime;
- :mod:`~attendnets.export.ort`: ONNX Runtime sessions, the ``.onnx`` metadata and its runner;
- :mod:`~attendnets.export.litert`: TFLite (float and all-integer int8) for LiteRT and TFLite Micro;
- :mod:`~attendnets.export.executorch`: ExecuTorch programs (float and int8) lowered to XNNPACK;
- :mod:`~attendnets.export.meta`: what every file carries and the :class:`Runner` interface.

:func:`load_runner` opens any of them by its suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.evaluate import top1_agreement
from attendnets.export.executorch import ExecuTorchRunner, export_executorch
from attendnets.export.forms import RepeatedDepthwise, Target, for_runtime, profile_for_micro
from attendnets.export.litert import LiteRTRunner, MicroRunner, export_tflite
from attendnets.export.meta import Runner
from attendnets.export.onnx import CalibrationImages, export_checkpoint, export_onnx, quantize_onnx
from attendnets.export.ort import OnnxRunner, ort_session, read_onnx_meta

# Runtimes a model file can run in, by file suffix (the first is the default).
RUNTIMES_BY_SUFFIX = {".onnx": ("ort",), ".tflite": ("litert", "tflm"), ".pte": ("executorch",)}


def load_runner(
    path: str | os.PathLike, runtime: str | None = None, threads: int | None = None,
    class_names: list[str] | None = None,
) -> Runner:
    """The exported model ``path`` in its runtime: ONNX Runtime for ``.onnx``, LiteRT (or TFLite Micro with
    ``runtime="tflm"``) for ``.tflite``, ExecuTorch for ``.pte``. ``threads``: the runtime's threads
    (TFLite Micro has one; ``None``: the runtime's default). ``class_names``: refuse a model trained on other
    classes."""
    if threads is not None and threads < 1:  # ONNX Runtime would take 0 as "one per core"
        raise AttendNetsError(f"threads must be at least 1, got {threads}")
    path = Path(path)
    runtimes = RUNTIMES_BY_SUFFIX.get(path.suffix)
    if runtimes is None:
        raise AttendNetsError(f"{path}: not a model file attendnets exports (.onnx, .tflite or .pte)")
    runtime = runtime or runtimes[0]
    if runtime not in runtimes:
        raise AttendNetsError(f"{path.name} runs in {' or '.join(runtimes)}, not {runtime}")
    if not path.is_file():
        raise AttendNetsError(f"no model file {path}")
    if runtime == "ort":
        return OnnxRunner(path, class_names, threads)
    if runtime == "executorch":
        return ExecuTorchRunner(path, class_names, threads)
    return MicroRunner(path, class_names) if runtime == "tflm" else LiteRTRunner(path, class_names, threads)


@torch.no_grad()
def export_parity(
    model: nn.Module, float_runner: Runner, images: torch.Tensor, int8_runners: dict[str, Runner] | None = None
) -> dict[str, Any]:
    """How closely exported files follow their PyTorch model on ``images`` (preprocessed, ``N, C, H, W``): the
    float file's largest absolute logit difference, and for each int8 runner (by label) the percentage of images
    on which its top-1 class is the float file's."""
    reference = model.eval()(images).numpy()
    logits = float_runner(images)
    parity: dict[str, Any] = {"images": len(images), "float_max_abs_diff": float(np.abs(logits - reference).max())}
    for label, runner in (int8_runners or {}).items():
        agreement = top1_agreement(runner(images).argmax(1).tolist(), logits.argmax(1).tolist())
        parity[f"{label}_top1_agreement"] = agreement
    return parity


__all__ = [
    "CalibrationImages", "ExecuTorchRunner", "LiteRTRunner", "MicroRunner", "OnnxRunner", "RUNTIMES_BY_SUFFIX",
    "RepeatedDepthwise", "Runner", "Target", "export_checkpoint", "export_executorch", "export_onnx",
    "export_parity", "export_tflite", "for_runtime", "load_runner", "ort_session", "profile_for_micro", "quantize_onnx",
    "read_onnx_meta",
]
