"""Accuracy of a model on an image folder: top-1, top-5, per-class accuracy and the confusion matrix.

Counts are gathered in a :class:`Tally` (a confusion matrix plus top-5 hits and the summed loss), which
distributed training sums across processes; the figures are derived from it, so top-1, per-class accuracy
and the confusion matrix can never disagree.

Exported models (:func:`evaluate_exported`, in any runtime) go through the same image list, preprocessing
(read from the file's metadata) and Tally as checkpoints, so their figures compare one to one. With ``predictions=True``
the result also holds each image's top-1 class, and :func:`top1_agreement` says how often two models
(say the int8 and float exports) give the same answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from attendnets.checkpoint import load_checkpoint
from attendnets.data import ImageList, eval_transform, open_split, short_list
from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write, atomic_write_json
from attendnets.plots import plot_confusion


@dataclass
class Tally:
    """Running counts over labelled predictions. ``confusion[t, p]`` counts images of class ``t``
    predicted as ``p``."""

    confusion: torch.Tensor
    topk_hits: torch.Tensor
    loss_sum: torch.Tensor

    @classmethod
    def empty(cls, num_classes: int) -> Tally:
        return cls(
            torch.zeros(num_classes, num_classes, dtype=torch.int64),
            torch.zeros((), dtype=torch.int64),
            torch.zeros((), dtype=torch.float64),
        )

    @property
    def k(self) -> int:
        """The ``k`` of top-k: 5, or the class count when there are fewer classes."""
        return min(5, self.confusion.shape[0])

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.detach().float().cpu(), targets.cpu()
        n = self.confusion.shape[0]
        self.confusion += torch.bincount(targets * n + logits.argmax(1), minlength=n * n).view(n, n)
        self.topk_hits += (logits.topk(self.k, dim=1).indices == targets[:, None]).any(1).sum()
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()

    def all_reduce(self) -> None:
        """Sum the counts of every process (a no-op outside distributed runs)."""
        if dist.is_available() and dist.is_initialized():
            for t in (self.confusion, self.topk_hits, self.loss_sum):
                dist.all_reduce(t)

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    def summary(self, classes: list[str] | None = None) -> dict[str, Any]:
        """Percentages (top-1, top-k, per class), mean cross-entropy and the confusion matrix."""
        n = max(self.images, 1)
        per_class_total = self.confusion.sum(1).clamp(min=1)
        per_class = (100.0 * self.confusion.diag() / per_class_total).tolist()
        classes = classes or [str(i) for i in range(self.confusion.shape[0])]
        return {
            "images": self.images,
            "top1": 100.0 * float(self.confusion.diag().sum()) / n,
            "top5": 100.0 * float(self.topk_hits) / n,
            "top5_k": self.k,
            "loss": float(self.loss_sum) / n,
            "classes": classes,
            "per_class_top1": dict(zip(classes, per_class)),
            "confusion": self.confusion.tolist(),
        }


@torch.no_grad()
def evaluate_model(
    model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, channels_last: bool = True
) -> Tally:
    """Run ``model`` (in eval mode) over ``loader``; in distributed runs, the counts of all processes."""
    was_training = model.training
    model.eval()
    tally = Tally.empty(num_classes)
    for images, targets in loader:
        images = images.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        tally.update(model(images), targets)
    tally.all_reduce()
    model.train(was_training)
    return tally


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | None,
    split: str = "val",
    batch_size: int = 64,
    workers: int = 2,
    strict: bool = False,
    crop_pct: float | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``DATA/split``: the :meth:`Tally.summary` plus what was evaluated.
    ``crop_pct``: centre-crop this share of the resized image instead of the checkpoint's own."""
    model, meta = load_checkpoint(checkpoint)
    if crop_pct is not None:
        meta = {**meta, "crop_pct": crop_pct}
    return {"checkpoint": str(checkpoint), **evaluate_with_meta(model, meta, data, split, batch_size, workers, strict)}


def evaluate_with_meta(
    model: nn.Module,
    meta: dict[str, Any],
    data: str | os.PathLike | None,
    split: str = "val",
    batch_size: int = 64,
    workers: int = 2,
    strict: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``DATA/split`` as the checkpoint sidecar ``meta`` says (its classes and
    preprocessing): the :meth:`Tally.summary` plus what was evaluated."""
    classes, samples = open_split(data, split, strict)
    if classes != meta["class_names"]:
        raise AttendNetsError(
            f"the {len(classes)} classes of {split}/ are not the {len(meta['class_names'])} the checkpoint was "
            f"trained on: {class_difference(classes, meta['class_names'], f'{split}/', 'the checkpoint')}"
        )
    loader = _eval_loader(samples, classes, meta, batch_size, workers)
    model = model.to(memory_format=torch.channels_last)
    tally = evaluate_model(model, loader, len(classes), torch.device("cpu"))
    return {
        "split": split,
        "model": meta.get("model") or meta["spec"]["name"],
        "epoch": meta.get("epoch"),
        "weights": meta.get("weights"),
        "img_size": meta["img_size"],
        "crop_pct": meta["crop_pct"],
        **tally.summary(classes),
    }


def class_difference(data: list[str], trained: list[str], data_name: str, model_name: str) -> str:
    """The classes that differ between ``data`` and the ones a model was ``trained`` on, named (up to five of
    each): ``only in val/: a, b; only in the checkpoint: c``."""
    only_data = sorted(set(data) - set(trained))
    only_model = sorted(set(trained) - set(data))
    sides = ((data_name, only_data), (model_name, only_model))
    parts = [f"only in {name}: {short_list(names)}" for name, names in sides if names]
    return "; ".join(parts) or f"the same names in another order ({short_list(data)} in {data_name})"


def _eval_loader(
    samples: list[tuple[str, int]], classes: list[str], meta: dict[str, Any], batch_size: int, workers: int
) -> DataLoader:
    return DataLoader(
        ImageList(samples, classes, eval_transform(meta)),
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
    )


def evaluate_exported(
    runner: Any,
    data: str | os.PathLike | None,
    split: str = "val",
    batch_size: int = 64,
    workers: int = 2,
    strict: bool = False,
    predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate an exported model (an :class:`attendnets.export.Runner`: ONNX, TFLite or ExecuTorch in its
    runtime) on ``DATA/split``: the same figures as :func:`evaluate_checkpoint`, with ``file`` and
    ``weights``, the runtime and precision (``ort``, ``ort-int8``, ``litert-int8``, ``tflm-int8``, ...).

    ``predictions``: also return ``files`` (the images, in order), ``predictions`` (each one's top-1 class
    index) and ``margins`` (each one's top-1 minus top-2 softmax probability: how close the call was)."""
    classes, samples = open_split(data, split, strict)
    try:
        runner.check_classes(classes)
    except AttendNetsError as err:
        raise AttendNetsError(f"{split}/: {err}") from None
    loader = _eval_loader(samples, classes, runner.meta, batch_size, workers)
    tally = Tally.empty(len(classes))
    top1: list[int] = []
    margins: list[float] = []
    for images, targets in loader:
        logits = torch.from_numpy(runner(images))
        tally.update(logits, targets)
        top1 += logits.argmax(1).tolist()
        best_two = logits.softmax(1).topk(min(2, logits.shape[1]), dim=1).values
        margins += (best_two[:, 0] - best_two[:, -1]).tolist()
    result = {
        "file": str(runner.path),
        "split": split,
        "model": runner.meta.get("model", runner.path.stem),
        "weights": runner.label,
        "img_size": runner.meta["img_size"],
        **tally.summary(classes),
    }
    if predictions:
        result.update(files=[p for p, _ in samples], predictions=top1, margins=margins)
    return result


def top1_agreement(a: list[int], b: list[int]) -> float:
    """Percentage of images on which two models' top-1 classes (``predictions`` of two results over the same
    images) are the same."""
    if len(a) != len(b):
        raise AttendNetsError(f"cannot compare predictions on {len(a)} and {len(b)} images: not the same images")
    return 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


MARGIN_THRESHOLDS = (0.02, 0.05, 0.1, 0.2)


def agreement_by_margin(
    predictions: list[int], reference: list[int], reference_margins: list[float]
) -> list[dict[str, float]]:
    """Top-1 agreement of ``predictions`` with ``reference`` among the images the reference called by at
    least each of :data:`MARGIN_THRESHOLDS` (top-1 minus top-2 probability), with the share of images each
    threshold keeps: where disagreements sit (near-ties, or confident calls)."""
    rows = []
    for threshold in MARGIN_THRESHOLDS:
        kept = [i for i, margin in enumerate(reference_margins) if margin >= threshold]
        rows.append({
            "min_margin": threshold,
            "images_share": 100.0 * len(kept) / max(len(reference_margins), 1),
            "top1_agreement": top1_agreement([predictions[i] for i in kept], [reference[i] for i in kept]),
        })
    return rows


def save_report(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``eval.json`` (everything) and ``confusion.png``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "eval.json", out_dir / "confusion.png"
    atomic_write_json(json_path, result)
    atomic_write(png_path, lambda tmp: plot_confusion(result, tmp))
    return [json_path, png_path]
