"""The profiler against hand counts, Table 1, and simple memory schedules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attendnets.complexity import (
    MICRO_BYTES_PER_CONV_CHANNEL,
    MICRO_BYTES_PER_OP,
    MICRO_BYTES_PER_TENSOR,
    _Buffer,
    _greedy_plan,
    _Timeline,
    profile_model,
)
from attendnets.model import build_model
from attendnets.registry import TABLE1, create_model


def test_macs_and_params_match_a_hand_count(tiny_spec) -> None:
    """Tiny spec at 3x16x16: conv 3->8 s2 (8x8), VAC 8 (mid 4, 2 groups), PEPE s2 -> 16 (4x4), FC 16->12->5."""
    macs = {
        "stem 3x3": 8 * 8 * 8 * 3 * 9,
        "vac down-mix": 8 * 8 * 4 * 8,
        "vac grouped 3x3 at 4x4": 4 * 4 * 4 * 2 * 9,
        "vac embed 1x1": 4 * 4 * 4 * 4,
        "vac up-mix": 8 * 8 * 8 * 4,
        "pepe project": 8 * 8 * 4 * 8,
        "pepe depthwise x2 s2": 4 * 4 * 8 * 9,
        "pepe project2": 4 * 4 * 4 * 8,
        "pepe expand": 4 * 4 * 16 * 4,
        "fc": 16 * 12,
        "classifier": 12 * 5,
    }
    params = {
        "stem": 8 * 27 + 2 * 8,
        "vac": (4 * 8 + 8) + (4 * 2 * 9 + 8) + (4 * 4 + 4) + 4 + (8 * 4 + 16),
        "pepe": (4 * 8 + 8) + (8 * 9 + 16) + (4 * 8 + 8) + (16 * 4 + 32),
        "head": (16 * 12 + 12) + (12 * 5 + 5),
    }
    result = profile_model(build_model(tiny_spec), img_size=16)
    assert result.macs == sum(macs.values()) == 24316
    assert result.params == sum(params.values())
    assert result.weight_bytes_fp32 == 4 * result.params and result.weight_bytes_int8 == result.params
    assert result.unclassified == []


def test_vac_other_ops_are_counted(tiny_spec) -> None:
    """The VAC's non-MAC work at 8x8 with 4 mid channels: pooling, resampling, sigmoid, multiplies."""
    vac = profile_model(build_model(tiny_spec), img_size=16).per_block["blocks.1"]
    pooling = 4 * 4 * 4 * 4  # 2x2 max pool, 4x4x4 outputs
    resampling = 4 * 8 * 8  # nearest unpooling to 8x8
    # BN+ReLU after down-mix and embed conv, sigmoid, two multiplies, BN after up-mix, residual add
    elementwise = 2 * 256 + 2 * 64 + 64 + 2 * 256 + 512 + 512
    assert vac["other_ops"] == pooling + resampling + elementwise


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_mobilenets_match_table1_within_1_percent(name: str) -> None:
    result = profile_model(create_model(name, num_classes=50))
    assert result.params == pytest.approx(TABLE1[name].params, rel=0.01)
    assert result.macs == pytest.approx(TABLE1[name].macs, rel=0.01)
    assert result.unclassified == []


@pytest.mark.parametrize("name", ["attendnet_a", "attendnet_b"])
def test_presets_match_table1_within_3_percent(name: str) -> None:
    result = profile_model(create_model(name, num_classes=50))
    assert result.params == pytest.approx(TABLE1[name].params, rel=0.03)
    assert result.macs == pytest.approx(TABLE1[name].macs, rel=0.03)


def test_peak_activation_of_a_chain() -> None:
    """conv 3->8 (3x8x8 in, 8x8x8 out), BN and ReLU in place, conv 8->4: peak is 8x8x8 + 4x8x8."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    result = profile_model(model, img_size=8, in_chans=3)
    assert result.peak_activation_elements == 512 + 256
    assert result.peak_activation_bytes_fp32 == 4 * (512 + 256)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.wide = nn.Conv2d(3, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(x + self.conv(x))


def test_peak_activation_keeps_the_skip_alive() -> None:
    """The input (192) lives through the conv (192 more); the add writes in place; then 192 + 1024."""
    result = profile_model(Residual(), img_size=8, in_chans=3)
    assert result.peak_activation_elements == 192 + 16 * 64


def test_profiler_restores_training_mode(tiny_spec) -> None:
    model = build_model(tiny_spec).train()
    profile_model(model, img_size=16)
    assert model.training


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def _aligned(n: int) -> int:
    return -(-n // 16) * 16


def test_micro_arena_counts_new_tensors_for_element_wise_ops() -> None:
    """``x + conv(x)`` on 4x8x8: in place the add reuses a dying buffer (peak x + y); TFLite Micro's ADD writes a
    tensor of its own (x + y + sum)."""
    c = profile_model(_Residual(), 8, in_chans=4)
    assert c.peak_activation_elements == 2 * 256 and c.micro_arena_planned_bytes == 3 * 256


@pytest.mark.parametrize("size, copy", [(8, 3 * 10 * 10), (7, 0)])
def test_micro_arena_counts_explicit_padding(size: int, copy: int) -> None:
    """A 3x3 stride-2 conv padded 1 on both sides: on an even size TFLite's SAME padding (0 before, 1 after)
    differs, so the converter pads a copy of the input first (input and copy alive at the PAD); on an odd size
    SAME is the same padding and there is no copy."""
    c = profile_model(nn.Conv2d(3, 4, 3, stride=2, padding=1), size)
    image, out = 3 * size * size, 4 * ((size + 1) // 2) ** 2
    assert c.peak_activation_elements == image + out
    expected = _aligned(image) + _aligned(copy) if copy else _aligned(image) + _aligned(out)
    assert c.micro_arena_planned_bytes == expected


def test_greedy_plan_leaves_the_gaps_tflite_micro_leaves() -> None:
    """Largest first, each at the lowest free offset: A and D share offset 0, B goes above A, and C, alive with
    B and D, finds no gap below B: 144 bytes, though at most 112 are alive at once."""
    buffers = [_Buffer(64, 0, 1), _Buffer(48, 1, 2), _Buffer(32, 2, 3), _Buffer(64, 3, 4)]
    assert _Timeline(buffers, ops=4, constants=0, conv_channels=0).peak_live() == 112
    assert _greedy_plan(buffers) == 144


def test_micro_arena_persistent_part_grows_with_ops_tensors_and_channels() -> None:
    small, wide = profile_model(nn.Conv2d(3, 8, 1), 8), profile_model(nn.Conv2d(3, 16, 1), 8)
    deeper = profile_model(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)), 8)
    assert wide.micro_arena_persistent_bytes - small.micro_arena_persistent_bytes == 8 * MICRO_BYTES_PER_CONV_CHANNEL
    assert deeper.micro_arena_persistent_bytes - small.micro_arena_persistent_bytes == (
        MICRO_BYTES_PER_OP + 3 * MICRO_BYTES_PER_TENSOR + 8 * MICRO_BYTES_PER_CONV_CHANNEL)
    assert small.micro_arena_bytes == small.micro_arena_planned_bytes + small.micro_arena_persistent_bytes
