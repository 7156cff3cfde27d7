"""``attendnets predict``: the same answers from a checkpoint and from its ONNX export; unreadable images skipped;
images streamed a batch at a time, with a progress bar on a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from attendnets.cli import main
from attendnets.errors import AttendNetsError
from attendnets.export import export_checkpoint
from attendnets.predict import iter_predictions, load_classifier
from tests.deploy_fixtures import Trained


@pytest.fixture(scope="module")
def float_onnx(trained, tmp_path_factory) -> Path:
    return export_checkpoint(trained.checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _val_images(trained: Trained) -> list[Path]:
    return sorted((trained.data / "val").rglob("*.png"))


def test_checkpoint_and_onnx_give_the_same_answers(trained, float_onnx) -> None:
    images = _val_images(trained)
    by_checkpoint = list(iter_predictions(load_classifier(checkpoint=trained.checkpoint), images, top=3))
    by_onnx = list(iter_predictions(load_classifier(file=float_onnx, threads=1), images, top=3, batch_size=7))
    assert len(by_checkpoint) == len(by_onnx) == 40 and all("top" in r for r in by_checkpoint)
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
    for models in (["--onnx", str(float_onnx), "--checkpoint", str(trained.checkpoint)],
                   ["--model", "attendnet_b", "--checkpoint", str(trained.checkpoint)]):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", image, *models])
        assert exit_.value.code == 2
    with pytest.raises(AttendNetsError, match="exactly one model"):
        load_classifier()
    with pytest.raises(SystemExit) as exit_:
        main(["predict", image, "--checkpoint", str(trained.checkpoint), "--top", "0"])
    assert exit_.value.code == 2 and "argument --top: must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(AttendNetsError, match="--top must be at least 1"):
        next(iter_predictions(load_classifier(checkpoint=trained.checkpoint), [image], top=0))
    assert main(["predict", image, "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "no model file" in capsys.readouterr().err


def test_predictions_stream_in_batches(trained, float_onnx, monkeypatch) -> None:
    """Images are read a batch at a time: the first record comes after one batch, not after every image."""
    import attendnets.predict

    loaded: list[Path] = []
    read = attendnets.predict.load_rgb
    monkeypatch.setattr(attendnets.predict, "load_rgb", lambda path: loaded.append(path) or read(path))
    classifier = load_classifier(file=float_onnx, threads=1)
    batches: list[tuple[int, int]] = []
    logits = classifier.logits
    classifier.logits = lambda images: batches.append((len(images), len(loaded))) or logits(images)
    images = _val_images(trained)
    stream = iter_predictions(classifier, images, top=1, batch_size=16)
    assert next(stream)["image"] == str(images[0]) and len(loaded) == 16
    assert len(list(stream)) == 39 and batches == [(16, 16), (16, 32), (8, 40)]


def test_progress_bar_on_a_terminal_leaves_json_clean(trained, float_onnx, tmp_path, monkeypatch, capsys) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    images = [str(p) for p in _val_images(trained)[:5]] + [str(junk)]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["predict", *images, "--onnx", str(float_onnx), "--threads", "1", "--batch-size", "2", "--json"]) == 1
    captured = capsys.readouterr()
    assert [r["image"] for r in json.loads(captured.out)] == images[:5]
    assert "predicting" in captured.err and f"attendnets predict: warning: cannot read image {junk}" in captured.err
