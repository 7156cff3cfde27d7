"""The arms of benchmarks/presets.py and benchmarks/ablation.py build the architectures they describe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from attendnets.complexity import profile_model
from attendnets.model import AttendNet
from attendnets.registry import load_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ablation  # noqa: E402
import presets  # noqa: E402


@pytest.fixture(scope="module")
def preset_macs() -> int:
    return profile_model(AttendNet(load_preset("attendnet_b")), img_size=224).macs


@pytest.mark.parametrize("arm, attention, widened", [
    ("no-attention", "none", False), ("no-attention-wider", "none", True), ("squeeze-excite", "se", True)])
def test_ablation_arms_change_only_the_condensers_attention(preset_macs, arm, attention, widened) -> None:
    preset = load_preset("attendnet_b")
    spec = ablation.ARMS[arm].spec(preset)
    changed = [i for i, (a, b) in enumerate(zip(preset.blocks, spec.blocks, strict=True)) if a != b]
    assert changed == [1, 2, 5, 6, 8]  # the condensers
    assert {spec.blocks[i].attention for i in changed} == {attention}
    assert all((spec.blocks[i].mid > preset.blocks[i].mid) is widened for i in changed)
    macs = profile_model(AttendNet(spec), img_size=224).macs
    if widened:  # the freed multiply-adds given back: equal cost within 0.1%
        assert abs(macs / preset_macs - 1) < 1e-3
    else:  # the attention branches' cost removed
        assert macs < 0.95 * preset_macs


def test_preset_arms_change_what_they_say(preset_macs) -> None:
    preset = load_preset("attendnet_b")
    wide = presets.ARMS["pepe-wide-proj2"].spec(preset)
    assert [b.proj2 for b in wide.blocks if b.type == "pepe"] == list(presets.WIDE_PROJ2)
    narrow = presets.ARMS["vac28-narrow"].spec(preset)
    assert [b.mid for b in narrow.blocks if b.type == "vac"] == [16, 16, 32, 32, 32]
    assert "--weight-init" in presets.ARMS["init-torch"].options
