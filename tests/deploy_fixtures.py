"""Helpers for the tiny trained checkpoint of the export, ONNX evaluation and prediction tests; the fixture
that trains it, ``trained``, is in ``tests/conftest.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attendnets.data import eval_transform, load_rgb

PREPROCESSING = dict(img_size=16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], interpolation="bicubic", crop_pct=0.9)


@dataclass
class Trained:
    """``data``: 5 synthetic classes at 16 px (16 train, 8 val images each); ``checkpoint``: the tiny model
    fitted to them, saved as ``run/best`` without a recorded dataset; ``model``: that model."""

    data: Path
    classes: list[str]
    checkpoint: Path
    model: nn.Module


def load_images(folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every PNG under ``folder``, preprocessed, with its class index."""
    transform = eval_transform(PREPROCESSING)
    paths = sorted(folder.rglob("*.png"))
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    return images, torch.tensor([classes.index(p.parent.name) for p in paths])

