"""What every exported file carries besides its weights, and what every runner of one offers.

An exported model is usable on its own: its class names and the preprocessing it was validated with
(:data:`META_KEYS`) travel inside the file (ONNX ``metadata_props``, TFLite metadata) or beside it (an
ExecuTorch side file). :class:`Runner` is the one interface ``eval``, ``predict`` and ``bench`` use for
every format: ``runner(images (N, C, H, W) float32) -> logits (N, classes)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.evaluate import class_difference

PREPROCESSING_KEYS = ("img_size", "mean", "std", "interpolation", "crop_pct")
META_KEYS = ("class_names", *PREPROCESSING_KEYS)


def require(module: str, extra: str) -> None:
    """Refuse, in one line naming the extra to install, to use a runtime whose package is missing."""
    try:
        __import__(module)
    except ImportError:
        raise AttendNetsError(f"{module} is not installed: pip install 'attendnets[{extra}]'") from None


def deploy_meta(model: nn.Module, meta: dict[str, Any], file_format: str) -> dict[str, Any]:
    """The metadata an exported file stores: ``format``, the attendnets version, :data:`META_KEYS` and the
    model's name. Refuses (one line) a ``meta`` that lacks a key or whose class names do not fit the model."""
    from attendnets import __version__

    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise AttendNetsError(f"cannot export without {', '.join(missing)}: export from a checkpoint sidecar")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != len(meta["class_names"]):
        raise AttendNetsError(f"the model has {num_classes} classes but {len(meta['class_names'])} class names")
    out = {"format": file_format, "attendnets_version": __version__, **{k: meta[k] for k in META_KEYS}}
    name = meta.get("model") or (meta.get("spec") or {}).get("name")
    if name:
        out["model"] = name
    return out


class Runner:
    """An exported model in its runtime. Subclasses set ``path``, ``meta``, ``num_classes``, ``runtime`` (the
    name ``attendnets bench`` uses) and ``int8``, and implement ``__call__(images (N, C, H, W) float32, numpy
    or torch) -> logits (N, classes) numpy``."""

    path: Path
    meta: dict[str, Any]
    num_classes: int
    runtime: str
    int8: bool

    @property
    def label(self) -> str:
        """Runtime and precision, as ``attendnets bench`` names them: ``ort``, ``litert-int8``, ..."""
        return f"{self.runtime}-int8" if self.int8 else self.runtime

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def check_classes(self, class_names: list[str]) -> None:
        """Refuse data whose classes are not the ones the model was exported with."""
        if len(class_names) == self.num_classes and list(class_names) == self.class_names:
            return
        difference = class_difference(list(class_names), self.class_names, "the data", self.path.name)
        if len(class_names) != self.num_classes:
            raise AttendNetsError(
                f"{self.path.name} predicts {self.num_classes} classes, the data has {len(class_names)}: {difference}"
            )
        raise AttendNetsError(f"the data's classes are not the ones {self.path.name} was trained on: {difference}")

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        raise NotImplementedError


def as_numpy(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """A contiguous float32 numpy batch."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


def file_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, refused in one line when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise AttendNetsError(f"no such file {path}")
    return path
