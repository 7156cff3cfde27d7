"""The per-layer latency table: a design's runtime kernels, probes measured once and kept, refusals."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.model import build_model
from attendnets.search.predictor import LatencyTable, Layer, runtime_layers
from tests.conftest import TINY_SPEC


def test_runtime_layers_are_the_kernels_the_runtime_runs() -> None:
    """The tiny spec in ONNX Runtime's form: stem conv, the condenser (down-mix, max pool, embedding convs,
    sigmoid, nearest resize, multiply, up-mix, residual add), the PEPE's convs, mean and two linear layers;
    BN and ReLU are fused, not layers."""
    layers = runtime_layers(build_model(TINY_SPEC), 16, "ort-int8")
    ops = Counter(layer.op for layer in layers)
    assert ops["max_pool"] == ops["sigmoid"] == ops["resize"] == ops["mul"] == 1
    assert ops["add"] == 1 and ops["mean"] == 1 and ops["linear"] == 2
    assert set(ops) == {"conv", "max_pool", "sigmoid", "resize", "mul", "add", "mean", "linear"}
    stem = layers[0]
    assert stem == Layer("conv", 3, 16, 8, kernel=3, stride=2, padding=1, groups=1)
    assert next(layer for layer in layers if layer.op == "max_pool").ceil_mode  # the condenser rounds up
    resize = next(layer for layer in layers if layer.op == "resize")
    assert (resize.in_chs, resize.size, resize.stride) == (4, 4, 2)  # 8x8 condensed by 2, expanded back


@pytest.mark.parametrize("layer", [Layer("conv", 8, 8, 16, 3, 2, 1, 8), Layer("resize", 4, 4, 4, stride=2),
                                   Layer("mul", 4, 8, 4), Layer("linear", 12, 1, 5), Layer("max_pool", 4, 8, 4, 2, 2),
                                   Layer("max_pool", 4, 2, 4, 4, 4, ceil_mode=True)])
def test_probes_take_the_layers_input(layer: Layer) -> None:
    import torch

    out = layer.probe()(torch.zeros(1, layer.in_chs, layer.size, layer.size))
    assert out.shape[1] == layer.out_chs


def test_table_measures_each_layer_once_and_keeps_it(tmp_path) -> None:
    model = build_model(TINY_SPEC)
    path = tmp_path / "table.json"
    table = LatencyTable(path, "ort-int8", threads=1)
    predicted = table.predict(model, 16)
    keys = {layer.key for layer in runtime_layers(model, 16, "ort-int8")}
    assert set(table.entries) == keys and predicted == pytest.approx(sum(
        table.entries[layer.key] for layer in runtime_layers(model, 16, "ort-int8")))
    assert all(ms > 0 for ms in table.entries.values())
    again = LatencyTable(path, "ort-int8", threads=1)
    assert again.entries == table.entries and again.predict(model, 16) == pytest.approx(predicted)  # nothing re-measured
    assert json.loads(path.read_text())["runtime"] == "ort-int8"
    with pytest.raises(AttendNetsError, match="was measured for ort-int8 at 1 thread"):
        LatencyTable(path, "ort-int8", threads=2)
    with pytest.raises(AttendNetsError, match="for an exported runtime"):
        LatencyTable(tmp_path / "other.json", "eager")


def test_wider_layers_are_predicted_slower(tmp_path) -> None:
    table = LatencyTable(tmp_path / "table.json", "ort-int8", threads=1)
    narrow, wide = (nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 1)) for c in (8, 256))
    assert table.predict(wide, 32) > table.predict(narrow, 32)
