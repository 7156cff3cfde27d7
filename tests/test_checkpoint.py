"""Checkpoints: round trips that rebuild the model from the sidecar, atomic writes, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attendnets import __version__
from attendnets.checkpoint import checkpoint_paths, load_checkpoint, load_weights, model_meta, save_checkpoint
from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write, atomic_write_text
from attendnets.registry import create_model
from tests.training_fixtures import SMALL_SPEC

PREPROCESSING = dict(img_size=32, mean=[0.5] * 3, std=[0.25] * 3, interpolation="bilinear", crop_pct=0.875)


def _meta(model, name: str, classes: int) -> dict:
    return {**model_meta(model, name), "class_names": [f"c{i}" for i in range(classes)], **PREPROCESSING,
            "epoch": 7, "weights": "ema", "metrics": {"val_top1": 81.5}}


def _save(path, name: str, classes: int = 3):
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).eval()
    save_checkpoint(path, model, _meta(model, name, classes))
    return model


@pytest.mark.parametrize("name", ["attendnet_b", "mobilenet_v1"])
def test_round_trip(tmp_path, name) -> None:
    model = _save(tmp_path / "best", name)
    loaded, meta = load_checkpoint(tmp_path / "best.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert meta["attendnets_version"] == __version__ and meta["format"] == "attendnets-checkpoint"
    assert meta["model"] == name and (meta["spec"] is not None) == (name == "attendnet_b")
    assert meta["num_classes"] == 3 and meta["class_names"] == ["c0", "c1", "c2"] and meta["epoch"] == 7
    assert {k: meta[k] for k in PREPROCESSING} == PREPROCESSING
    for path in (tmp_path / "best", tmp_path / "best.json", tmp_path):  # every way to name it
        assert load_checkpoint(path)[1]["epoch"] == 7


def test_spec_model_is_rebuilt_from_the_sidecar_alone(tmp_path, small_spec_file) -> None:
    spec_copy = tmp_path / "design.json"
    spec_copy.write_text(small_spec_file.read_text())
    model = _save(tmp_path / "ckpt", str(spec_copy))
    spec_copy.unlink()  # the spec file is gone: the sidecar has the whole spec
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["model"] is None and meta["spec"]["name"] == SMALL_SPEC["name"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_other_architecture_or_class_count_is_refused(tmp_path) -> None:
    _save(tmp_path / "b", "attendnet_b", classes=3)
    with pytest.raises(AttendNetsError) as err:
        load_weights(create_model("attendnet_b", num_classes=10), tmp_path / "b")
    assert str(err.value) == "checkpoint b.safetensors is for 3 classes, the model has 10"
    with pytest.raises(AttendNetsError) as err:
        load_weights(create_model("attendnet_a", num_classes=3), tmp_path / "b")
    assert str(err.value).startswith("checkpoint b.safetensors holds another architecture, attendnet_b (3 classes): ")
    with pytest.raises(AttendNetsError, match="holds another architecture, attendnet_b .* tensor.s. of the model missing"):
        load_weights(create_model("mobilenet_v1", num_classes=3), tmp_path / "b")


def test_broken_checkpoints_give_one_line_errors(tmp_path) -> None:
    with pytest.raises(AttendNetsError, match="no checkpoint sidecar"):
        load_checkpoint(tmp_path / "nothing")
    _save(tmp_path / "c", "attendnet_b")
    weights, sidecar = checkpoint_paths(tmp_path / "c")
    weights.write_bytes(b"not safetensors")
    with pytest.raises(AttendNetsError, match="cannot read checkpoint weights"):
        load_checkpoint(tmp_path / "c")
    sidecar.write_text("{")
    with pytest.raises(AttendNetsError, match="is not valid JSON"):
        load_checkpoint(tmp_path / "c")
    sidecar.write_text(json.dumps({"model": "attendnet_b"}))
    with pytest.raises(AttendNetsError, match="is not an attendnets checkpoint sidecar"):
        load_checkpoint(tmp_path / "c")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")

    def crash_halfway(tmp: str) -> None:
        Path(tmp).write_text("half of the new")
        raise KeyboardInterrupt  # the run is killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash_halfway)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
