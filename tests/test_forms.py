"""Deployment forms: every block's runtime form computes what the block computes, for every target, and the
channel orders a tiled depthwise expansion leaves are absorbed by whatever follows it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attendnets.blocks import (
    MAX_DENSE_GROUPS,
    PEPE,
    ConvNormAct,
    NearestExpand,
    Target,
    TiledDepthwise,
    TransposedConvExpand,
    VisualAttentionCondenser,
)
from attendnets.export.forms import ChannelGather, RepeatedDepthwise, for_runtime
from attendnets.model import build_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, attention scales and classifier weights (logits of
    order 1), so that a rewrite that drops or misplaces any of them shows; eval mode."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 1.0)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_var, 0.5, 2.0)
            for t in (m.running_mean, m.bias):
                nn.init.normal_(t, 0, 0.3)
            nn.init.normal_(m.weight, 1, 0.3)
        if isinstance(m, VisualAttentionCondenser):
            nn.init.normal_(m.scale, 1, 0.5)
    return model.eval()


def assert_same(form: nn.Module, original: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = original(x)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(form(x), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("target", list(Target))
@pytest.mark.parametrize("scale, groups, size", [("channel", 2, 9), ("scalar", 4, 8), ("channel", 8, 7)])
def test_vac_forms(target, scale, groups, size) -> None:
    torch.manual_seed(0)
    vac = randomise(VisualAttentionCondenser(6, 8, embed_groups=groups, scale=scale))
    form = vac.runtime_form(target)
    assert form.scale is None and not any("scale" in k for k in form.state_dict())  # folded into M'
    assert vac.scale is not None  # the original is untouched
    dense = target is Target.ORT and groups <= MAX_DENSE_GROUPS
    assert form.embed_grouped.conv.groups == (1 if dense else groups)
    assert isinstance(form.expand, TransposedConvExpand if target is Target.XNNPACK else NearestExpand)
    assert_same(form, vac, torch.randn(2, 6, size, size))


@pytest.mark.parametrize("target", list(Target))
@pytest.mark.parametrize("mult, kernel, stride", [(3, 3, 2), (2, 5, 1)])
def test_pepe_forms(target, mult, kernel, stride) -> None:
    torch.manual_seed(0)
    pepe = randomise(PEPE(6, 4, mult, 4, 6, kernel_size=kernel, stride=stride))
    form = pepe.runtime_form(target)
    if target is Target.ORT:  # no depthwise conv with a channel multiplier left
        assert isinstance(form.expand_dw, TiledDepthwise) and form.expand_dw.layer.conv.groups == 4 * mult
    else:
        assert form.expand_dw.multiplier == mult
    assert pepe.expand_dw.conv.groups == 4
    assert_same(form, pepe, torch.randn(2, 6, 9, 9))


def _spec(*blocks: dict, hidden: list[int] | None = None) -> ArchSpec:
    stem = [{"type": "conv", "out": 8, "kernel": 3, "stride": 2}, {"type": "conv", "out": 16, "groups": 8, "stride": 2}]
    return ArchSpec.from_dict({**TINY_SPEC, "blocks": [*stem, *blocks], "head": {"hidden": hidden or []}})


FOLLOWERS = {
    "vac with residual, then a dense conv": [{"type": "vac", "mid": 8}, {"type": "conv", "out": 12, "kernel": 1}],
    "pepe with residual": [{"type": "pepe", "proj": 8, "proj2": 8, "out": 16}],
    "another depthwise expansion": [{"type": "conv", "out": 32, "groups": 16}],
    "a grouped conv": [{"type": "conv", "out": 16, "kernel": 3, "groups": 4}],
    "vac without residual": [{"type": "vac", "mid": 8, "residual": False}],
}


@pytest.mark.parametrize("target", list(Target))
@pytest.mark.parametrize("follower", list(FOLLOWERS))
def test_model_forms_absorb_channel_orders(target, follower) -> None:
    """A depthwise expansion (8 -> 16 channels, its output tiled in ONNX Runtime) followed by blocks that pass
    its channel order on or absorb it; whatever is left reaches the classifier's columns."""
    torch.manual_seed(0)
    model = randomise(build_model(_spec(*FOLLOWERS[follower])))
    form = for_runtime(model, target)
    kinds = {type(m) for m in form.modules()}
    assert (TiledDepthwise in kinds) == (target is Target.ORT)
    assert not kinds & {RepeatedDepthwise, ChannelGather}  # no layout op anywhere
    assert_same(form, model, torch.randn(2, 3, 20, 20))


def test_order_left_without_a_head_is_restored() -> None:
    """With no fully-connected layer to absorb it (a features-only model), the order is put back once."""
    torch.manual_seed(0)
    model = randomise(build_model(_spec()))
    model.reset_classifier(0)
    form = for_runtime(model, Target.ORT)
    assert isinstance(form.blocks[-1], ChannelGather)
    assert_same(form, model, torch.randn(2, 3, 20, 20))


def test_bare_depthwise_expansion_outside_an_attendnet() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 12, 3, padding=1, groups=4)
    form = for_runtime(nn.Sequential(conv), Target.ORT)[0]
    assert isinstance(form, RepeatedDepthwise) and form.conv.groups == 12
    assert torch.equal(form.conv.weight, conv.weight)
    assert_same(form, conv, torch.randn(2, 4, 7, 7))
    layer = randomise(ConvNormAct(4, 8, 3, groups=4))  # our layer alone: tiled, then put back in order
    assert_same(for_runtime(layer, Target.ORT), layer, torch.randn(2, 4, 7, 7))


@pytest.mark.parametrize("target", list(Target))
def test_presets_forms(target) -> None:
    torch.manual_seed(0)
    for name in ("attendnet_a", "attendnet_b"):
        model = randomise(build_model(ArchSpec.load(f"attendnets/presets/{name}.json"), num_classes=10))
        assert_same(for_runtime(model, target), model, torch.randn(1, 3, 45, 45))
