"""Top classes of single images, from a checkpoint (PyTorch) or an exported file in its runtime (ONNX, TFLite,
ExecuTorch).

Either way the images are preprocessed as the model's own metadata says (the checkpoint sidecar, or the
metadata stored with the exported file), so a model is always fed as it was validated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from attendnets.checkpoint import load_checkpoint
from attendnets.data import eval_transform, load_rgb
from attendnets.errors import AttendNetsError
from attendnets.export import load_runner


@dataclass
class Classifier:
    """A model with what it needs to answer: ``meta`` (class names and preprocessing) and ``logits``,
    preprocessed images ``(N, C, H, W)`` to logits ``(N, classes)``."""

    meta: dict[str, Any]
    logits: Callable[[torch.Tensor], torch.Tensor]
    source: str

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]


def load_classifier(
    checkpoint: str | os.PathLike | None = None,
    file: str | os.PathLike | None = None,
    threads: int | None = None,
    runtime: str | None = None,
) -> Classifier:
    """The classifier of a checkpoint or of a file written by ``attendnets export`` (exactly one of the two).
    ``threads``/``runtime``: the exported file's runtime threads and, for ``.tflite``, ``litert`` or ``tflm``
    (see :func:`attendnets.export.load_runner`)."""
    if (checkpoint is None) == (file is None):
        raise AttendNetsError("give exactly one model: a checkpoint or an exported file")
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint)

        @torch.no_grad()
        def forward(images: torch.Tensor) -> torch.Tensor:
            return model(images)

        return Classifier(meta, forward, str(checkpoint))
    runner = load_runner(file, runtime, threads)
    return Classifier(runner.meta, lambda images: torch.from_numpy(runner(images)), str(file))


def iter_predictions(
    classifier: Classifier, paths: list[str | os.PathLike], top: int = 5, batch_size: int = 32
) -> Iterator[dict[str, Any]]:
    """One record per image, in the order of ``paths``: ``{"image": path, "top": [{"class": name,
    "probability": p}, ...]}`` (the ``top`` classes by softmax probability, most probable first), or
    ``{"image": path, "problem": "cannot read image ...: reason"}`` for an image that cannot be read.

    Images are read and classified ``batch_size`` at a time, so memory does not grow with their number and the
    first records come at once."""
    if top < 1:
        raise AttendNetsError(f"--top must be at least 1, got {top}")
    transform = eval_transform(classifier.meta)
    k = min(top, len(classifier.class_names))
    for start in range(0, len(paths), batch_size):
        records: list[dict[str, Any]] = []
        tensors, readable = [], []
        for path in paths[start : start + batch_size]:
            records.append({"image": str(path)})
            try:
                tensors.append(transform(load_rgb(path)))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                records[-1]["problem"] = f"cannot read image {path}: {err}"
                continue
            readable.append(records[-1])
        if tensors:
            probs = classifier.logits(torch.stack(tensors)).double().softmax(1)
            values, indices = probs.topk(k, dim=1)
            for record, p, i in zip(readable, values.tolist(), indices.tolist()):
                record["top"] = [{"class": classifier.class_names[c], "probability": v} for v, c in zip(p, i)]
        yield from records
