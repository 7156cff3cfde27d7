"""8-bit weights: post-training per-channel quantization, its memory report, and fake quantization for QAT.

Every conv and linear weight is quantized symmetrically per output channel: ``scale = max|w| / 127``,
``q = round(w / scale)`` in ``[-127, 127]``, so each weight is off by at most ``scale / 2``. The paper's
AttendNets are reported at 8-bit weights; :func:`quantize_weights` gives the float model that computes
exactly with those weights (for measuring accuracy) and :class:`WeightMemory` the bytes they take.

Quantization-aware training: :func:`prepare_qat` makes every conv/linear compute with fake-quantized
weights (quantize-dequantize forward, identity backward: the straight-through estimator) while the
optimizer updates the float weights; :func:`finish_qat` bakes the quantized weights in and restores the
plain module layout, so the result saves and loads like any checkpoint.

Optionally (``prepare_qat(model, activations=True)``) the input of every conv/linear is fake-quantized
to 8 bits too, per tensor, unsigned (``quint8``, 0..255 with a zero point), with torch's own
``FakeQuantize`` and a moving-average min/max observer. The ranges keep averaging (constant 0.01) for
as long as the model trains and are used unchanged in eval mode, so evaluation never moves them. Only
conv/linear inputs are quantized; element-wise work in between (the attention condensers' sigmoid and
multiply, residual adds) stays float, as in a QDQ graph whose quantizers sit in front of each conv.

:func:`int8_state_dict` / :func:`save_int8` give the parameters exactly as they would be stored at 8
bits (int8 values, fp32 per-channel scales, everything else fp32); the file's tensor bytes are
:attr:`WeightMemory.quantized_bytes`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.nn.utils import parametrize

from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write

QMAX = 127
QUANTIZED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # weights with output channels on dim 0
INPUT_QUANT = "input_fake_quant"  # the submodule that fake-quantizes a conv/linear's input
SCALE_SUFFIX = "_scale"  # int8 storage: ``<module>.weight`` (int8) has its scales in ``<module>.weight_scale``
INT8_FORMAT = "attendnets-int8-weights"


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


def activation_fake_quant() -> FakeQuantize:
    """An 8-bit per-tensor activation quantizer: ``quint8`` with a moving-average min/max observer."""
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        averaging_constant=0.01,
    )


def _fake_quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the module sees its input fake-quantized; the range is observed only in training."""
    quantizer = getattr(module, INPUT_QUANT)
    quantizer.enable_observer(module.training)
    return (quantizer(args[0]), *args[1:])


def _input_hook_ids(module: nn.Module) -> list[int]:
    return [key for key, hook in module._forward_pre_hooks.items() if hook is _fake_quantize_input]


def prepare_qat(model: nn.Module, activations: bool = False) -> nn.Module:
    """Make every conv/linear of ``model`` (in place) compute with fake-quantized int8 weights and, with
    ``activations``, fake-quantized 8-bit inputs (see the module docstring).

    While prepared, the float weights live at ``<module>.parametrizations.weight.original`` and the
    activation quantizers at ``<module>.input_fake_quant``."""
    for _, module in _quantized_modules(model):
        if not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", FakeQuantWeight())
        if activations and not hasattr(module, INPUT_QUANT):
            weight = _stored_weight(module)
            module.add_module(INPUT_QUANT, activation_fake_quant().to(weight.device))
            module.register_forward_pre_hook(_fake_quantize_input)
    return model


def finish_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` in place, keeping the quantized weights and dropping the activation
    quantizers: the model's state dict has its usual keys again and every conv/linear weight is exactly
    representable in int8."""
    for _, module in _quantized_modules(model):
        if parametrize.is_parametrized(module, "weight"):
            _own_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if hasattr(module, INPUT_QUANT):
            for key in _input_hook_ids(module):
                del module._forward_pre_hooks[key]
            delattr(module, INPUT_QUANT)
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own. Deep copies share the class torch generates for a
    parametrized module, and removing a parametrization deletes its property from that class, which
    would break every other copy (the model being trained, its EMA)."""
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of a (possibly QAT-prepared) model with its quantized weights baked in, ready to save."""
    return finish_qat(copy.deepcopy(model))


def activation_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """The activation quantizers of a model prepared with ``activations=True``, by module name."""
    return {name: getattr(m, INPUT_QUANT) for name, m in _quantized_modules(model) if hasattr(m, INPUT_QUANT)}


@torch.no_grad()
def copy_activation_ranges(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the activation ranges of ``source`` (same architecture, both prepared).

    An EMA of the weights must not average the ranges (their initial +-inf would average to NaN): it
    takes the trained model's."""
    targets = activation_quantizers(target)
    for name, quantizer in activation_quantizers(source).items():
        targets[name].load_state_dict(quantizer.state_dict())


@dataclasses.dataclass(frozen=True)
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
    quantized = plain_copy(model)
    for _, module in _quantized_modules(quantized):
        module.weight.copy_(dequantize_per_channel(*quantize_per_channel(module.weight)))
    return quantized, weight_memory(quantized)


def int8_state_dict(model: nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
    """The parameters of ``model`` as stored at 8 bits: each conv/linear weight as int8 ``<module>.weight``
    with its fp32 per-output-channel scales in ``<module>.weight_scale``, every other parameter fp32.

    Buffers (batch-norm statistics) are included only with ``buffers`` (an 8-bit checkpoint needs them;
    :class:`WeightMemory` does not count them)."""
    tensors: dict[str, torch.Tensor] = {}
    covered: set[int] = set()
    for name, module in _quantized_modules(model):
        prefix = f"{name}." if name else ""
        q, scale = quantize_per_channel(module.weight)
        tensors[f"{prefix}weight"], tensors[f"{prefix}weight{SCALE_SUFFIX}"] = q.contiguous(), scale
        covered.add(id(_stored_weight(module)))
    for name, param in model.named_parameters():
        if id(param) not in covered:
            tensors[name] = param.detach().float().cpu().contiguous()
    if buffers:
        tensors.update((name, b.detach().cpu().contiguous()) for name, b in model.named_buffers())
    return tensors


def dequantize_state_dict(stored: dict[str, torch.Tensor], source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The float tensors that :func:`int8_state_dict` tensors stand for (other tensors pass unchanged);
    ``source`` names where they came from in the error for an int8 tensor without its scales."""
    scales = {name + SCALE_SUFFIX for name, t in stored.items() if t.dtype == torch.int8}
    if not scales <= set(stored):
        raise AttendNetsError(f"{source} lacks the scales of {sorted(scales - set(stored))[0]}")
    return {
        name: dequantize_per_channel(t, stored[name + SCALE_SUFFIX]) if t.dtype == torch.int8 else t
        for name, t in stored.items()
        if name not in scales
    }


def save_int8(model: nn.Module, path: str | os.PathLike) -> WeightMemory:
    """Write :func:`int8_state_dict` as a safetensors file (atomically); its tensor bytes equal the
    returned :attr:`WeightMemory.quantized_bytes` (the file adds only its JSON header)."""
    tensors = int8_state_dict(model)
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata={"format": INT8_FORMAT}))
    return weight_memory(model)


def load_int8(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The float parameters an int8 file written by :func:`save_int8` stands for, by parameter name."""
    if not Path(path).is_file():
        raise AttendNetsError(f"no int8 weight file {path}")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            fmt = (f.metadata() or {}).get("format")
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise AttendNetsError(f"cannot read int8 weight file {path}: {err}") from None
    if fmt != INT8_FORMAT:
        raise AttendNetsError(f"{path} is not an attendnets int8 weight file (format {fmt!r})")
    return dequantize_state_dict(stored, path)


def memory_record(memory: WeightMemory) -> dict[str, float]:
    """A :class:`WeightMemory` as a JSON-ready dict, with the totals and the ratio."""
    return {**dataclasses.asdict(memory), "quantized_bytes": memory.quantized_bytes, "ratio": memory.ratio}
