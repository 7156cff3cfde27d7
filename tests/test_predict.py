"""``attendnets predict``: the same answers from a checkpoint and from its ONNX export; unreadable images skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attendnets.cli import main
from attendnets.errors import AttendNetsError
from attendnets.export import export_checkpoint
from attendnets.predict import load_classifier, predict_images
from tests.deploy_fixtures import Trained


@pytest.fixture(scope="module")
def float_onnx(trained, tmp_path_factory) -> Path:
    return export_checkpoint(trained.checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _val_images(trained: Trained) -> list[Path]:
    return sorted((trained.data / "val").rglob("*.png"))


def test_checkpoint_and_onnx_give_the_same_answers(trained, float_onnx) -> None:
    images = _val_images(trained)
    by_checkpoint, problems = predict_images(load_classifier(checkpoint=trained.checkpoint), images, top=3)
    by_onnx, _ = predict_images(load_classifier(file=float_onnx, threads=1), images, top=3, batch_size=7)
    assert not problems and len(by_checkpoint) == len(by_onnx) == 40
    for a, b in zip(by_checkpoint, by_onnx):
        assert a["image"] == b["image"] and [g["class"] for g in a["top"]] == [g["class"] for g in b["top"]]
        probs = [g["probability"] for g in a["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        assert probs[0] == pytest.approx(b["top"][0]["probability"], abs=1e-4)


def test_cli_prints_top_classes(trained, float_onnx, capsys) -> None:
    image = str(_val_images(trained)[0])
    assert main(["predict", image, "--checkpoint", str(trained.checkpoint), "--top", "2", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["image"] == image and len(record["top"]) == 2
    assert main(["predict", image, "--onnx", str(float_onnx), "--top", "9", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 1 + 5  # at most the 5 classes there are
    assert lines[1].split()[:2] == ["1.", record["top"][0]["class"]] and lines[1].endswith("%")


def test_unreadable_images_are_skipped(trained, float_onnx, tmp_path, capsys) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    good = str(_val_images(trained)[0])
    assert main(["predict", good, str(junk), "--onnx", str(float_onnx), "--json"]) == 1
    captured = capsys.readouterr()
    assert [r["image"] for r in json.loads(captured.out)] == [good]
    assert captured.err.startswith(f"attendnets predict: warning: cannot read image {junk}:")
    assert captured.err.count("\n") == 1
    assert main(["predict", str(junk), str(tmp_path / "missing.png"), "--onnx", str(float_onnx)]) == 2
    assert "error: none of the 2 image(s) could be read" in capsys.readouterr().err


def test_bad_inputs(trained, float_onnx, tmp_path, capsys) -> None:
    image = str(_val_images(trained)[0])
    for models in ([], ["--onnx", str(float_onnx), "--checkpoint", str(trained.checkpoint)]):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", image, *models])
        assert exit_.value.code == 2
    with pytest.raises(AttendNetsError, match="exactly one model"):
        load_classifier()
    assert main(["predict", image, "--checkpoint", str(trained.checkpoint), "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err
    assert main(["predict", image, "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "no model file" in capsys.readouterr().err
