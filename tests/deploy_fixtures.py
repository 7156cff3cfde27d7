"""A tiny trained checkpoint and its data for the export, ONNX evaluation and prediction tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.data import load_rgb, make_synthetic_dataset
from attendnets.evaluate import eval_transform
from attendnets.model import build_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC

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


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """The tiny model fitted for a few seconds (a random model's logits hinge on tiny feature differences that
    any 8-bit rounding reorders: only a trained model has inputs that are easy for it)."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("images"), classes=5, per_class=16, size=16, val_per_class=8)
    classes = sorted(p.name for p in (root / "train").iterdir())
    images, targets = load_images(root / "train", classes)
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict(TINY_SPEC))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only spin against other work
    try:
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), targets).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    checkpoint = root.parent / "run" / "best"
    meta = {**model_meta(model, "tiny.json"), "class_names": classes, **PREPROCESSING, "epoch": 150, "weights": "raw"}
    save_checkpoint(checkpoint, model, meta)
    return Trained(root, classes, checkpoint, model)
