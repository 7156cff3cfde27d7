"""Evaluation figures checked by hand: counts from known logits, and a checkpoint whose answers we set."""

from __future__ import annotations

import json

import pytest
import torch

from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.cli import main
from attendnets.data import make_synthetic_dataset
from attendnets.errors import AttendNetsError
from attendnets.evaluate import Tally, evaluate_checkpoint
from attendnets.registry import create_model
from tests.training_fixtures import small_spec_file  # noqa: F401 (fixture)


def test_tally_by_hand() -> None:
    tally = Tally.empty(6)
    logits = torch.tensor(
        [
            [9, 8, 7, 6, 5, 0],  # true 0: top-1 right
            [9, 8, 7, 6, 5, 0],  # true 4: top-1 wrong (0), within top-5
            [9, 8, 7, 6, 5, 0],  # true 5: outside top-5
            [0, 1, 9, 0, 0, 0],  # true 2: right
        ],
        dtype=torch.float32,
    )
    tally.update(logits[:2], torch.tensor([0, 4]))  # two batches add up
    tally.update(logits[2:], torch.tensor([5, 2]))
    s = tally.summary(list("abcdef"))
    assert s["images"] == 4 and s["top1"] == 50.0 and s["top5"] == 75.0 and s["top5_k"] == 5
    assert s["per_class_top1"] == {"a": 100.0, "b": 0.0, "c": 100.0, "d": 0.0, "e": 0.0, "f": 0.0}
    expected = torch.zeros(6, 6, dtype=torch.int64)
    expected[0, 0] = expected[4, 0] = expected[5, 0] = expected[2, 2] = 1
    assert s["confusion"] == expected.tolist()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4, 5, 2])).item()
    assert s["loss"] == pytest.approx(loss)


def _constant_checkpoint(path, spec_file, classes: list[str], answer: int) -> None:
    """A model that always predicts class ``answer``: zero classifier weights, bias one-hot."""
    model = create_model(str(spec_file), num_classes=len(classes))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.nn.functional.one_hot(torch.tensor(answer), len(classes)).float())
    meta = {**model_meta(model, str(spec_file)), "class_names": classes, "img_size": 32,
            "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0, "epoch": 1}
    save_checkpoint(path, model, meta)


def test_checkpoint_that_always_answers_one_class(tmp_path, small_spec_file, capsys) -> None:
    data = make_synthetic_dataset(tmp_path / "data", classes=3, per_class=4, size=32, val_per_class=5)
    classes = ["checks", "dots", "stripes"]
    _constant_checkpoint(tmp_path / "ckpt", small_spec_file, classes, answer=1)
    result = evaluate_checkpoint(tmp_path / "ckpt", data, workers=0)
    assert result["images"] == 15 and result["top1"] == pytest.approx(100 / 3) and result["top5"] == 100.0
    assert result["per_class_top1"] == {"checks": 0.0, "dots": 100.0, "stripes": 0.0}
    assert result["confusion"] == [[0, 5, 0], [0, 5, 0], [0, 5, 0]]
    # The CLI writes the same figures as JSON, plus the confusion matrix picture.
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(data), "--split", "train",
                 "--output", str(tmp_path / "report"), "--workers", "0"]) == 0
    assert "top-1 33.33%, top-3 100.00%" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert report["split"] == "train" and report["confusion"] == [[0, 4, 0], [0, 4, 0], [0, 4, 0]]
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000


def test_classes_must_match_the_checkpoint(tmp_path, small_spec_file) -> None:
    data = make_synthetic_dataset(tmp_path / "data", classes=2, per_class=1, size=32)
    _constant_checkpoint(tmp_path / "ckpt", small_spec_file, ["x", "y"], answer=0)
    with pytest.raises(AttendNetsError, match=r"the classes of val/ \(2: checks, stripes\) are not the 2"):
        evaluate_checkpoint(tmp_path / "ckpt", data, workers=0)
