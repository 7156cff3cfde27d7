"""8-bit weights: round-trip error, int8 range, straight-through gradients, a QAT step, activation fake
quantization, memory arithmetic and the int8 storage file."""

from __future__ import annotations

import copy
import struct

import pytest
import safetensors.torch
import torch
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.model import build_model
from attendnets.quantize import (
    activation_quantizers,
    copy_activation_ranges,
    dequantize_per_channel,
    fake_quantize,
    finish_qat,
    load_int8,
    plain_copy,
    prepare_qat,
    quantize_per_channel,
    quantize_weights,
    save_int8,
    weight_memory,
)


def _is_int8_representable(weight: torch.Tensor) -> bool:
    q, scale = quantize_per_channel(weight)
    return torch.allclose(dequantize_per_channel(q, scale), weight, rtol=0, atol=1e-6)


def test_round_trip_error_and_range() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.logspace(-3, 1, 6)[:, None, None, None]
    w[2] = 0.0  # an all-zero channel must not divide by zero
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    assert all(int(q[c].abs().max()) == 127 for c in range(6) if c != 2)  # each channel uses its full range
    error = (w - dequantize_per_channel(q, scale)).abs().reshape(6, -1).amax(1)
    assert torch.all(error <= scale / 2 + 1e-7)
    assert torch.equal(dequantize_per_channel(q, scale)[2], torch.zeros(3, 3, 3))


def test_fake_quantize_is_straight_through() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 5, requires_grad=True)
    out = fake_quantize(w)
    q, scale = quantize_per_channel(w)
    assert torch.equal(out.detach(), dequantize_per_channel(q, scale))
    upstream = torch.randn(4, 5)
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_qat_step_on_tiny_model(tiny_spec) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec)
    keys = set(model.state_dict())
    prepare_qat(model)
    conv = model.blocks[0].conv
    assert _is_int8_representable(conv.weight.detach())
    before = conv.parametrizations.weight.original.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert conv.parametrizations.weight.original.grad is not None
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(conv.parametrizations.weight.original, before)
    finish_qat(model)
    assert set(model.state_dict()) == keys
    assert all(_is_int8_representable(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_post_training_quantization(tiny_spec) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    quantized, memory = quantize_weights(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # the input is untouched
    for m_float, m_int8 in zip(model.modules(), quantized.modules()):
        if isinstance(m_float, (nn.Conv2d, nn.Linear)):
            _, scale = quantize_per_channel(m_float.weight)
            error = (m_float.weight - m_int8.weight).abs().reshape(len(scale), -1).amax(1)
            assert torch.all(error <= scale / 2 + 1e-7) and _is_int8_representable(m_int8.weight)
    x = torch.randn(2, 3, 16, 16)
    assert quantized(x).shape == (2, 5)
    assert memory == weight_memory(model)


def test_memory_report_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 2))
    memory = weight_memory(model)
    # conv: 3*2*3*3 = 54 int8 weights, 3 scales, 3 biases; BN: 3 weights + 3 biases; linear: 6 + 2 scales + 2 biases
    assert (memory.int8_values, memory.scales, memory.biases, memory.other) == (60, 4 * 5, 4 * 5, 4 * 6)
    assert memory.quantized_bytes == 124 and memory.float_bytes == 4 * 71
    assert memory == weight_memory(prepare_qat(model))  # the same report while prepared for QAT


def test_activation_fake_quant_quantizes_inputs_and_passes_gradients(tiny_spec) -> None:
    torch.manual_seed(0)
    model = prepare_qat(build_model(tiny_spec), activations=True)
    quantizers = activation_quantizers(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(quantizers) == len(layers)
    seen: list[torch.Tensor] = []
    for layer in layers:  # forward hooks see the input after the pre-hook replaced it
        layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    model(x).logsumexp(1).sum().backward()
    assert len(seen) == len(layers)
    for tensor in seen:
        assert 1 < tensor.unique().numel() <= 256
    first = quantizers["blocks.0.0"]  # the stem conv: its input is the image, negative values and all
    levels = seen[0] / first.scale + first.zero_point
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.min() >= 0 and levels.max() <= 255
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(m.parametrizations.weight.original.grad is not None for m in layers)

    # In eval mode the ranges stay put, whatever the data.
    ranges = {name: q.scale.clone() for name, q in quantizers.items()}
    model.eval()(torch.randn(4, 3, 16, 16) * 100)
    assert all(torch.equal(q.scale, ranges[name]) for name, q in quantizers.items())


def test_plain_copy_keeps_the_prepared_model_and_its_copies_working(tiny_spec) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec)
    keys = set(model.state_dict())
    prepare_qat(model, activations=True)
    ema = copy.deepcopy(model)  # shares torch's generated parametrized classes with model
    x = torch.randn(2, 3, 16, 16)
    model(x)
    plain = plain_copy(model)
    assert set(plain.state_dict()) == keys and not activation_quantizers(plain)
    assert all(_is_int8_representable(m.weight) for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    copy_activation_ranges(model, ema)
    assert all(torch.equal(a.scale, b.scale) for a, b in zip(activation_quantizers(model).values(),
                                                              activation_quantizers(ema).values()))
    finish_qat(model)
    assert ema.eval()(x).shape == (2, 5) and activation_quantizers(ema)  # untouched by finishing model
    assert set(model.state_dict()) == keys


def test_int8_file_holds_weight_memory_bytes_and_round_trips(tmp_path, tiny_spec) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec)
    path = tmp_path / "int8.safetensors"
    memory = save_int8(model, path)
    assert memory == weight_memory(model)
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert path.stat().st_size == 8 + header + memory.quantized_bytes
    stored = safetensors.torch.load_file(path)
    assert stored["blocks.0.0.weight"].dtype == torch.int8
    assert stored["blocks.0.0.weight_scale"].dtype == torch.float32
    quantized, _ = quantize_weights(model)
    params = load_int8(path)
    assert set(params) == {name for name, _ in quantized.named_parameters()}
    for name, param in quantized.named_parameters():
        assert torch.equal(params[name], param), name

    with pytest.raises(AttendNetsError, match="no int8 weight file"):
        load_int8(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, other)
    with pytest.raises(AttendNetsError, match="is not an attendnets int8 weight file"):
        load_int8(other)
