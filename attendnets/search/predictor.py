"""Predicted latency from a per-layer lookup table, so that a search can reject slow designs before export.

As in FBNet and ProxylessNAS, a design's latency is the sum of its layers' latencies, each measured once on
this machine, in this runtime, at this thread count, and kept in a table. A *layer* is what the runtime
runs as one kernel: a conv with its folded BN and fused activation, a max pool, a sigmoid, a resampling, an
element-wise multiply or add, a global mean, a fully-connected layer. The layers of a design are read from
the graph of its runtime form (:func:`attendnets.export.for_runtime`: what the export really contains), so
the table sees the condensers' expansions as the runtime does. Each missing layer is measured as a probe: a
model of that one layer, exported and (for int8) quantized as ``attendnets export`` does, timed in batch 1.

The sum leaves out what happens between kernels (scheduling, quantization at the graph's ends), so absolute
predictions are off by a roughly constant factor; what a search needs is the order of designs and their
ratio to MobileNet-V1, predicted with the same table (:meth:`LatencyTable.predict_ratio`).
``benchmarks/latency_predictor.py`` checks both against measured latency.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.bench import (
    REFERENCE,
    RUNTIMES,
    _runtime_call,
    load_bench_model,
    machine_info,
    random_weights_model,
)
from attendnets.errors import AttendNetsError
from attendnets.export.forms import Target, for_runtime
from attendnets.files import atomic_write_text
from attendnets.runtime import torch_threads

TARGETS = {"ort": Target.ORT, "litert": Target.XNNPACK, "executorch": Target.XNNPACK, "tflm": Target.MICRO}
PROBE_ROUNDS = 5
PROBE_CALLS = 10


@dataclass(frozen=True)
class Layer:
    """One kernel of a runtime graph at batch 1: ``op``, input channels and size, output channels, and for
    convs and pools the kernel, stride, padding, groups and rounding (0 where they do not apply)."""

    op: str
    in_chs: int
    size: int
    out_chs: int
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    groups: int = 0
    ceil_mode: bool = False

    @property
    def key(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())

    def probe(self) -> nn.Module:
        """A model of this layer alone: input ``(1, in_chs, size, size)``."""
        if self.op == "conv":
            layer = nn.Sequential(nn.Conv2d(self.in_chs, self.out_chs, self.kernel, self.stride, self.padding,
                                            groups=self.groups), nn.ReLU())
        elif self.op == "conv_transpose":
            layer = nn.ConvTranspose2d(self.in_chs, self.out_chs, self.kernel, self.stride, groups=self.groups)
        elif self.op == "max_pool":
            layer = nn.MaxPool2d(self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)
        elif self.op == "resize":
            layer = nn.Upsample(scale_factor=self.stride, mode="nearest")
        elif self.op == "linear":
            layer = nn.Sequential(nn.Flatten(), nn.Linear(self.in_chs, self.out_chs))
        else:
            layer = _Elementwise(self.op)
        layer.in_chans = self.in_chs
        return layer.eval()


class _Elementwise(nn.Module):
    """``sigmoid(x)``, ``x * x``, ``x + x`` or the global mean: the element-wise layers, on one input."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "sigmoid":
            return torch.sigmoid(x)
        if self.op == "mul":
            return x * x
        if self.op == "add":
            return x + x
        return x.mean((2, 3))


def runtime_layers(model: nn.Module, img_size: int, runtime: str) -> list[Layer]:
    """The kernels ``runtime`` runs for ``model`` at batch 1, in order (BN and activations that follow a conv
    are folded or fused into it; views and reshapes are free)."""
    base = runtime.removesuffix("-int8")
    form = for_runtime(model.eval(), TARGETS[base]) if base in TARGETS else model.eval()
    chans = getattr(model, "in_chans", 3)
    graph = torch.export.export(form, (torch.zeros(1, chans, img_size, img_size),)).graph_module.graph
    layers = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        layer = _layer(node)
        if layer is not None:
            layers.append(layer)
    return layers


def _shape(node: Any) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else ()


def _activation(node: Any) -> bool:
    """Whether ``node`` is an activation (computed from the input), not a weight or a constant."""
    # torch.export names lifted parameters, buffers and constants p_*, b_*, c_*
    return isinstance(node, torch.fx.Node) and node.op != "get_attr" and not (
        node.op == "placeholder" and node.name.startswith(("p_", "b_", "c_")))


def _layer(node: torch.fx.Node) -> Layer | None:
    name = node.target.__name__.split(".")[0] if hasattr(node.target, "__name__") else str(node.target)
    args = node.args
    x = _shape(args[0]) if args else ()
    if name in ("conv2d", "convolution") and len(x) == 4:
        w = _shape(args[1])
        stride, padding = (args[3] if len(args) > 3 else [1])[0], (args[4] if len(args) > 4 else [0])[0]
        groups = args[6] if len(args) > 6 else 1
        return Layer("conv", x[1], x[2], w[0], w[2], stride, padding, groups)
    if name == "conv_transpose2d" and len(x) == 4:
        w = _shape(args[1])
        stride, groups = (args[3] if len(args) > 3 else [1])[0], args[6] if len(args) > 6 else 1
        return Layer("conv_transpose", x[1], x[2], w[1] * groups, w[2], stride, 0, groups)
    if name in ("max_pool2d", "max_pool2d_with_indices") and len(x) == 4:
        kernel = args[1][0]
        stride = (args[2] or args[1])[0] if len(args) > 2 else kernel
        padding = args[3][0] if len(args) > 3 else 0
        return Layer("max_pool", x[1], x[2], x[1], kernel, stride, padding, ceil_mode=len(args) > 5 and bool(args[5]))
    if name.startswith("upsample_nearest") and len(x) == 4:
        return Layer("resize", x[1], x[2], x[1], stride=_shape(node)[2] // x[2])
    if name == "sigmoid" and len(x) == 4:
        return Layer("sigmoid", x[1], x[2], x[1])
    if name in ("mul", "add") and len(x) == 4 and len(args) > 1 and _activation(args[1]) and _shape(args[1]) == x:
        return Layer(name, x[1], x[2], x[1])
    if name in ("mean", "adaptive_avg_pool2d") and len(x) == 4:
        return Layer("mean", x[1], x[2], x[1])
    if name in ("linear", "addmm"):
        w = _shape(args[1]) if name == "linear" else _shape(args[2])
        return Layer("linear", w[1] if name == "linear" else w[0], 1, w[0] if name == "linear" else w[1])
    return None


class LatencyTable:
    """Measured per-layer latencies (ms) for one runtime and thread count on this machine, kept in a JSON
    file (``path``) so that every later design, and every later run, reuses them."""

    def __init__(self, path: str | Path, runtime: str, threads: int = 1) -> None:
        if runtime not in RUNTIMES or runtime == "eager":
            raise AttendNetsError(f"a latency table is for an exported runtime: one of {', '.join(RUNTIMES[1:])}")
        self.path, self.runtime, self.threads = Path(path), runtime, threads
        machine = machine_info()
        self.machine = {"cpu": machine["cpu"], "cpu_flags": machine["cpu_flags"]}
        self.entries: dict[str, float] = {}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if (saved.get("runtime"), saved.get("threads"), saved.get("machine")) != (runtime, threads, self.machine):
                raise AttendNetsError(f"{self.path} was measured for {saved.get('runtime')} at {saved.get('threads')} "
                                      f"thread(s) on {saved.get('machine', {}).get('cpu')}: use another file here")
            self.entries = saved["ms"]

    def predict(self, model: nn.Module, img_size: int) -> float:
        """Predicted batch-1 latency in ms: the sum of the model's layers, measuring the ones not in the table."""
        layers = runtime_layers(model, img_size, self.runtime)
        missing = list(dict.fromkeys(layer for layer in layers if layer.key not in self.entries))
        if missing:
            self._measure(missing)
        return sum(self.entries[layer.key] for layer in layers)

    def predict_ratio(self, model: nn.Module, img_size: int, num_classes: int) -> float:
        """Predicted latency as a fraction of :data:`~attendnets.bench.REFERENCE`'s, from the same table."""
        reference = load_bench_model(REFERENCE, img_size, num_classes).module
        return self.predict(model, img_size) / self.predict(reference, img_size)

    def save(self) -> None:
        """Write the table to its file (atomically)."""
        record = {"runtime": self.runtime, "threads": self.threads, "machine": self.machine, "ms": self.entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(record, indent=1, sort_keys=True) + "\n")

    def _measure(self, layers: list[Layer]) -> None:
        with tempfile.TemporaryDirectory(prefix="attendnets-lut-") as tmp, torch_threads(self.threads):
            for index, layer in enumerate(layers):
                self.entries[layer.key] = _time_probe(layer, self.runtime, Path(tmp), index, self.threads)
        self.save()


def _time_probe(layer: Layer, runtime: str, work: Path, index: int, threads: int) -> float:
    """Median batch-1 ms of ``layer``'s probe in ``runtime`` (the best of :data:`PROBE_ROUNDS` medians)."""
    probe = random_weights_model(layer.key, layer.probe(), layer.size)
    generator = torch.Generator().manual_seed(index)
    inputs = torch.randn(16, layer.in_chs, layer.size, layer.size, generator=generator)
    call = _runtime_call(probe, runtime, index, work, {"images": inputs}, threads)
    x = inputs[:1].numpy()
    for _ in range(3):
        call(x)
    medians = []
    for _ in range(PROBE_ROUNDS):
        times = []
        for _ in range(PROBE_CALLS):
            start = time.perf_counter()
            call(x)
            times.append(1e3 * (time.perf_counter() - start))
        medians.append(statistics.median(times))
    return float(np.min(medians))
