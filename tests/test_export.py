"""ONNX export: a checked graph that matches PyTorch at any batch size and carries its classes and preprocessing;
its int8 version calibrated on images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.data import load_rgb, make_synthetic_dataset
from attendnets.errors import AttendNetsError
from attendnets.evaluate import eval_transform
from attendnets.blocks import PEPE
from attendnets.export import (
    OnnxRunner,
    RepeatedDepthwise,
    export_checkpoint,
    export_onnx,
    for_runtime,
    quantize_onnx,
    read_onnx_meta,
)
from attendnets.model import build_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC

CLASSES = [f"class{i}" for i in range(5)]
PREPROCESSING = dict(img_size=16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], interpolation="bicubic", crop_pct=0.9)


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


def _load(folder, classes):
    transform = eval_transform(PREPROCESSING)
    paths = sorted(folder.rglob("*.png"))
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    return images, torch.tensor([classes.index(p.parent.name) for p in paths])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model fitted for a few seconds to 5 synthetic classes at 16 px, exported:
    ``(data root, class names, float ONNX path)``. (A random model's logits hinge on tiny feature differences that any
    8-bit rounding reorders: only a trained model has inputs that are easy for it.)"""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("images"), classes=5, per_class=16, size=16)
    classes = sorted(p.name for p in (root / "train").iterdir())
    images, targets = _load(root / "train", classes)
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict(TINY_SPEC))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only spin against other work
    try:
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), targets).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    path = export_onnx(model.eval(), root / "tiny.onnx", {"class_names": classes, **PREPROCESSING})
    return root, classes, path


def test_int8_agrees_with_float(trained, tmp_path) -> None:
    root, classes, float_path = trained
    int8_path = quantize_onnx(float_path, tmp_path / "tiny-int8.onnx", root / "train")
    graph = onnx.load(str(int8_path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    assert read_onnx_meta(int8_path) == read_onnx_meta(float_path)
    val, _ = _load(root / "val", classes)
    expected = OnnxRunner(float_path, threads=1)(val)
    logits = OnnxRunner(int8_path, threads=1)(val)
    top2 = np.sort(expected, axis=1)[:, -2:]
    easy = top2[:, 1] - top2[:, 0] > 0.1 * np.ptp(expected, axis=1)  # a clear winner in float
    assert easy.sum() >= len(val) // 4
    assert np.array_equal(logits[easy].argmax(1), expected[easy].argmax(1))


def test_calibration_needs_images(exported, tmp_path) -> None:
    _, float_path = exported
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(AttendNetsError, match="has no images to calibrate on") as err:
        quantize_onnx(float_path, tmp_path / "int8.onnx", tmp_path / "empty")
    assert "\n" not in str(err.value) and not (tmp_path / "int8.onnx").exists()


def test_depthwise_expansion_for_runtime() -> None:
    torch.manual_seed(0)
    pepe = PEPE(6, 4, 3, 4, 8, stride=2).eval()
    nn.init.normal_(pepe.expand_dw[0].weight)
    rewritten = for_runtime(pepe)
    conv = rewritten.expand_dw[0].conv
    assert isinstance(rewritten.expand_dw[0], RepeatedDepthwise) and conv.groups == conv.in_channels == 12
    assert torch.equal(conv.weight, pepe.expand_dw[0].weight)
    assert isinstance(pepe.expand_dw[0], nn.Conv2d)  # the original is untouched
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), pepe(x), rtol=1e-5, atol=1e-5)


def test_exported_graph_has_no_depthwise_multiplier(exported) -> None:
    _, path = exported
    graph = onnx.load(str(path)).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out_chs, in_per_group = weights[node.input[1]][:2]
            assert not (in_per_group == 1 and 1 < group < out_chs), f"{node.name}: depthwise with a multiplier"
