"""Every registered AttendNet and spec path: forward, backward, round-trips, timm API, export, bad specs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import attendnets  # registers the models with timm
from attendnets.blocks import PEPE, VisualAttentionCondenser
from attendnets.model import build_model
from attendnets.registry import PRESETS, load_preset
from attendnets.spec import ArchSpec, SpecError

from .conftest import TINY_SPEC
from .reliability_fixtures import ROOT

REGISTERED = sorted(set(timm.list_models("attendnet_*")))


def test_presets_are_registered() -> None:
    assert set(PRESETS) <= set(REGISTERED)


@pytest.mark.parametrize(
    "script",
    [
        # attendnets first: its import loads neither torch nor timm, and registers when timm is imported
        "import sys, attendnets\n"
        "assert not {'torch', 'timm'} & set(sys.modules)\n"
        "import timm\n"
        "assert timm.create_model('attendnet_b', num_classes=3).num_classes == 3",
        # an attendnets module imports timm, and the registration needs that module complete
        "import attendnets.data, timm\n"
        "assert timm.is_model('attendnet_a') and timm.is_model('attendnet')",
        # timm first: registered at once
        "import timm, attendnets\n"
        "assert timm.create_model('attendnet_b', num_classes=3).num_classes == 3",
    ],
    ids=["attendnets-then-timm", "attendnets-module-imports-timm", "timm-then-attendnets"],
)
def test_importing_attendnets_registers_with_timm_in_any_order(script: str) -> None:
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_public_names_load_on_first_use() -> None:
    assert attendnets.ArchSpec is ArchSpec and attendnets.build_model is build_model
    assert set(attendnets.__all__) <= set(dir(attendnets))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        attendnets.nothing  # noqa: B018


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("size", [224, 160, 97])
def test_forward_shapes(name: str, size: int) -> None:
    model = timm.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


@pytest.mark.parametrize("name", REGISTERED)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = timm.create_model(name, num_classes=3).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


@pytest.mark.parametrize("name", REGISTERED)
def test_timm_api(name: str) -> None:
    model = timm.create_model(name, num_classes=11, in_chans=1).eval()
    x = torch.randn(2, 1, 96, 96)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 3, 3)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier().out_features == 11
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    assert model.pretrained_cfg["num_classes"] == 50
    extractor = timm.create_model(name, features_only=True)
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == extractor.feature_info.channels()
    assert extractor.feature_info.reduction() == [2, 4, 8, 16, 32]


def test_spec_file_through_timm(tmp_path, tiny_spec: ArchSpec) -> None:
    path = tmp_path / "tiny.yaml"
    tiny_spec.save(path)
    model = timm.create_model("attendnet", spec=str(path))
    assert model.num_classes == 5
    assert timm.create_model("attendnet", spec=str(path), num_classes=9)(torch.randn(1, 3, 32, 32)).shape == (1, 9)
    assert attendnets.create_model(str(path), num_classes=2)(torch.randn(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("spec", [load_preset(p) for p in PRESETS] + [ArchSpec.from_dict(TINY_SPEC)], ids=lambda s: s.name)
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_spec_round_trip_builds_identical_model(tmp_path, spec: ArchSpec, suffix: str) -> None:
    path = tmp_path / f"spec{suffix}"
    spec.save(path)
    again = ArchSpec.load(path)
    assert again == spec
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec
    shapes = {k: v.shape for k, v in build_model(spec).state_dict().items()}
    assert {k: v.shape for k, v in build_model(again).state_dict().items()} == shapes


def test_spec_coerce_takes_a_spec_dict_or_path(tmp_path, tiny_spec: ArchSpec) -> None:
    path = tmp_path / "tiny.json"
    tiny_spec.save(path)
    assert ArchSpec.coerce(tiny_spec) is tiny_spec
    assert ArchSpec.coerce(TINY_SPEC) == ArchSpec.coerce(path) == ArchSpec.coerce(str(path)) == tiny_spec


@pytest.mark.parametrize("name", PRESETS)
def test_presets_have_the_layout_their_description_promises(name: str) -> None:
    """A preset's description says its channels follow the paper's layout: VACs early, PEPE modules later,
    spatial and pointwise convs, fully-connected layers, at Table 1's setting (224x224, 50 classes; its
    complexity there is test_complexity's test_presets_match_table1_within_3_percent). The built model has it."""
    spec = load_preset(name)
    assert (spec.img_size, spec.num_classes) == (224, 50)
    model = build_model(spec)
    kinds = ["vac" if isinstance(b, VisualAttentionCondenser) else "pepe" if isinstance(b, PEPE) else "conv"
             for b in model.blocks]
    half = len(kinds) // 2
    assert kinds.index("vac") < kinds.index("pepe") and kinds[::-1].index("pepe") < kinds[::-1].index("vac")
    assert kinds[:half].count("vac") > kinds[:half].count("pepe") and kinds[half:].count("pepe") > kinds[half:].count("vac")
    conv_kernels = {m.kernel_size for b, kind in zip(model.blocks, kinds) if kind == "conv"
                    for m in b.modules() if isinstance(m, nn.Conv2d)}
    assert {(3, 3), (1, 1)} <= conv_kernels  # spatial and pointwise
    in_blocks = set(model.blocks.modules())
    fully_connected = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in in_blocks]
    assert len(fully_connected) >= 2 and fully_connected[-1] is model.classifier  # hidden layer(s), then classifier
    assert model.classifier.out_features == 50


@pytest.mark.parametrize("name", [*PRESETS, "attendnet"])
def test_torch_export(name: str) -> None:
    kwargs = {"spec": TINY_SPEC} if name == "attendnet" else {}
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, 97, 97)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def _with_block(index: int, **changes) -> dict:
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["blocks"][index].update(changes)
    return spec


@pytest.mark.parametrize(
    "spec, message",
    [
        (_with_block(1, type="attention"), r"block 1: unknown block type 'attention'"),
        (_with_block(0, groups=3), r"block 0 \(conv\): groups=3 must divide"),
        (_with_block(1, mid=5), r"block 1 \(vac\): mid=5 is not divisible by embed_groups=2"),
        (_with_block(2, out=0), r"block 2 \(pepe\): out must be a positive integer"),
        (_with_block(2, mult=-1), r"block 2 \(pepe\): mult must be a positive integer"),
        (_with_block(0, kernel=2), r"block 0 \(conv\): kernel must be odd"),
        (_with_block(1, pool=16), r"block 1 \(vac\): spatial size 8 at 16px input is below its pool size 16"),
        (_with_block(1, colour="red"), r"block 1 \(vac\): unknown field\(s\) \['colour'\]"),
        (_with_block(1, act="swoosh"), r"block 1 \(vac\): unknown activation 'swoosh'"),
        ({**TINY_SPEC, "blocks": []}, r"non-empty list 'blocks'"),
        ({**TINY_SPEC, "head": {"hidden": [0]}}, r"head hidden layer 0: units must be a positive integer"),
    ],
)
def test_bad_specs_fail_at_build_naming_the_block(spec: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_model(spec)


def test_bad_spec_files(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        ArchSpec.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SpecError, match="is not valid JSON"):
        ArchSpec.load(broken)
