"""Image folders: every bad layout gives its one-line message; bad images are skipped or stop the run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attendnets.data import ImageList, decode_images, make_synthetic_dataset, open_image_folders, open_split
from attendnets.errors import AttendNetsError


def _image(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8)).save(path)


def _dataset(root: Path, train=("a", "b"), val=("a", "b")) -> Path:
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            _image(root / split / name / "0.png")
    return root


def _error(root, **kwargs) -> str:
    with pytest.raises(AttendNetsError) as err:
        open_image_folders(root, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_layout_errors(tmp_path) -> None:
    assert "does not exist" in _error(tmp_path / "nowhere")
    root = _dataset(tmp_path / "d")
    shutil.rmtree(root / "val")
    assert _error(root) == f"{root} has no val/ folder; expected the layout DATA/val/<class>/<image files>"
    shutil.rmtree(root / "train")
    assert "has no train/ folder" in _error(root)
    (root / "train").mkdir()
    assert _error(root).startswith(f"{root / 'train'} has no class folders")


def test_classes_must_match_between_train_and_val(tmp_path) -> None:
    root = _dataset(tmp_path, train=("a", "b", "c"), val=("a", "d"))
    assert _error(root) == "class folders differ between train/ and val/: only in train: b, c; only in val: d"


def test_class_without_images(tmp_path) -> None:
    root = _dataset(tmp_path)
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "notes.txt").write_text("not an image")
    (root / "val" / "c").mkdir()
    assert _error(root).startswith(f"class folder {root / 'train' / 'c'} has no images")


def test_no_data_given(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("ATTENDNETS_DATA", raising=False)
    assert _error(None) == "no dataset given: pass --data DIR or set ATTENDNETS_DATA"
    monkeypatch.setenv("ATTENDNETS_DATA", str(_dataset(tmp_path)))
    assert open_image_folders(None).classes == ["a", "b"]


def test_unreadable_images_are_skipped_with_a_count_or_stop_strict_runs(tmp_path, caplog) -> None:
    root = _dataset(tmp_path)
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    good = root / "train" / "b" / "1.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good)
    (root / "train" / "b" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        folders = open_image_folders(root)
    assert len(folders.train) == 3
    assert caplog.messages == [
        f"warning: skipped 2 unreadable image(s) in {root / 'train'} (first: {root / 'train' / 'a' / 'empty.jpg'}: "
        f"cannot identify image file '{root / 'train' / 'a' / 'empty.jpg'}'); use --strict to stop instead"
    ]
    assert _error(root, strict=True).startswith(f"unreadable image {root / 'train' / 'a' / 'empty.jpg'}: ")
    (root / "train" / "a" / "0.png").write_bytes(b"garbage")
    assert _error(root) == f"class folder {root / 'train' / 'a'} has no readable images"


def test_grayscale_rgba_and_palette_images_load_as_rgb(tmp_path) -> None:
    for i, mode in enumerate(("L", "RGBA", "P", "RGB")):
        _image(tmp_path / "val" / "a" / f"{i}.png", mode)
    classes, samples = open_split(tmp_path, "val")
    dataset = ImageList(samples, classes, transform=lambda img: torch.tensor(img.getpixel((0, 0))))
    assert [tuple(dataset[i][0].shape) for i in range(4)] == [(3,)] * 4


def test_16_bit_png_loads_as_its_8_bit_version(tmp_path) -> None:
    """A true 16-bit grayscale PNG holding v * 257 loads as the 8-bit image v (Pillow's own conversion clips it
    to almost white), in a dataset and in the search's cache."""
    from attendnets.search.fidelity import _resized

    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    deep, plain = tmp_path / "val" / "a" / "deep.png", tmp_path / "plain.png"
    deep.parent.mkdir(parents=True)
    Image.fromarray(eight.astype(np.uint16) * 257).save(deep)
    Image.fromarray(eight).save(plain)
    with Image.open(deep) as img:
        assert img.mode in ("I;16", "I")  # really 16 bits per pixel
    classes, samples = open_split(tmp_path, "val")
    rgb = np.asarray(ImageList(samples, classes)[0][0])
    assert rgb.dtype == np.uint8 and (rgb == eight[..., None]).all()
    assert (np.asarray(_resized(deep, 24)) == np.asarray(_resized(plain, 24))).all()


def test_subset_keeps_every_class(tmp_path) -> None:
    root = make_synthetic_dataset(tmp_path, classes=4, per_class=8, size=16)
    folders = open_image_folders(root, subset=8)
    assert len(folders.train) == 8 and {t for _, t in folders.train} == {0, 1, 2, 3}
    assert len(folders.val) == 8  # val has 2 per class: all kept


def test_synthetic_dataset_is_deterministic_and_shaped(tmp_path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", classes=3, per_class=4, size=24, val_per_class=2)
    b = make_synthetic_dataset(tmp_path / "b", classes=3, per_class=4, size=24, val_per_class=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 * (4 + 2)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert Image.open(a / files[0]).size == (24, 24)
    with pytest.raises(AttendNetsError, match="1 to 8 classes"):
        make_synthetic_dataset(tmp_path / "c", classes=9)


def test_decoded_images_are_the_files_pixels_and_refused_when_memory_is_short(tmp_path) -> None:
    root = make_synthetic_dataset(tmp_path / "data", classes=2, per_class=4, size=24)
    for i, mode in enumerate(("L", "RGBA", "P")):
        _image(root / "train" / "checks" / f"extra{i}.png", mode)
    folders = open_image_folders(root)
    read, cached = ImageList(folders.train, folders.classes), ImageList(folders.train, folders.classes,
                                                                        decoded=decode_images(folders.train))
    for i in range(len(read)):
        assert np.array_equal(np.asarray(read[i][0]), np.asarray(cached[i][0])) and read[i][1] == cached[i][1]
    with pytest.raises(AttendNetsError, match=r"the \d+ images take .* GiB decoded, more than .* drop --cache-images"):
        decode_images(folders.train, memory_share=1e-12)
