"""Operational requirements of a design search, and the costs of a design they are checked against.

Every cost is measured at the *deployment* size (image size and class count of the target), before any
training: parameters and 8-bit weight memory from the built model, MACs and peak activation memory from
:func:`attendnets.complexity.profile_model` (batch 1), latency with :class:`attendnets.bench.LatencyMeter`
(batch 1, a given thread count, in the deployment's runtime: PyTorch eager, or the file ``attendnets export``
writes for ONNX Runtime, LiteRT, ExecuTorch or TFLite Micro, int8 ones all-integer). Latency is timed
interleaved with MobileNet-V1 in the same runtime and also kept as a ratio to it (``latency_ratio``), which
survives the machine's drift and load where milliseconds do not. KB means 1024 bytes.

Peak activation memory is capped at **1 byte per element** (``peak_activation_kb``): the deployment the
search aims at runs 8-bit activations, as the int8 ONNX export does; the fp32 figure (4 bytes per element)
is recorded as ``peak_activation_kb_fp32``. A microcontroller's limit is the TFLite Micro tensor arena of
the int8 model (``micro_arena_kb``: the profiler's estimate, which matched TFLite Micro's own report
within 2 KB on every model of docs/results/deploy.md), measured only when it is capped or an objective.

Each requirement enters an Optuna study as a constraint (feasible when <= 0) scaled by its limit, so that
the sampler can add violations of different units: ``value / cap - 1`` for a cap, ``1 - top1 / min`` for
``min_top1``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from torch import nn

from attendnets.bench import RUNTIMES, LatencyMeter
from attendnets.complexity import profile_model
from attendnets.errors import AttendNetsError
from attendnets.export import Target, for_runtime
from attendnets.model import build_model
from attendnets.quantize import weight_memory
from attendnets.search.predictor import LatencyTable
from attendnets.search.settings import PREDICTION_MARGIN
from attendnets.spec import ArchSpec

COST_LABELS = {
    "macs": "MACs",
    "params": "parameters",
    "weight_kb": "8-bit weight KB",
    "peak_activation_kb": "peak activation KB (int8)",
    "micro_arena_kb": "TFLite Micro arena KB",
    "latency_ms": "latency ms",
    "latency_ratio": "latency / MobileNet-V1's",
}
# Cheapest first: a cap broken by a cheap cost spares measuring the expensive ones.
TIERS = (("params", "weight_kb"), ("macs", "peak_activation_kb", "micro_arena_kb"), ("latency_ms", "latency_ratio"))
LATENCY = {"latency_ms", "latency_ratio"}
LATENCY_ROUNDS = 5


@dataclass
class Requirements:
    """Caps on costs (None: no cap) and a floor on top-1 (percent, at the fidelity it is measured at)."""

    max_params: float | None = None
    max_macs: float | None = None
    max_weight_kb: float | None = None
    max_peak_activation_kb: float | None = None
    max_micro_arena_kb: float | None = None
    max_latency_ms: float | None = None
    max_latency_ratio: float | None = None
    min_top1: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not value > 0:
                raise AttendNetsError(f"--{f.name.replace('_', '-')} must be positive, got {value}")
        if self.min_top1 is not None and self.min_top1 > 100:
            raise AttendNetsError(f"--min-top1 is a percentage, got {self.min_top1}")

    def caps(self) -> dict[str, float]:
        """``{cost name: cap}`` of the caps that are set."""
        return {f.name[4:]: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith("max_") and getattr(self, f.name) is not None}

    def constraint_names(self) -> list[str]:
        """Every constraint a finished trial carries (the same set on every trial, as samplers expect)."""
        return ["buildable", *(f"max_{c}" for c in self.caps()), *(["min_top1"] if self.min_top1 else [])]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        parts = [f"{COST_LABELS[c]} <= {_fmt(v)}" for c, v in self.caps().items()]
        if self.min_top1:
            parts.append(f"top-1 >= {self.min_top1:g}%")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Deployment:
    """Where the costs are measured: image size, class count, and for latency the CPU threads and the runtime
    (one of :data:`attendnets.bench.RUNTIMES`)."""

    img_size: int
    num_classes: int
    threads: int = 2
    runtime: str = "eager"
    latency_table: str | None = None  # a LatencyTable file: reject designs predicted far over the ratio cap unmeasured


def measure_costs(spec: ArchSpec, deployment: Deployment, needed: set[str], caps: dict[str, float]) -> dict[str, float]:
    """The costs of ``spec`` at the deployment size, tier by tier (:data:`TIERS`, cheapest first). Once a cap
    is broken, only tiers holding a cost in ``needed`` are still measured; latency is measured only when
    needed or capped. Raises :class:`~attendnets.spec.SpecError` when the spec cannot be built."""
    model = build_model(spec, num_classes=deployment.num_classes)
    costs: dict[str, float] = {}
    for tier in TIERS:
        wanted = set(tier) & needed
        if LATENCY & set(tier) and not wanted and not LATENCY & set(caps):
            continue
        if not wanted and any(costs[c] > caps[c] for c in costs if c in caps):
            continue
        if "params" in tier:
            costs["params"] = float(sum(p.numel() for p in model.parameters()))
            costs["weight_kb"] = weight_memory(model).quantized_bytes / 1024
        elif "macs" in tier:
            micro = "micro_arena_kb" in needed or "micro_arena_kb" in caps  # a second trace: only when asked
            micro_form = for_runtime(model, Target.MICRO) if micro else None
            profile = profile_model(model, deployment.img_size, micro_form=micro_form)
            costs["macs"] = float(profile.macs)
            costs["peak_activation_kb"] = profile.peak_activation_bytes_int8 / 1024
            costs["peak_activation_kb_fp32"] = profile.peak_activation_bytes_fp32 / 1024
            if micro:
                costs["micro_arena_kb"] = profile.micro_arena_bytes / 1024
        else:
            costs.update(_latency(model, spec.name, deployment, needed, caps))
    return costs


def _latency(model: nn.Module, name: str, deployment: Deployment, needed: set[str], caps: dict[str, float]) -> dict:
    """Measured latency; with a latency table and a ratio cap, first the predicted ratio, and a design predicted
    above the cap times :data:`PREDICTION_MARGIN` keeps that prediction instead (``latency_predicted`` 1), unless
    its milliseconds are needed."""
    out: dict[str, float] = {}
    cap = caps.get("latency_ratio")
    if deployment.latency_table and cap:
        table = latency_table(deployment)
        out["predicted_latency_ratio"] = table.predict_ratio(model, deployment.img_size, deployment.num_classes)
        if out["predicted_latency_ratio"] > cap * PREDICTION_MARGIN and "latency_ms" not in needed:
            return {**out, "latency_ratio": out["predicted_latency_ratio"], "latency_predicted": 1.0}
    latency = latency_meter(deployment).measure(model, name)
    return {**out, "latency_ms": latency["latency_ms"], "latency_ratio": latency["latency_ratio"]}


def check_runtime(runtime: str) -> None:
    """Refuse a latency runtime that :mod:`attendnets.bench` does not know, before any work."""
    if runtime not in RUNTIMES:
        raise AttendNetsError(f"unknown --runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


@functools.cache
def latency_table(deployment: Deployment) -> LatencyTable:
    """The deployment's per-layer latency table, loaded once per process."""
    return LatencyTable(deployment.latency_table, deployment.runtime, deployment.threads)


@functools.cache
def latency_meter(deployment: Deployment) -> LatencyMeter:
    """One meter per deployment and process: the reference is exported and loaded once for every design."""
    return LatencyMeter(deployment.runtime, deployment.img_size, deployment.num_classes, deployment.threads,
                        rounds=LATENCY_ROUNDS)


def cap_constraints(costs: dict[str, float], requirements: Requirements) -> dict[str, float]:
    """``max_<cost>``: ``value / cap - 1`` (<= 0 when met); 0 for a cost not measured (another cap was
    broken first, so the trial is infeasible anyway)."""
    return {f"max_{c}": costs[c] / cap - 1 if c in costs else 0.0 for c, cap in requirements.caps().items()}


def accuracy_constraint(top1: float | None, requirements: Requirements) -> dict[str, float]:
    """``min_top1``: ``1 - top1 / min`` (<= 0 when top-1 reaches the floor); an untrained design (``top1``
    None) counts as 0%."""
    if not requirements.min_top1:
        return {}
    return {"min_top1": 1 - (top1 or 0.0) / requirements.min_top1}


def _fmt(value: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= div:
            return f"{value / div:.4g}{suffix}"
    return f"{value:.4g}"


def format_cost(name: str, value: float) -> str:
    """A cost for people: ``45.3M MACs``, ``212K parameters``, ``180.5 KB``, ``12.3 ms``."""
    if name in ("macs", "params"):
        return f"{_fmt(value)} {COST_LABELS[name]}"
    if name == "latency_ratio":
        return f"{value:.3g}x MobileNet-V1's latency"
    unit = "ms" if name == "latency_ms" else "KB"
    return f"{value:.1f} {unit}"
