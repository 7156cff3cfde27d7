"""Evaluation figures checked by hand: counts from known logits, a checkpoint whose answers we set, and exported
ONNX models (float and int8) against their checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.cli import main
from attendnets.data import make_synthetic_dataset
from attendnets.errors import AttendNetsError
from attendnets.evaluate import (
    MARGIN_THRESHOLDS,
    Tally,
    agreement_by_margin,
    evaluate_checkpoint,
    evaluate_exported,
    top1_agreement,
)
from attendnets.export import OnnxRunner, export_checkpoint, quantize_onnx
from attendnets.registry import create_model


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
    with pytest.raises(AttendNetsError, match=r"the 2 classes of val/ are not the 2 the checkpoint was trained on: "
                                              r"only in val/: checks, stripes; only in the checkpoint: x, y"):
        evaluate_checkpoint(tmp_path / "ckpt", data, workers=0)


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory) -> tuple[Path, Path]:
    """The trained tiny checkpoint exported: ``(float ONNX, int8 ONNX calibrated on its training images)``."""
    folder = tmp_path_factory.mktemp("onnx")
    float_path = export_checkpoint(trained.checkpoint, folder / "tiny.onnx")
    return float_path, quantize_onnx(float_path, folder / "tiny.int8.onnx", trained.data / "train", 32)


def test_onnx_figures_equal_the_checkpoint(trained, exports, capsys) -> None:
    float_path, _ = exports
    expected = evaluate_checkpoint(trained.checkpoint, trained.data, workers=0)
    result = evaluate_exported(OnnxRunner(float_path, threads=1), trained.data, workers=0, batch_size=16)
    assert result["weights"] == "ort" and result["model"] == "tiny" and result["images"] == 40
    assert result["confusion"] == expected["confusion"] and result["top1"] == expected["top1"]
    assert result["top5"] == expected["top5"] and result["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    assert main(["eval", "--onnx", str(float_path), "--data", str(trained.data), "--workers", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"tiny (ort, {float_path}) on val/" in out and f"top-1 {expected['top1']:.2f}%" in out
    report = json.loads((float_path.parent / "eval-tiny.onnx-val" / "eval.json").read_text())
    assert report["confusion"] == expected["confusion"] and report["file"] == str(float_path)


def test_int8_agreement_with_float(trained, exports, tmp_path, capsys) -> None:
    float_path, int8_path = exports
    args = ["eval", "--onnx", str(int8_path), "--data", str(trained.data), "--workers", "0", "--threads", "1"]
    assert main([*args, "--agreement-with", str(float_path), "--output", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == "ort-int8" and "predictions" not in result
    agreement = result["agreement"]
    assert agreement["with"] == str(float_path) and agreement["with_weights"] == "ort"
    assert agreement["top1_agreement"] >= 90.0
    # The same through the library: per-image predictions in the order of the files.
    a = evaluate_exported(OnnxRunner(int8_path, threads=1), trained.data, workers=0, predictions=True)
    b = evaluate_exported(OnnxRunner(float_path, threads=1), trained.data, workers=0, predictions=True)
    assert a["files"] == b["files"] and len(a["predictions"]) == 40
    assert top1_agreement(a["predictions"], b["predictions"]) == agreement["top1_agreement"]
    assert agreement["by_margin_of_other"] == agreement_by_margin(a["predictions"], b["predictions"], b["margins"])
    assert all(0.0 <= m <= 1.0 for m in b["margins"]) and "margins" not in result
    assert top1_agreement([0, 1, 2, 3], [0, 1, 2, 0]) == 75.0


def test_agreement_by_margin() -> None:
    rows = agreement_by_margin([0, 1, 2, 3], [0, 1, 2, 0], [0.5, 0.3, 0.15, 0.01])
    assert [r["min_margin"] for r in rows] == list(MARGIN_THRESHOLDS)
    # the one disagreement is the reference's near-tie: every clear-call threshold leaves it out
    assert rows[0] == {"min_margin": 0.02, "images_share": 75.0, "top1_agreement": 100.0}
    assert [r["images_share"] for r in rows] == [75.0, 75.0, 75.0, 50.0]
    with pytest.raises(AttendNetsError, match="not the same images"):
        top1_agreement([0, 1], [0])


def test_onnx_eval_bad_inputs(trained, exports, tmp_path, capsys) -> None:
    float_path, _ = exports
    other = make_synthetic_dataset(tmp_path / "other", classes=3, per_class=1, size=16)
    assert main(["eval", "--onnx", str(float_path), "--data", str(other), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "val/: tiny.onnx predicts 5 classes, the data has 3" in err and err.count("\n") == 1
    foreign = tmp_path / "identity.onnx"  # a valid ONNX model that attendnets did not write
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(onnx.helper.make_model(graph), foreign)
    assert main(["eval", "--onnx", str(foreign), "--data", str(trained.data)]) == 2
    assert "identity.onnx was not exported by attendnets" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(trained.checkpoint), "--data", str(trained.data), "--threads", "1"]) == 2
    assert "--threads only applies with --file" in capsys.readouterr().err
    for models in ([], ["--onnx", str(float_path), "--checkpoint", str(trained.checkpoint)]):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", *models, "--data", str(trained.data)])
        assert exit_.value.code == 2
    assert "one of the arguments --checkpoint --file/--onnx is required" in capsys.readouterr().err
