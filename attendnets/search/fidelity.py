"""Cheap, honest accuracy for a design search: every design trains from scratch on the same small,
pre-resized subset of the dataset's ``train/`` and is scored on a hold-out split of it after 8-bit weight
quantization. The dataset's ``val/`` is never read, so it stays untouched for the final report.

Once per study :func:`prepare_data` picks, per class and fixed by a seed, ``holdout_per_class`` hold-out
images and ``images_per_class`` training images from ``train/``, and writes them resized (short side
:data:`RESIZE_MARGIN` x the search image size, JPEG) as an image folder (``train/`` = the subset,
``val/`` = the hold-out) with a ``manifest.json`` naming every source file. Decoding such small files
costs far less than a training step, so they are read from disk (the OS keeps them cached) rather than
held in the data loader.

:func:`train_and_evaluate` trains one design with :func:`attendnets.training.train` on it: the search image
size, a complete cosine schedule of the rung's epochs without warm-up, no EMA, the same seed (so the same
initialisation stream and data order) for every design, no loader processes. Rung ``r`` trains
``epochs * eta**r`` epochs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from attendnets.data import (
    DATA_ENV,
    ImageList,
    eval_transform,
    image_files,
    list_classes,
    make_synthetic_dataset,
    resolve_data_dir,
    scan_split,
    to_rgb,
)
from attendnets.errors import AttendNetsError
from attendnets.evaluate import evaluate_model
from attendnets.files import atomic_write_text
from attendnets.quantize import quantize_weights
from attendnets.search.settings import Fidelity
from attendnets.spec import ArchSpec
from attendnets.training import TrainConfig, TrainingDiverged, train

RESIZE_MARGIN = 1.15  # cached short side / search image size: room for the random-resized crop
MANIFEST = "manifest.json"
JPEG_QUALITY = 95
KEPT_FILES = ("spec.json", "config.json", "metrics.jsonl", "curves.png")  # the rest of a trial's run is deleted


@dataclass(frozen=True)
class FidelityData:
    """The cached subset: an image folder whose ``val/`` is the hold-out split of the source's ``train/``."""

    root: Path
    classes: list[str]
    train_images: int
    holdout_images: int


@dataclass(frozen=True)
class TrialRun:
    """What one trial trains: its rung, epochs, output folder and the data."""

    rung: int
    epochs: int
    folder: Path
    data: FidelityData
    fidelity: Fidelity


@dataclass(frozen=True)
class Evaluation:
    """A trained design's scores on the hold-out split, in percent."""

    top1: float  # after 8-bit weight quantization: the objective
    float_top1: float
    seconds: float
    note: str = ""  # why the scores are 0 (training diverged)


SYNTHETIC_CLASSES = 8  # generated data when no dataset is given: all the generator's classes
SYNTHETIC_SIZE = 64


def source_data(folder: Path, data: str | os.PathLike | None, synthetic: bool, fidelity: Fidelity) -> Path:
    """The dataset a study or pilot draws from: ``data`` (else ``$ATTENDNETS_DATA``), or, with ``synthetic``
    or neither, a generated one made once in ``folder/synthetic-data`` with enough images per class."""
    if synthetic or not (data or os.environ.get(DATA_ENV)):
        root = folder / "synthetic-data"
        if not (root / "train").is_dir():
            make_synthetic_dataset(root, classes=SYNTHETIC_CLASSES, size=SYNTHETIC_SIZE, val_per_class=1,
                                   per_class=fidelity.images_per_class + fidelity.holdout_per_class, seed=fidelity.seed)
        return root
    return resolve_data_dir(data)


def prepare_data(source: Path, dest: Path, fidelity: Fidelity) -> FidelityData:
    """Build (or reuse, when its manifest matches) the cached subset of ``source/train`` in ``dest``."""
    settings = {"source": str(source.resolve()), **{k: getattr(fidelity, k) for k in
                ("img_size", "images_per_class", "holdout_per_class", "seed")}}
    manifest_path = dest / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest["settings"][k] for k in settings if k != "source"} == {k: v for k, v in settings.items() if k != "source"}:
            data = _data(dest, manifest)
            check_batch_size(fidelity, data.train_images, len(data.classes))
            return data
    classes = list_classes(source / "train")
    picks = {name: _split(source / "train" / name, fidelity) for name in classes}
    check_batch_size(fidelity, sum(len(t) for _, t in picks.values()), len(classes))
    short = round(fidelity.img_size * RESIZE_MARGIN)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    total = sum(len(h) + len(t) for h, t in picks.values())
    skipped: list[str] = []
    # a bar on a terminal only (disable=None), so a redirected log gets no carriage-return lines
    with tqdm(total=total, desc="caching search data", unit="img", leave=False, dynamic_ncols=True,
              disable=None) as bar:
        for name, (holdout, train_files) in picks.items():
            for split, files in (("val", holdout), ("train", train_files)):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i, path in enumerate(files):
                    try:
                        _resized(path, short).save(folder / f"{i:05d}.jpg", quality=JPEG_QUALITY)
                    except (OSError, ValueError, Image.DecompressionBombError):
                        skipped.append(str(path))
                    bar.update()
    manifest = {
        "settings": settings,
        "short_side": short,
        "classes": classes,
        "files": {name: {"holdout": [str(p) for p in h], "train": [str(p) for p in t]} for name, (h, t) in picks.items()},
        "skipped_unreadable": skipped,
    }
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    if dest.exists():
        dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:  # another worker on this machine put its identical copy in place first
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return _data(dest, json.loads((dest / MANIFEST).read_text()))


def check_batch_size(fidelity: Fidelity, train_images: int, classes: int) -> None:
    """Refuse a batch larger than the subset the designs train on: training drops a last partial batch, so
    every training would fail for want of a single step."""
    if fidelity.batch_size > train_images:
        raise AttendNetsError(
            f"--batch-size {fidelity.batch_size} is more than the {train_images} images the search trains on "
            f"(at most --images-per-class {fidelity.images_per_class} from each of {classes} classes); "
            f"the largest allowed is {train_images}"
        )


def _split(folder: Path, fidelity: Fidelity) -> tuple[list[Path], list[Path]]:
    files = image_files(folder)
    if len(files) <= fidelity.holdout_per_class:
        raise AttendNetsError(
            f"{folder} has {len(files)} images, not more than --holdout-per-class {fidelity.holdout_per_class}; "
            "lower it or add images"
        )
    random.Random(f"{fidelity.seed}-{folder.name}").shuffle(files)
    holdout = files[: fidelity.holdout_per_class]
    return holdout, files[fidelity.holdout_per_class : fidelity.holdout_per_class + fidelity.images_per_class]


def _resized(path: Path, short: int) -> Image.Image:
    """The image as RGB with its short side ``short`` pixels (JPEGs decoded at reduced scale first)."""
    with Image.open(path) as img:
        img.draft("RGB", (short, short))
        rgb = to_rgb(img)
    scale = short / min(rgb.size)
    return rgb.resize((max(short, round(rgb.width * scale)), max(short, round(rgb.height * scale))),
                      Image.Resampling.BICUBIC)


def _data(root: Path, manifest: dict[str, Any]) -> FidelityData:
    files = manifest["files"].values()
    return FidelityData(root, manifest["classes"], sum(len(f["train"]) for f in files),
                        sum(len(f["holdout"]) for f in files))


def train_and_evaluate(spec: ArchSpec, run: TrialRun) -> Evaluation:
    """Train ``spec`` from scratch at the run's fidelity in ``run.folder`` and score it on the hold-out
    split with 8-bit weights (and in float). A diverged training scores 0 with a note."""
    start = time.perf_counter()
    shutil.rmtree(run.folder, ignore_errors=True)  # a retried trial starts over
    run.folder.mkdir(parents=True)
    spec.save(run.folder / "spec.json")
    fid = run.fidelity
    config = TrainConfig(
        model=str(run.folder / "spec.json"), output=str(run.folder), data=str(run.data.root), img_size=fid.img_size,
        epochs=run.epochs, batch_size=fid.batch_size, lr=fid.lr, warmup_epochs=0, ema=False, workers=0, seed=fid.seed,
        crop_scale=fid.crop_scale,
    )
    try:
        result = train(config)
    except TrainingDiverged as err:
        return Evaluation(0.0, 0.0, time.perf_counter() - start, f"training diverged: {err}")
    finally:
        for path in run.folder.iterdir():
            if path.name not in KEPT_FILES:
                path.unlink()
    quantized, _ = quantize_weights(result.model)
    holdout = ImageList(scan_split(run.data.root / "val", run.data.classes), run.data.classes, eval_transform(
        {"img_size": fid.img_size, "interpolation": config.interpolation, "mean": config.mean, "std": config.std,
         "crop_pct": config.crop_pct}))
    loader = DataLoader(holdout, batch_size=fid.batch_size)
    top1 = evaluate_model(quantized, loader, len(run.data.classes), result.model.classifier.weight.device).summary()["top1"]
    return Evaluation(top1, result.history[-1]["val_top1"], time.perf_counter() - start)
