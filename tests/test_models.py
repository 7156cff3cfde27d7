"""Every registered AttendNet and spec path: forward, backward, round-trips, timm API, export, bad specs, and
timm's model contract (drop rates, device/dtype, heads, intermediates, checkpointing, param groups, tracing,
pretrained files, a training step with timm's training parts)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
from timm.layers import DropPath
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from torch import nn

import attendnets  # registers the models with timm
from attendnets import model as model_module
from attendnets.blocks import PEPE, VisualAttentionCondenser
from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.errors import AttendNetsError
from attendnets.model import AttendNet, build_model
from attendnets.pretrained import shipped
from attendnets.registry import FOUND_PRESETS, PAPER_PRESETS, PRESETS, load_preset
from attendnets.spec import ArchSpec, SpecError

from .conftest import TINY_SPEC, assert_traces_unchanged
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
    # In eval mode: in training mode the bias of a BN whose output goes through a 1x1 conv into another BN (a
    # PEPE's second projection without its residual) changes nothing, the second BN removes it, and its
    # gradient is zero up to rounding: exactly zero at the 1x1 maps of a 64x-downsampling design. Without
    # zero_init_last: at the first step a zeroed BN passes no gradient to its branch (only to its own weight).
    model = timm.create_model(name, num_classes=3, zero_init_last=False).eval()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


@pytest.mark.parametrize("name", REGISTERED)
def test_timm_api(name: str) -> None:
    model = timm.create_model(name, num_classes=11, in_chans=1).eval()
    x = torch.randn(2, 1, 96, 96)
    features = model.forward_features(x)
    side = math.ceil(96 / model.feature_info[-1]["reduction"])  # 3 for the paper's 32x reduction
    assert features.shape == (2, model.num_features, side, side)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier().out_features == 11
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    assert model.pretrained_cfg["num_classes"] == (load_preset(name).num_classes if name in PRESETS else 50)  # the spec's
    extractor = timm.create_model(name, features_only=True).eval()
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == extractor.feature_info.channels()
    assert [m.shape[-1] for m in maps] == [math.ceil(64 / r) for r in extractor.feature_info.reduction()]
    if name not in FOUND_PRESETS:
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


@pytest.mark.parametrize("name", PAPER_PRESETS)
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


# -- timm's model contract (issue 16), as timm's MobileNetV3 and EfficientNet give it -----------------------

NO_HIDDEN_LAYER = {**TINY_SPEC, "head": {"hidden": []}}
CONDENSER_FIRST = {**TINY_SPEC, "blocks": [{"type": "vac", "mid": 4, "embed_groups": 2}, *TINY_SPEC["blocks"]]}
TRACING_NOISE = ("ignore:`torch.jit.script` is deprecated", "ignore:The TorchScript type system")  # torch's own


def _assert_same(found: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_attendnet_without_a_spec_builds_attendnet_b() -> None:
    default, preset = timm.create_model("attendnet"), timm.create_model("attendnet_b")
    assert default.spec == preset.spec == load_preset("attendnet_b")
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in preset.state_dict().items()}


@pytest.mark.parametrize(
    "name, spec",
    [(p, None) for p in PRESETS] + [("attendnet", TINY_SPEC), ("attendnet", CONDENSER_FIRST)],
    ids=[*PRESETS, "tiny", "condenser-first"],
)
def test_pretrained_cfg_follows_the_spec(name: str, spec: dict | None) -> None:
    """Input size from spec.img_size, the spec's classes, the real first conv, pool_size the final map's size;
    the registry's cfgs of the presets agree."""
    model = timm.create_model(name, num_classes=2, device="meta", **({"spec": spec} if spec else {}))
    cfg, spec = model.pretrained_cfg, model.spec
    assert cfg["input_size"] == (spec.in_chans, spec.img_size, spec.img_size)
    assert cfg["num_classes"] == spec.num_classes
    assert cfg["first_conv"] == next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    features = model.forward_features(torch.empty(1, *cfg["input_size"], device="meta"))
    assert tuple(features.shape[-2:]) == cfg["pool_size"]
    if name in PRESETS and name not in shipped():  # a shipped one registers its checkpoint's: test_pretrained.py
        registered = timm.models.get_pretrained_cfg(name).to_dict()
        assert all(registered[k] == cfg[k] for k in ("input_size", "num_classes", "first_conv", "pool_size"))


@pytest.mark.parametrize("spec", [TINY_SPEC, NO_HIDDEN_LAYER], ids=["hidden-layer", "no-hidden-layer"])
def test_drop_rate_is_dropout_right_before_the_classifier(spec: dict) -> None:
    model = timm.create_model("attendnet", spec=spec, drop_rate=0.5).eval()
    seen: list[torch.Tensor] = []
    model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        model(x)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()  # dropout alone in training mode: the rest of the model stays deterministic
        model(x)
    kept, dropped = seen
    zeroed = dropped == 0
    assert torch.any(zeroed & (kept != 0))
    torch.testing.assert_close(dropped[~zeroed], kept[~zeroed] * 2)


def test_drop_path_rate_follows_timms_linear_schedule_on_residual_blocks() -> None:
    model = timm.create_model("attendnet_b", drop_path_rate=0.2)
    last = len(model.blocks) - 1
    drop_paths = {i: getattr(b, "drop_path", None) for i, b in enumerate(model.blocks)}
    rates = {i: d.drop_prob for i, d in drop_paths.items() if isinstance(d, DropPath)}
    residual = [i for i, b in enumerate(model.blocks) if isinstance(b, (VisualAttentionCondenser, PEPE)) and b.residual]
    assert sorted(rates) == residual
    assert {type(model.blocks[i]) for i in residual} == {VisualAttentionCondenser, PEPE}
    assert all(rate == pytest.approx(0.2 * i / last) for i, rate in rates.items())
    assert model.state_dict().keys() == timm.create_model("attendnet_b").state_dict().keys()


def test_device_and_dtype_arguments() -> None:
    model = timm.create_model("attendnet_b", num_classes=3, device="meta", dtype=torch.float16)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float16 for t in tensors if t.is_floating_point())
    tiny = timm.create_model("attendnet", spec=TINY_SPEC, dtype=torch.float64).eval()
    assert tiny(torch.randn(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_reset_classifier_pools_by_average_maximum_or_not_and_keeps_device_and_dtype() -> None:
    model = timm.create_model("attendnet", spec=TINY_SPEC, dtype=torch.float64).eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)

    def head(pooled: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.pre_logits(pooled))

    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(3, "max")
        assert model.classifier.weight.dtype == torch.float64 and not any(m.training for m in model.modules())
        torch.testing.assert_close(model(x), head(features.amax((2, 3))))
        model.reset_classifier(3, "avg")
        torch.testing.assert_close(model(x), head(features.mean((2, 3))))
        model.reset_classifier(3, "")  # no pooling: the head at every position
        assert model(x).shape == (2, 3, *features.shape[-2:])
        torch.testing.assert_close(model(x)[..., 1, 2], head(features[..., 1, 2]))
        model.reset_classifier(0)  # keeps the pooling
        assert model(x).shape == (2, model.head_hidden_size, *features.shape[-2:])
        unpooled = timm.create_model("attendnet", spec=TINY_SPEC, num_classes=0, global_pool="")
        assert unpooled(x.float()).shape == (2, unpooled.head_hidden_size, *features.shape[-2:])
    with pytest.raises(AttendNetsError, match="global_pool must be"):
        model.reset_classifier(3, "catavgmax")
    model.to(device="meta")
    model.reset_classifier(0)
    model.reset_classifier(2)
    assert (model.classifier.weight.device.type, model.classifier.weight.dtype) == ("meta", torch.float64)


def test_forward_intermediates_and_pruning_follow_timms_semantics() -> None:
    model = timm.create_model("attendnet_b", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        info = [(f["num_chs"], f["reduction"]) for f in model.feature_info]
        assert [(t.shape[1], 64 // t.shape[-1]) for t in taps] == info
        _assert_same(model.forward_intermediates(x, indices=2, intermediates_only=True), taps[-2:])
        _assert_same(model.forward_intermediates(x, indices=[0, -1], norm=True)[1], [taps[0], taps[-1]])
        for i, tap in enumerate(taps):
            _assert_same(model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True), [tap])
        whole = copy.deepcopy(model)
        whole.prune_intermediate_layers([len(taps) - 1], prune_head=False)
        torch.testing.assert_close(whole(x), model(x), rtol=0, atol=0)
    for i, tap in enumerate(taps):
        pruned = copy.deepcopy(model)
        kept = pruned.prune_intermediate_layers([i])
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), tap, rtol=0, atol=0)  # the unpooled map of the last kept block
            _assert_same(pruned.forward_intermediates(x, indices=kept, intermediates_only=True), [tap])
        pruned.train()(x).sum().backward()
        assert all(p.grad is not None for p in pruned.parameters())
    with pytest.raises(AttendNetsError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(AttendNetsError, match="intermediates_only"):
        model.forward_intermediates(x, stop_early=True)
    getter = timm.create_model("attendnet_b", features_only=True, feature_cls="getter")
    assert [m.shape[1] for m in getter(x)] == [t.shape[1] for t in taps]


def test_grad_checkpointing_recomputes_blocks_to_the_same_result(monkeypatch) -> None:
    model = timm.create_model("attendnet", spec=TINY_SPEC).train()
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    expected.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls: list[str] = []
    for name in ("checkpoint_seq", "checkpoint"):
        original = getattr(model_module, name)
        monkeypatch.setattr(model_module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    final, _ = model.forward_intermediates(x)
    assert set(calls) == {"checkpoint_seq", "checkpoint"}
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(final, model.forward_features(x))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])


def test_group_matcher_gives_layer_wise_groups() -> None:
    model = timm.create_model("attendnet_b")
    fine = group_parameters(model, model.group_matcher(), reverse=True)
    assert len(set(fine.values())) == len(model.blocks) + 1 and fine["classifier.weight"] == max(fine.values())
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert len(set(coarse.values())) == 1 + len(model.feature_info) + 1  # first block, resolutions, head
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.7)
    assert len({g["lr_scale"] for g in optimizer.param_groups}) == len(model.blocks) + 1


def test_condenser_scales_are_not_weight_decayed() -> None:
    model = timm.create_model("attendnet_b")
    params = dict(model.named_parameters())
    scales = {n for n in params if n.endswith(".scale")}
    assert model.no_weight_decay() == scales and len(scales) == 5
    optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decay[id(params[n])] == 0 for n in scales)
    assert decay[id(params["blocks.0.0.weight"])] == 0.05


def test_timm_helpers_are_left_out_of_torchscript() -> None:
    for name in ("group_matcher", "set_grad_checkpointing", "no_weight_decay", "get_classifier"):
        assert torch._jit_internal.is_ignored_fn(getattr(AttendNet, name)), name


@pytest.mark.filterwarnings(*TRACING_NOISE)
@pytest.mark.parametrize("global_pool", ["avg", ""])
def test_model_traces_with_fx_and_torchscript_unchanged(global_pool: str) -> None:
    """At 17 px the condenser crops its unpooled map (9 px condensed to 5, unpooled to 10)."""
    model = timm.create_model("attendnet", spec=TINY_SPEC, global_pool=global_pool).eval()
    assert_traces_unchanged(model, torch.randn(2, 3, 17, 17))


def test_pretrained_needs_weights_and_loads_our_checkpoints(tmp_path) -> None:
    with pytest.raises(AttendNetsError, match="no pretrained weights are shipped for attendnet: give a checkpoint"):
        timm.create_model("attendnet", pretrained=True)
    torch.manual_seed(0)
    tiny = build_model(TINY_SPEC, num_classes=3).eval()
    save_checkpoint(tmp_path / "tiny", tiny, model_meta(tiny, "tiny.json"))
    preset = timm.create_model("attendnet_b", num_classes=10).eval()
    save_checkpoint(tmp_path / "b", preset, model_meta(preset, "attendnet_b"))
    files = {stem: dict(file=str(tmp_path / f"{stem}.safetensors")) for stem in ("tiny", "b")}
    x = torch.randn(2, 3, 16, 16)
    for name, saved, stem in (("attendnet", tiny, "tiny"), ("attendnet_b", preset, "b")):
        loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=files[stem]).eval()
        assert loaded.spec == saved.spec and loaded.num_classes == saved.num_classes  # from the sidecar
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), saved(x), rtol=0, atol=0)
    tuned = timm.create_model("attendnet", pretrained=True, num_classes=7, pretrained_cfg_overlay=files["b"])
    same = {k: torch.equal(v, preset.state_dict()[k]) for k, v in tuned.state_dict().items()}
    assert [k for k, equal in same.items() if not equal] == ["classifier.weight", "classifier.bias"]  # a new head
    with pytest.raises(AttendNetsError, match="another architecture"):
        timm.create_model("attendnet_b", pretrained=True, pretrained_cfg_overlay=files["tiny"])


def test_zero_init_last_is_on_by_default_and_zeroed_branches_train() -> None:
    unzeroed = timm.create_model("attendnet_b", zero_init_last=False)
    norms = [m for m in unzeroed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) for m in norms)
    model = timm.create_model("attendnet_b", num_classes=3).train()
    zeroed = {
        n: m.weight for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and torch.all(m.weight == 0)
    }
    assert sorted(zeroed) == [f"blocks.{i}.up_mix.1" for i in (1, 2, 5, 6, 8)]  # the condensers; the PEPEs end in ReLU
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    assert all(torch.count_nonzero(weight.grad) > 0 for weight in zeroed.values())


def test_weight_init_torch_keeps_each_layers_pytorch_default() -> None:
    """``weight_init="torch"``: Kaiming-uniform fan-in weights (bound 1/sqrt(fan_in)) and uniform biases, where
    the default draws Kaiming-normal fan-out convs and N(0, 0.01) fully-connected weights with zero biases."""
    torch.manual_seed(0)
    ours, torchs = (timm.create_model("attendnet_b", num_classes=10, weight_init=w) for w in ("kaiming", "torch"))
    for model in (ours, torchs):
        fc = model.classifier
        bound = 1 / fc.in_features**0.5
        uniform = bool(fc.weight.abs().max() <= bound) and bool(torch.count_nonzero(fc.bias) > 0)
        assert uniform is (model is torchs)
        stem = model.blocks[0].conv.weight
        assert bool(stem.abs().max() <= 1 / (3 * 9) ** 0.5) is (model is torchs)
    with pytest.raises(AttendNetsError, match="weight_init must be one of"):
        timm.create_model("attendnet_b", weight_init="xavier")


def test_one_training_step_with_timms_train_script_parts() -> None:
    """What timm's train.py does with a model, on 8 random 32 px images: drop path, gradient checkpointing,
    timm's optimizer, loader, transforms, loss and EMA."""
    from timm.data import create_loader
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.utils import ModelEmaV3
    from torchvision.datasets import FakeData

    torch.manual_seed(0)
    model = timm.create_model("attendnet_b", num_classes=3, drop_path_rate=0.1)
    model.set_grad_checkpointing(True)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    ema = ModelEmaV3(model, decay=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = create_loader(
        FakeData(size=8, image_size=(3, 40, 40), num_classes=3), input_size=(3, 32, 32), batch_size=4,
        is_training=True, use_prefetcher=False, num_workers=0, persistent_workers=False,
        mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"],
    )
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    model.train()
    for step, (images, targets) in enumerate(loader):
        assert images.shape == (4, 3, 32, 32)
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model, step=step + 1)  # as train.py counts its updates, from 1
    assert torch.isfinite(loss)
    after, averaged = model.state_dict(), ema.module.state_dict()
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert len(changed) == len([k for k in before if k.endswith("weight")])
    assert not torch.equal(averaged["classifier.weight"], after["classifier.weight"])
    with torch.no_grad():
        assert ema.module.eval()(images).shape == (4, 3)


def test_timm_train_launcher_runs_the_script_with_our_models_registered(tmp_path) -> None:
    """examples/timm_train.py runs TIMM_TRAIN (timm's train.py; here a stand-in) as __main__ with its arguments."""
    script = tmp_path / "train.py"
    script.write_text("import sys, timm\nassert __name__ == '__main__'\n"
                      "print(timm.is_model('attendnet_b'), sys.argv[1:])\n")
    launcher = [sys.executable, str(ROOT / "examples" / "timm_train.py"), "DATA", "--model", "attendnet_b"]
    env = {k: v for k, v in os.environ.items() if k != "TIMM_TRAIN"}
    done = subprocess.run(launcher, env={**env, "TIMM_TRAIN": str(script)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True ['DATA', '--model', 'attendnet_b']"
    unset = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=300)
    assert unset.returncode == 1 and "TIMM_TRAIN=" in unset.stderr  # its docstring: where train.py comes from
