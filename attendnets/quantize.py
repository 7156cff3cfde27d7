"""8-bit weights: post-training per-channel quantization, its memory report, and fake quantization for QAT.

Every conv and linear weight is quantized symmetrically per output channel: ``scale = max|w| / 127``,
``q = round(w / scale)`` in ``[-127, 127]``, so each weight is off by at most ``scale / 2``. The paper's
AttendNets are reported at 8-bit weights; :func:`quantize_weights` gives the float model that computes
exactly with those weights (for measuring accuracy) and :class:`WeightMemory` the bytes they take.

Quantization-aware training: :func:`prepare_qat` makes every conv/linear compute with fake-quantized
weights (quantize-dequantize forward, identity backward: the straight-through estimator) while the
optimizer updates the float weights; :func:`finish_qat` bakes the quantized weights in and restores the
plain module layout, so the result saves and loads like any checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

QMAX = 127
QUANTIZED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # weights with output channels on dim 0


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 values, fp32 scale per output channel)`` of a weight whose dim 0 is the output channel.

    An all-zero channel gets scale 1 (its values are 0 whatever the scale)."""
    w = weight.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(w / _per_channel(scale, w)).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight that int8 values ``q`` with per-channel ``scale`` stand for."""
    return q.float() * _per_channel(scale, q)


def _per_channel(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


class _RoundTripSTE(torch.autograd.Function):
    """Quantize-dequantize forward; the gradient passes through unchanged (no clipping: the scale
    covers the whole channel)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_per_channel(weight)
        return dequantize_per_channel(q, scale).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def fake_quantize(weight: torch.Tensor) -> torch.Tensor:
    """Per-channel int8 fake quantization with a straight-through gradient."""
    return _RoundTripSTE.apply(weight)


class FakeQuantWeight(nn.Module):
    """A parametrization that makes a module use the fake-quantized version of its weight."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight)


def _quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)]


def prepare_qat(model: nn.Module) -> nn.Module:
    """Make every conv/linear of ``model`` (in place) compute with fake-quantized int8 weights.

    While prepared, the float weights live at ``<module>.parametrizations.weight.original``."""
    for _, module in _quantized_modules(model):
        if not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", FakeQuantWeight())
    return model


def finish_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` in place, keeping the quantized weights: the model's state dict has its
    usual keys again and every conv/linear weight is exactly representable in int8."""
    for _, module in _quantized_modules(model):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


@dataclass(frozen=True)
class WeightMemory:
    """Bytes of a model's parameters with 8-bit conv/linear weights, as they would be stored.

    ``int8_values``: one byte per conv/linear weight; ``scales``: an fp32 scale per output channel;
    ``biases``: conv/linear biases in fp32; ``other``: every other parameter (batch norm, attention
    scales) in fp32. ``float_bytes`` is every parameter in fp32. Buffers (batch-norm running
    statistics) are not parameters and are counted in neither."""

    int8_values: int
    scales: int
    biases: int
    other: int
    float_bytes: int

    @property
    def quantized_bytes(self) -> int:
        return self.int8_values + self.scales + self.biases + self.other

    @property
    def ratio(self) -> float:
        """How many times smaller the quantized parameters are."""
        return self.float_bytes / self.quantized_bytes


def weight_memory(model: nn.Module) -> WeightMemory:
    """The :class:`WeightMemory` of ``model`` once its conv/linear weights are int8."""
    values = scales = biases = 0
    covered: set[int] = set()
    for _, module in _quantized_modules(model):
        weight = module.weight
        values += weight.numel()
        scales += 4 * weight.shape[0]
        covered.add(id(_stored_weight(module)))
        if module.bias is not None:
            biases += 4 * module.bias.numel()
            covered.add(id(module.bias))
    params = list(model.parameters())
    other = sum(4 * p.numel() for p in params if id(p) not in covered)
    return WeightMemory(values, scales, biases, other, sum(4 * p.numel() for p in params))


def _stored_weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


@torch.no_grad()
def quantize_weights(model: nn.Module) -> tuple[nn.Module, WeightMemory]:
    """Post-training quantization: a copy of ``model`` whose conv/linear weights are replaced by their
    dequantized int8 values, and its :class:`WeightMemory`. ``model`` itself is not changed."""
    quantized = finish_qat(copy.deepcopy(model))
    for _, module in _quantized_modules(quantized):
        module.weight.copy_(dequantize_per_channel(*quantize_per_channel(module.weight)))
    return quantized, weight_memory(quantized)
