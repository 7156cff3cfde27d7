"""ONNX export: a checked graph that matches PyTorch at any batch size and carries its classes and preprocessing;
its int8 version calibrated on images."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.cli import main
from attendnets.data import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.export import OnnxRunner, export_checkpoint, export_onnx, quantize_onnx, read_onnx_meta
from attendnets.export.onnx import saturating_int8
from attendnets.model import build_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC
from tests.deploy_fixtures import PREPROCESSING, Trained, load_images

CLASSES = [f"class{i}" for i in range(5)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model with logits of order 1, saved as a checkpoint and exported from it: ``(model, onnx path)``."""
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict(TINY_SPEC)).eval()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 1.0)
    folder = tmp_path_factory.mktemp("export")
    save_checkpoint(folder / "best", model, {**model_meta(model, "tiny.json"), "class_names": CLASSES, **PREPROCESSING})
    return model, export_checkpoint(folder / "best", folder / "tiny.onnx")


def test_graph_is_valid(exported) -> None:
    _, path = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


@pytest.mark.parametrize("batch", [1, 3])
def test_matches_pytorch(exported, batch) -> None:
    model, path = exported
    runner = OnnxRunner(path, CLASSES, threads=1)
    torch.manual_seed(batch)
    images = torch.randn(batch, 3, 16, 16)
    with torch.no_grad():
        expected = model(images).numpy()
    logits = runner(images)
    assert logits.shape == (batch, 5) and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_metadata_round_trip(exported) -> None:
    _, path = exported
    meta = read_onnx_meta(path)
    assert {k: meta[k] for k in PREPROCESSING} == PREPROCESSING
    assert meta["class_names"] == CLASSES and meta["model"] == "tiny"
    assert OnnxRunner(path, threads=1).class_names == CLASSES


def test_refuses_other_classes(exported) -> None:
    _, path = exported
    with pytest.raises(AttendNetsError, match="predicts 5 classes, the data has 6") as err:
        OnnxRunner(path, [*CLASSES, "extra"], threads=1)
    assert "\n" not in str(err.value)
    with pytest.raises(AttendNetsError, match="not the ones"):
        OnnxRunner(path, [*CLASSES[:4], "other"], threads=1)


def test_refuses_foreign_files(tmp_path) -> None:
    with pytest.raises(AttendNetsError, match="no ONNX file"):
        read_onnx_meta(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(AttendNetsError, match="cannot read ONNX file"):
        read_onnx_meta(tmp_path / "junk.onnx")


def test_export_needs_meta(tmp_path) -> None:
    model = build_model(ArchSpec.from_dict(TINY_SPEC))
    with pytest.raises(AttendNetsError, match="without img_size"):
        export_onnx(model, tmp_path / "x.onnx", {"class_names": CLASSES})
    with pytest.raises(AttendNetsError, match="5 classes but 2 class names"):
        export_onnx(model, tmp_path / "x.onnx", {"class_names": ["a", "b"], **PREPROCESSING})


@pytest.fixture(scope="module")
def float_onnx(trained: Trained) -> Path:
    return export_checkpoint(trained.checkpoint, trained.data / "tiny.onnx")


def test_int8_agrees_with_float(trained, float_onnx, tmp_path) -> None:
    float_path = float_onnx
    int8_path = quantize_onnx(float_path, tmp_path / "tiny-int8.onnx", trained.data / "train")
    graph = onnx.load(str(int8_path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    assert read_onnx_meta(int8_path) == {**read_onnx_meta(float_path), "weight_bits": 7 if saturating_int8() else 8}
    val, _ = load_images(trained.data / "val", trained.classes)
    expected = OnnxRunner(float_path, threads=1)(val)
    logits = OnnxRunner(int8_path, threads=1)(val)
    top2 = np.sort(expected, axis=1)[:, -2:]
    easy = top2[:, 1] - top2[:, 0] > 0.1 * np.ptp(expected, axis=1)  # a clear winner in float
    assert easy.sum() >= len(val) // 4
    assert np.array_equal(logits[easy].argmax(1), expected[easy].argmax(1))


@pytest.mark.parametrize("float_stem", [True, False, None])
def test_all_integer_by_default(trained, float_onnx, tmp_path, float_stem: bool | None) -> None:
    options = {} if float_stem is None else {"float_stem": float_stem}
    int8_path = quantize_onnx(float_onnx, tmp_path / "int8.onnx", trained.data / "train", 8, **options)
    float_stem = bool(float_stem)
    graph = onnx.load(str(int8_path)).graph
    readers = {n.op_type for n in graph.node if graph.input[0].name in n.input} - {"Shape"}
    assert readers == ({"Conv"} if float_stem else {"QuantizeLinear"})
    convs = [n for n in graph.node if n.op_type == "Conv"]
    weights_quantized = [any(i.endswith("_DequantizeLinear_Output") for i in n.input[1:2]) for n in convs]
    assert all(weights_quantized[1:]) and weights_quantized[0] != float_stem


@pytest.mark.parametrize("bits", [7, 8])
def test_weight_bits_are_kept_and_recorded(trained, float_onnx, tmp_path, bits: int) -> None:
    """7-bit weights (for CPUs whose int8 sums saturate) use half the int8 range; 8-bit ones reach its ends."""
    int8_path = quantize_onnx(float_onnx, tmp_path / "int8.onnx", trained.data / "train", 8, weight_bits=bits)
    graph = onnx.load(str(int8_path)).graph
    weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest in ((63, 64) if bits == 7 else (127,))
    assert read_onnx_meta(int8_path)["weight_bits"] == bits
    with pytest.raises(AttendNetsError, match="weight_bits must be 7 or 8, not 6"):
        quantize_onnx(float_onnx, tmp_path / "int6.onnx", trained.data / "train", 8, weight_bits=6)


def test_calibration_needs_images(exported, tmp_path) -> None:
    _, float_path = exported
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(AttendNetsError, match="has no images to calibrate on") as err:
        quantize_onnx(float_path, tmp_path / "int8.onnx", tmp_path / "empty")
    assert "\n" not in str(err.value) and not (tmp_path / "int8.onnx").exists()


def test_exported_graph_has_no_depthwise_multiplier(exported) -> None:
    _, path = exported
    graph = onnx.load(str(path)).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out_chs, in_per_group = weights[node.input[1]][:2]
            assert not (in_per_group == 1 and 1 < group < out_chs), f"{node.name}: depthwise with a multiplier"


def _copy_checkpoint(trained: Trained, folder: Path) -> Path:
    """The trained checkpoint copied to ``folder/best`` (a run folder the test may add a config.json to)."""
    folder.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(trained.checkpoint.with_suffix(suffix), folder / f"best{suffix}")
    return folder / "best"


def test_cli_export_int8_calibrated_on_the_run_data(trained, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    checkpoint = _copy_checkpoint(trained, tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data": str(trained.data)}))
    args = ["export", "--checkpoint", str(tmp_path / "run"), "--int8", "--calib-images", "16", "--threads", "1"]
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    float_path, int8_path = checkpoint.with_suffix(".onnx"), checkpoint.with_suffix(".int8.onnx")
    files = record["files"]
    assert files["float"]["path"] == str(float_path) and files["int8"]["path"] == str(int8_path)
    assert files["float"]["kb"] == pytest.approx(float_path.stat().st_size / 1024)
    assert record["calibration"] == {"folder": str(trained.data / "train"), "images": 16}
    onnx.checker.check_model(onnx.load(str(float_path)), full_check=True)
    assert read_onnx_meta(int8_path)["class_names"] == trained.classes
    parity = record["parity"]
    assert parity["images"] == 32 and parity["float_max_abs_diff"] < 1e-4
    assert parity["int8_top1_agreement"] >= 90.0  # training images: the fitted model is sure of them


def test_cli_export_float_prints_sizes_and_parity(trained, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert main(["export", "--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert f"float  {tmp_path / 'm.onnx'}" in out and " KB" in out and "int8" not in out
    assert "parity on 8 random inputs: float vs PyTorch max |logit diff|" in out  # no data known: random
    monkeypatch.setenv(DATA_ENV, str(trained.data))
    assert main(["export", "--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "m.onnx")]) == 0
    assert f"parity on 32 images of {trained.data / 'train'}" in capsys.readouterr().out


def test_cli_export_bad_inputs(trained, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    base = ["export", "--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "m.onnx"), "--int8"]
    for extra, message in [
        (["--calib-data", str(tmp_path / "empty")], "has no images to calibrate on"),
        (["--calib-data", str(tmp_path / "missing")], "calibration folder"),
        ([], "no calibration images: pass --calib-data DIR"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()  # nothing written before the inputs were checked
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--calib-images", "0"])
    assert exit_.value.code == 2
    assert "argument --calib-images: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "m.txt")]) == 2
    assert "--output must be a .onnx file" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get(DATA_ENV), reason=f"needs real photos: set {DATA_ENV} to an ImageFolder dataset")
def test_export_on_real_photos(tmp_path, capsys) -> None:
    """The deployment path on the real dataset's JPEGs (some grayscale): calibration on $ATTENDNETS_DATA/train by
    default, float parity at 1e-4, int8 predictions on val photos. The tiny model is untrained: this checks the
    plumbing, not accuracy."""
    root = Path(os.environ[DATA_ENV])
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict({**TINY_SPEC, "num_classes": len(classes)})).eval()
    meta = {**model_meta(model, "tiny.json"), "class_names": classes, **PREPROCESSING, "img_size": 32}
    save_checkpoint(tmp_path / "best", model, meta)
    assert main(["export", "--checkpoint", str(tmp_path / "best"), "--int8", "--calib-images", "16", "--threads", "1",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["calibration"]["folder"] == str(root / "train") and record["parity"]["images"] == 32
    assert record["parity"]["float_max_abs_diff"] < 1e-4
    photos = [str(next((root / "val" / name).iterdir())) for name in classes[:2]]
    assert main(["predict", *photos, "--onnx", record["files"]["int8"]["path"], "--threads", "1", "--json"]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == photos
