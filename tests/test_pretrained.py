"""Shipped weights: 8-bit checkpoints, their timm pretrained cfgs, ``timm.create_model(name, pretrained=True)``
offline, and ``attendnets predict`` without a model argument, on real Imagenette val images when
``ATTENDNETS_DATA`` points at them (CI sets it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors
import timm
import torch

import attendnets  # noqa: F401  (registers the models with timm)
from attendnets import pretrained
from attendnets.checkpoint import checkpoint_paths, load_checkpoint, model_meta, save_checkpoint
from attendnets.cli import main
from attendnets.errors import AttendNetsError
from attendnets.model import build_model
from attendnets.quantize import quantize_weights
from attendnets.registry import load_preset
from tests.conftest import TINY_SPEC

SHIPPED = pretrained.shipped()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no weights shipped in attendnets/weights")


def test_an_8bit_checkpoint_is_a_quarter_of_the_float_one_and_loads_the_same(tmp_path) -> None:
    torch.manual_seed(0)
    model, _ = quantize_weights(build_model(TINY_SPEC, num_classes=3).eval())
    meta = model_meta(model, "tiny.json")
    save_checkpoint(tmp_path / "float", model, meta)
    save_checkpoint(tmp_path / "int8", model, meta, int8=True)
    weights, _ = checkpoint_paths(tmp_path / "int8")
    with safetensors.safe_open(str(weights), "pt") as f:
        assert f.metadata()["storage"] == "int8"
        assert f.get_tensor("blocks.0.0.weight").dtype == torch.int8
        assert "blocks.1.down_mix.1.running_var" in f.keys()  # buffers too: the checkpoint is whole
    x = torch.randn(2, 3, 16, 16)
    loaded = {name: load_checkpoint(tmp_path / name)[0] for name in ("float", "int8")}
    with torch.no_grad():
        torch.testing.assert_close(loaded["int8"](x), loaded["float"](x), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded["int8"](x), model(x), rtol=0, atol=1e-6)


def test_an_int8_tensor_without_its_scales_is_one_line(tmp_path) -> None:
    model = build_model(TINY_SPEC, num_classes=3)
    save_checkpoint(tmp_path / "b", model, model_meta(model, "tiny.json"), int8=True)
    weights, _ = checkpoint_paths(tmp_path / "b")
    tensors = safetensors.torch.load_file(weights)
    del tensors["blocks.0.0.weight_scale"]
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(AttendNetsError, match=r"b.safetensors lacks the scales of blocks.0.0.weight_scale$"):
        load_checkpoint(tmp_path / "b")


def test_unknown_shipped_model_lists_what_is_shipped(capsys) -> None:
    assert main(["predict", "x.jpg", "--model", "resnet50"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("attendnets predict: error: no trained weights are shipped for 'resnet50'; shipped: ")


@needs_shipped
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_offline_through_timm(name, monkeypatch) -> None:
    """``pretrained=True`` with no other argument: the preset's architecture, Imagenette's classes and the
    preprocessing it was trained with, and exactly the weights of the shipped checkpoint."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = timm.create_model(name, pretrained=True).eval()
    assert model.spec == load_preset(name)  # a preset changed since shipping is refused: ship again
    cfg = model.pretrained_cfg
    meta = json.loads(SHIPPED[name].with_name(SHIPPED[name].name + ".json").read_text())
    assert cfg["tag"] == pretrained.TAG and Path(cfg["file"]).is_relative_to(pretrained.WEIGHTS_DIR)
    assert model.num_classes == len(cfg["label_names"]) == 10 and list(cfg["label_names"]) == meta["class_names"]
    assert cfg["input_size"] == (3, meta["img_size"], meta["img_size"]) and cfg["crop_pct"] == meta["crop_pct"]
    assert f"{meta['release']['int8_top1']:.2f}%" in cfg["notes"][0] and meta["release"]["commit"] in cfg["notes"][2]
    same, _ = load_checkpoint(SHIPPED[name])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), same(x), rtol=0, atol=0)
    fine_tune = timm.create_model(name, pretrained=True, num_classes=4)  # a new head, the rest kept
    assert fine_tune.classifier.out_features == 4
    assert torch.equal(fine_tune.blocks[0].conv.weight, model.blocks[0].conv.weight)


def _val_images(per_class: int) -> list[tuple[Path, str]]:
    root = os.environ.get("ATTENDNETS_DATA")
    if not root or not (Path(root) / "val").is_dir():
        pytest.skip("ATTENDNETS_DATA does not point at Imagenette (CI sets it)")
    folders = sorted(p for p in (Path(root) / "val").iterdir() if p.is_dir())
    return [(image, folder.name) for folder in folders for image in sorted(folder.iterdir())[:per_class]]


@needs_shipped
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_predict_names_imagenette_classes_of_real_images(name: str, capsys) -> None:
    """Each shipped model (the default one without --model) on the first 4 val images of each class: the
    expected class for most, and for at least one image of every class."""
    images = _val_images(4)
    model = [] if name == pretrained.DEFAULT_MODEL else ["--model", name]
    assert main(["predict", *(str(p) for p, _ in images), *model, "--top", "2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    guesses = [(r["top"][0]["class"], expected) for r, (_, expected) in zip(records, images, strict=True)]
    right = [guess == expected for guess, expected in guesses]
    assert sum(right) >= 0.75 * len(images), guesses
    assert {expected for (_, expected), ok in zip(guesses, right) if ok} == {e for _, e in images}
    assert records[0]["top"][0]["label"] == "tench (n01440764)"
    main(["predict", str(images[0][0]), *model, "--top", "1"])
    out, err = capsys.readouterr()
    assert "knows only Imagenette's 10 classes" in err and "tench (n01440764)" in out


@needs_shipped
def test_attention_maps_of_a_shipped_model(tmp_path, capsys) -> None:
    from PIL import Image

    image = tmp_path / "noise.png"
    Image.fromarray(torch.randint(0, 255, (96, 96, 3), dtype=torch.uint8).numpy()).save(image)
    assert main(["attention", str(image), "--model", pretrained.DEFAULT_MODEL, "--pretrained",
                 "--output", str(tmp_path / "maps.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (record,) = report["images"]
    assert report["trained"] and record["top_class"] in report["class_names"] and record["top_label"].endswith(")")
    assert (tmp_path / "maps.png").is_file()
    assert main(["attention", str(image), "--model", "attendnet", "--pretrained", "--json"]) == 2  # none shipped
