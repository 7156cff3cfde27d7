"""The building blocks: shapes, the VAC's formula, residuals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attendnets.blocks import PEPE, ConvNormAct, VisualAttentionCondenser


@pytest.mark.parametrize("size", [224, 160, 128, 97])
def test_vac_keeps_shape_at_even_and_odd_sizes(size: int) -> None:
    block = VisualAttentionCondenser(8, 4).eval()
    x = torch.randn(1, 8, size, size)
    assert block(x).shape == x.shape


@pytest.mark.parametrize("pool", [2, 3])
def test_vac_matches_the_papers_formula(pool: int) -> None:
    """V''' = M'(V' * sigmoid(X(E(C(V')))) * S) + V, with X = nearest unpooling cropped to V's size."""
    torch.manual_seed(0)
    block = VisualAttentionCondenser(6, 4, pool_size=pool, embed_groups=2).eval()
    with torch.no_grad():
        block.scale.copy_(torch.rand_like(block.scale) + 0.5)
    x = torch.randn(2, 6, 13, 11)
    with torch.no_grad():
        v = block.down_mix(x)
        q = F.max_pool2d(v, pool, pool, ceil_mode=True)
        k = block.embed(q)
        a = k.repeat_interleave(pool, dim=2).repeat_interleave(pool, dim=3)[..., :13, :11]
        expected = x + block.up_mix(v * torch.sigmoid(a) * block.scale)
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_vac_scale_shapes_and_no_residual() -> None:
    assert VisualAttentionCondenser(8, 4, scale="channel").scale.shape == (1, 4, 1, 1)
    assert VisualAttentionCondenser(8, 4, scale="scalar").scale.shape == (1, 1, 1, 1)
    block = VisualAttentionCondenser(8, 4, residual=False).eval()
    with torch.no_grad():
        for p in block.up_mix.parameters():
            p.zero_()
        assert torch.count_nonzero(block(torch.randn(1, 8, 9, 9))) == 0
    with pytest.raises(ValueError, match="scale"):
        VisualAttentionCondenser(8, 4, scale="pixel")


def test_pepe_shapes_and_residual() -> None:
    same = PEPE(16, 8, 2, 8, 16)
    assert same.residual
    assert same(torch.randn(2, 16, 9, 9)).shape == (2, 16, 9, 9)
    down = PEPE(16, 8, 3, 8, 24, stride=2)
    assert not down.residual
    assert down(torch.randn(2, 16, 9, 9)).shape == (2, 24, 5, 5)
    assert down.expand_dw.conv.out_channels == 24 and down.expand_dw.conv.groups == 8


def test_conv_norm_act_layers() -> None:
    pointwise = ConvNormAct(8, 16, 1)
    spatial = ConvNormAct(8, 16, 3, stride=2)
    depthwise = ConvNormAct(8, 16, 3, groups=8)
    x = torch.randn(1, 8, 7, 7)
    assert pointwise(x).shape == (1, 16, 7, 7)
    assert spatial(x).shape == (1, 16, 4, 4)
    assert depthwise(x).shape == (1, 16, 7, 7)
    assert depthwise.conv.weight.shape == (16, 1, 3, 3)


def test_conv_norm_act_names_keep_the_state_dict_keys() -> None:
    layer = ConvNormAct(8, 16, 3)
    assert layer.conv is layer[0] and layer.norm is layer[1]
    keys = set(layer.state_dict())
    assert {"0.weight", "1.running_mean"} <= keys
    dense = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    layer.replace_conv(dense)
    assert layer.conv is dense and set(layer.state_dict()) == keys
    assert isinstance(ConvNormAct(8, 16, norm=False).norm, nn.Identity)
