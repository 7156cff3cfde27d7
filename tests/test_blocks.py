"""The building blocks: shapes, the VAC's formula, residuals, stochastic depth, zero-initialised last BN,
tracing (torch.fx, TorchScript), device and dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from attendnets.blocks import PEPE, ConvNormAct, VisualAttentionCondenser
from tests.conftest import assert_traces_unchanged


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


def test_vac_ablation_forms_replace_only_the_attention_values() -> None:
    """``attention="none"``: V''' = M'(V' * S) + V, with no condensation or embedding parameters;
    ``"se"``: V''' = M'(SE(V') * S) + V with timm's squeeze-excite reducing to a quarter of V''s channels."""
    torch.manual_seed(0)
    full = VisualAttentionCondenser(6, 8, embed_groups=2)
    x = torch.randn(2, 6, 9, 9)
    for attention in ("none", "se"):
        block = VisualAttentionCondenser(6, 8, attention=attention).eval()
        assert block.attention == attention and block.embed is None and block.condense is None
        with torch.no_grad():
            block.scale.copy_(torch.rand_like(block.scale) + 0.5)
            v = block.down_mix(x)
            selected = v if attention == "none" else v * torch.sigmoid(block.se.fc2(F.relu(block.se.fc1(v.mean((2, 3), keepdim=True)))))
            torch.testing.assert_close(block(x), x + block.up_mix(selected * block.scale))
        own = {n.split(".")[0] for n, _ in block.named_parameters()}
        assert own == {"none": {"down_mix", "scale", "up_mix"}, "se": {"down_mix", "se", "scale", "up_mix"}}[attention]
    se = VisualAttentionCondenser(6, 8, attention="se").se
    assert (se.fc1.in_channels, se.fc1.out_channels) == (8, 2)
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in block.parameters())
    with pytest.raises(AttributeError, match="embed_grouped"):
        _ = VisualAttentionCondenser(6, 8, attention="none").embed_grouped
    with pytest.raises(ValueError, match="attention must be one of"):
        VisualAttentionCondenser(6, 8, attention="spatial")


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


TRACING_NOISE = ("ignore:`torch.jit.script` is deprecated", "ignore:The TorchScript type system")  # torch's own


@pytest.mark.filterwarnings(*TRACING_NOISE)
@pytest.mark.parametrize(
    "make",
    [lambda: VisualAttentionCondenser(8, 4), lambda: VisualAttentionCondenser(8, 4, pool_size=3, embed_groups=2),
     lambda: VisualAttentionCondenser(8, 4, attention="none"), lambda: VisualAttentionCondenser(8, 4, attention="se"),
     lambda: PEPE(8, 4, 2, 4, 8), lambda: PEPE(8, 4, 3, 4, 12, stride=2), lambda: ConvNormAct(8, 16, 3, stride=2)],
    ids=["vac", "vac-pool-3", "vac-no-attention", "vac-se", "pepe", "pepe-stride-2", "conv"],
)
def test_blocks_trace_with_fx_and_torchscript_unchanged(make) -> None:
    """torch.fx symbolic tracing (the condenser's crop is a leaf function) and TorchScript, also of the traced
    graph, compute what the block does, at a size that makes the condenser crop its unpooled map."""
    block = make()
    block.train()(torch.randn(4, 8, 13, 11))  # non-trivial normalisation statistics
    block.eval()
    assert_traces_unchanged(block, torch.randn(2, 8, 13, 11))


@pytest.mark.parametrize(
    "make", [lambda: VisualAttentionCondenser(8, 4, drop_path=0.5), lambda: PEPE(8, 4, 2, 4, 8, drop_path=0.5)],
    ids=["vac", "pepe"],
)
def test_drop_path_drops_whole_residual_branches(make) -> None:
    """Stochastic depth: in training each sample's branch is dropped or scaled by 1/keep; the input stays."""
    block = make().eval()
    x = torch.randn(64, 8, 5, 5)
    with torch.no_grad():
        branch = block(x) - x  # eval: no stochastic depth
        block.drop_path.train()  # only the stochastic depth in training mode (BN keeps its statistics)
        added = block(x) - x
    dropped = added.flatten(1).abs().amax(1) == 0
    assert 0 < dropped.sum() < len(x)
    torch.testing.assert_close(added[~dropped], branch[~dropped] * 2)


def test_drop_path_only_on_residual_branches() -> None:
    assert isinstance(VisualAttentionCondenser(8, 4, drop_path=0.1).drop_path, DropPath)
    assert isinstance(VisualAttentionCondenser(8, 4, residual=False, drop_path=0.1).drop_path, nn.Identity)
    assert isinstance(PEPE(8, 4, 2, 4, 16, drop_path=0.1).drop_path, nn.Identity)  # no residual: 8 -> 16
    assert isinstance(PEPE(8, 4, 2, 4, 8).drop_path, nn.Identity)


@pytest.mark.parametrize(
    "make, zeroed",
    [
        (lambda: VisualAttentionCondenser(8, 4), True),
        (lambda: VisualAttentionCondenser(8, 4, residual=False), False),  # it would output zeros
        (lambda: PEPE(8, 4, 2, 4, 8, act="hardswish"), True),
        (lambda: PEPE(8, 4, 2, 4, 8, act="relu"), False),  # a zero branch before ReLU gets no gradient
        (lambda: PEPE(8, 4, 2, 4, 12), False),  # no residual
    ],
    ids=["vac", "vac-no-residual", "pepe-hardswish", "pepe-relu", "pepe-no-residual"],
)
def test_zero_init_last_starts_residual_blocks_as_identity(make, zeroed: bool) -> None:
    block = make()
    block.zero_init_last()
    last = block.up_mix if isinstance(block, VisualAttentionCondenser) else block.expand_pw
    assert bool(torch.all(last.norm.weight == 0)) is zeroed
    assert bool(torch.all(last.norm.weight == 1)) is not zeroed
    if zeroed:
        x = torch.randn(2, 8, 7, 7)
        block.train()
        assert torch.equal(block(x), x)
        block(x).square().sum().backward()
        assert torch.count_nonzero(last.norm.weight.grad) > 0  # the branch trains from there


@pytest.mark.parametrize(
    "make",
    [lambda **dd: VisualAttentionCondenser(8, 4, **dd), lambda **dd: PEPE(8, 4, 2, 4, 8, **dd),
     lambda **dd: ConvNormAct(8, 4, 3, **dd)],
    ids=["vac", "pepe", "conv"],
)
def test_blocks_create_their_tensors_on_the_device_and_dtype_asked(make) -> None:
    block = make(device="meta", dtype=torch.float64)
    tensors = dict(block.named_parameters()) | dict(block.named_buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors.values())
    assert all(t.dtype == torch.float64 for t in tensors.values() if t.is_floating_point())
