"""Trained AttendNets shipped inside the package: checkpoints trained on Imagenette's 10 classes.

Each is an 8-bit checkpoint (see :mod:`attendnets.checkpoint`: int8 weights with per-channel scales, about a
quarter of the float file) ``weights/<model>.imagenette.{safetensors,json}``, written by benchmarks/ship.py
from a run of the comparison recipe. Its sidecar's ``release`` entry says how it was trained (the command
and commit) and how it scores (val top-1 in float and at 8-bit weights); ``class_labels`` names the classes.

They are what ``timm.create_model(name, pretrained=True)`` loads (offline: the files are in the package) and
what ``attendnets predict IMAGE`` uses without a model argument. They know only Imagenette's 10 classes, and
Imagenette is a subset of ImageNet, whose images are for non-commercial research use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attendnets.errors import AttendNetsError

WEIGHTS_DIR = Path(__file__).parent / "weights"
TAG = "imagenette"  # what the shipped weights were trained on: timm's pretrained tag (attendnet_b.imagenette)
DEFAULT_MODEL = "attendnet_b"  # attendnets predict's model when none is given


def shipped() -> dict[str, Path]:
    """``{model name: checkpoint path}`` of every shipped checkpoint (the path without suffix)."""
    return {p.name.removesuffix(f".{TAG}.json"): p.with_name(p.name.removesuffix(".json"))
            for p in sorted(WEIGHTS_DIR.glob(f"*.{TAG}.json"))}


def shipped_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """The shipped checkpoint of model ``name``; a one-line error lists what is shipped otherwise."""
    models = shipped()
    if name not in models:
        have = ", ".join(models) or "none (this installation has no weights folder)"
        raise AttendNetsError(f"no trained weights are shipped for {name!r}; shipped: {have}")
    return models[name]


def class_labels(meta: dict[str, Any]) -> list[str]:
    """The classes of a checkpoint as a person reads them: ``tench (n01440764)`` where the sidecar names
    them (shipped checkpoints do), else the class folder names."""
    labels = meta.get("class_labels") or {}
    return [f"{labels[c]} ({c})" if c in labels else c for c in meta["class_names"]]


def release_cfg(weights: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The timm pretrained cfg entries of a shipped checkpoint (``weights``: its file; ``meta``: its sidecar)
    beyond its spec's and preprocessing's: the file, class names and labels, and a note of how it was trained
    and how it scores."""
    release = meta["release"]
    return {
        "file": str(weights),
        "label_names": tuple(meta["class_names"]),
        "label_descriptions": meta.get("class_labels"),
        "license": "apache-2.0",
        "description": "trained on Imagenette (10 ImageNet classes, non-commercial research use) at "
        f"{meta['img_size']} px with 8-bit weights",
        "notes": (f"val top-1 {release['top1']:.2f}% float, {release['int8_top1']:.2f}% at 8-bit weights",
                  f"trained with: {release['train_command']}", f"at commit {release['commit']}"),
    }
