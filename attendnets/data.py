"""Image folders for training and evaluation: checked up front, so bad data fails in one line, not mid-epoch.

The layout is torchvision's ImageFolder, one folder per split::

    DATA/train/<class>/*.jpg
    DATA/val/<class>/*.jpg

:func:`scan_split` lists a split's images and decodes each one once (JPEGs at reduced scale, which is
cheap) so that unreadable files are found before training starts: they are skipped with one counted
warning, or are an error with ``strict``. Images are converted to 8-bit RGB on load (grayscale, RGBA,
palette; 16-bit grayscale is scaled to 8 bits, not clipped).

:func:`make_synthetic_dataset` writes a small learnable dataset of the same layout for demos and tests.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset

from attendnets.env import DATA_ENV
from attendnets.errors import AttendNetsError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes for 16-bit (and 32-bit integer) pixels
# The preprocessing every model gets unless told otherwise, so that a comparison compares models, not pipelines.
INTERPOLATION = "bilinear"
CROP_PCT = 0.875  # evaluation: resize to img_size / CROP_PCT, then centre-crop img_size
MEAN = IMAGENET_DEFAULT_MEAN
STD = IMAGENET_DEFAULT_STD


def default_preprocessing(img_size: int) -> dict[str, Any]:
    """The default preprocessing at ``img_size``, as a checkpoint's sidecar records it."""
    return {"img_size": img_size, "mean": list(MEAN), "std": list(STD), "interpolation": INTERPOLATION,
            "crop_pct": CROP_PCT}


def eval_transform(meta: dict[str, Any]):
    """The deterministic preprocessing a checkpoint was validated with (``meta``: its sidecar or
    :func:`default_preprocessing`): resize, centre crop, normalise."""
    return create_transform(meta["img_size"], is_training=False, interpolation=meta["interpolation"],
                            mean=tuple(meta["mean"]), std=tuple(meta["std"]), crop_pct=meta["crop_pct"])


def resolve_data_dir(data: str | os.PathLike | None) -> Path:
    """The dataset root from ``--data``, else from the ``ATTENDNETS_DATA`` environment variable."""
    data = data or os.environ.get(DATA_ENV)
    if not data:
        raise AttendNetsError(f"no dataset given: pass --data DIR or set {DATA_ENV}")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise AttendNetsError(f"dataset folder {root} does not exist")
    return root


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of one split; hidden folders are ignored."""
    if not split_dir.is_dir():
        raise AttendNetsError(
            f"{split_dir.parent} has no {split_dir.name}/ folder; expected the layout "
            f"DATA/{split_dir.name}/<class>/<image files>"
        )
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AttendNetsError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    return classes


def check_same_classes(train_classes: list[str], val_classes: list[str]) -> None:
    """Train and val must have the same class folders, or labels would silently mean different classes."""
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise AttendNetsError(
        "class folders differ between train/ and val/: "
        f"only in train: {short_list(only_train)}; only in val: {short_list(only_val)}"
    )


def short_list(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden files ignored), sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def check_image(path: Path) -> None:
    """Decode an image once; raises ``OSError``/``ValueError`` when it cannot be read. JPEGs are decoded
    at reduced scale (``draft``), which still reads every byte of the file."""
    with Image.open(path) as img:
        img.draft("RGB", (32, 32))
        img.load()


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, whatever its mode (grayscale, RGBA, palette, CMYK). A 16-bit grayscale image
    (a 16-bit PNG opens as mode ``I;16`` or ``I``) is scaled to 8 bits, ``round(v / 257)``: Pillow's own
    conversion clips every value above 255, which turns it almost white."""
    if img.mode in WIDE_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB (see :func:`to_rgb`)."""
    with Image.open(path) as img:
        return to_rgb(img)


def scan_split(split_dir: Path, classes: list[str], strict: bool = False) -> list[tuple[str, int]]:
    """``(path, class index)`` of every readable image of a split, in a stable order."""
    samples, bad = [], []
    for index, name in enumerate(classes):
        files = image_files(split_dir / name)
        if not files:
            raise AttendNetsError(
                f"class folder {split_dir / name} has no images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...)"
            )
        readable = 0
        for path in files:
            try:
                check_image(path)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                if strict:
                    raise AttendNetsError(f"unreadable image {path}: {err} (--strict)") from None
                bad.append((path, err))
                continue
            samples.append((str(path), index))
            readable += 1
        if not readable:
            raise AttendNetsError(f"class folder {split_dir / name} has no readable images")
    if bad:
        path, err = bad[0]
        log.warning(
            f"warning: skipped {len(bad)} unreadable image(s) in {split_dir} (first: {path}: {err}); "
            "use --strict to stop instead"
        )
    return samples


class ImageList(Dataset):
    """Images given as ``(path, target)`` pairs, loaded as RGB and passed through ``transform``; with
    ``decoded`` (:func:`decode_images` of the same samples) the files are not read again."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform=None,
                 decoded: list[np.ndarray] | None = None) -> None:
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        img = Image.fromarray(self.decoded[index]) if self.decoded is not None else load_rgb(path)
        return (self.transform(img) if self.transform else img), target


def decode_images(samples: list[tuple[str, int]], memory_share: float = 0.5) -> list[np.ndarray]:
    """Every image of ``samples`` decoded once, as :func:`load_rgb` decodes it: (H, W, 3) uint8 arrays, the
    same pixels, so that an :class:`ImageList` given them transforms exactly what it would have read. Refused
    in one line before decoding when they would take more than ``memory_share`` of the available memory
    (sizes from the files' headers)."""
    need = 0
    for path, _ in samples:
        with Image.open(path) as img:
            need += img.width * img.height * 3
    available = _available_memory()
    if available is not None and need > memory_share * available:
        raise AttendNetsError(
            f"the {len(samples)} images take {need / 2**30:.1f} GiB decoded, more than {memory_share:.0%} of the "
            f"{available / 2**30:.1f} GiB of memory available: drop --cache-images"
        )
    log.info("decoding %d images into memory (%.2f GiB)", len(samples), need / 2**30)
    return [np.asarray(load_rgb(path)) for path, _ in samples]


def _available_memory() -> int | None:
    """Bytes of physical memory free now, where the system says (``None`` where it does not, e.g. macOS)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class ImageFolders:
    """The checked train and val samples of a dataset root, sharing one class list."""

    root: Path
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]


def open_image_folders(root: str | os.PathLike | None, strict: bool = False, subset: int | None = None) -> ImageFolders:
    """Check ``root/train`` and ``root/val`` and list their images.

    ``subset`` keeps at most that many images of each split, evenly spaced through the class-sorted
    list so every class stays represented (for smoke runs)."""
    root = resolve_data_dir(root)
    train_classes = list_classes(root / "train")
    val_classes = list_classes(root / "val")
    check_same_classes(train_classes, val_classes)
    train = scan_split(root / "train", train_classes, strict)
    val = scan_split(root / "val", val_classes, strict)
    if subset:
        train, val = _evenly(train, subset), _evenly(val, subset)
    return ImageFolders(root, train_classes, train, val)


def open_split(root: str | os.PathLike | None, split: str, strict: bool = False) -> tuple[list[str], list]:
    """Check one split folder and list its classes and images."""
    split_dir = resolve_data_dir(root) / split
    classes = list_classes(split_dir)
    return classes, scan_split(split_dir, classes, strict)


def _evenly(samples: list, n: int) -> list:
    if n >= len(samples):
        return samples
    return [samples[math.floor(i * len(samples) / n)] for i in range(n)]


# ----------------------------------------------------------------------------------------------------------
# A synthetic dataset: each class is a shape or texture, drawn at a random position, size, colour and angle
# on a noisy background, so a model must learn the shape, not a colour or a position.

SYNTHETIC_CLASSES = ("stripes", "checks", "dots", "disc", "square", "triangle", "cross", "ring")


def _draw(kind: str, size: int, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randrange(0, 256) for _ in range(3))
    fg = tuple((c + 96 + rng.randrange(0, 64)) % 256 for c in bg)  # always distinct from the background
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    width = max(1, round(size / 16))
    if kind == "disc":
        draw.ellipse(box, fill=fg)
    elif kind == "ring":
        draw.ellipse(box, outline=fg, width=max(2, round(r / 3)))
    elif kind == "square":
        draw.regular_polygon((cx, cy, r), 4, rotation=rng.uniform(0, 90), fill=fg)
    elif kind == "triangle":
        draw.regular_polygon((cx, cy, r), 3, rotation=rng.uniform(0, 120), fill=fg)
    elif kind == "cross":
        draw.line((cx - r, cy, cx + r, cy), fill=fg, width=2 * width)
        draw.line((cx, cy - r, cx, cy + r), fill=fg, width=2 * width)
    elif kind == "stripes":
        step = rng.uniform(size / 10, size / 5)
        for x in range(-size, 2 * size, max(2, round(step))):
            draw.line((x, 0, x + size * rng.uniform(-0.3, 0.3), size), fill=fg, width=width)
    elif kind == "checks":
        step = max(2, round(rng.uniform(size / 10, size / 5)))
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=fg)
    elif kind == "dots":
        for _ in range(rng.randrange(5, 10)):
            x, y, d = rng.uniform(0, size), rng.uniform(0, size), size / 16
            draw.ellipse((x - d, y - d, x + d, y + d), fill=fg)
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    return Image.blend(img, noise, rng.uniform(0.05, 0.2)).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_synthetic_dataset(
    root: str | os.PathLike,
    classes: int = 4,
    per_class: int = 64,
    size: int = 64,
    val_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/<class>/<n>.png``: ``classes`` (at most 8) shapes and textures,
    ``per_class`` training images of each (``val_per_class``, default a quarter of that, for val).

    The same arguments always give the same images. Returns ``root``."""
    if not 1 <= classes <= len(SYNTHETIC_CLASSES):
        raise AttendNetsError(f"synthetic data has 1 to {len(SYNTHETIC_CLASSES)} classes, got {classes}")
    root = Path(root)
    val_per_class = max(1, per_class // 4) if val_per_class is None else val_per_class
    for split, count, offset in (("train", per_class, 0), ("val", val_per_class, 1)):
        for index, kind in enumerate(SYNTHETIC_CLASSES[:classes]):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            rng = random.Random(f"{seed}-{offset}-{index}")
            for n in range(count):
                _draw(kind, size, rng).save(folder / f"{n:05d}.png")
    return root
