"""Search spaces: file round-trips, the prototype is a point of its space, samples build, bad spaces are refused."""

from __future__ import annotations

import random

import optuna
import pytest
import torch

from attendnets.model import build_model
from attendnets.registry import PAPER_PRESETS, load_preset
from attendnets.search.space import SPACE_DIR, SearchSpace, SpaceError, default_space, load_space
from attendnets.spec import ArchSpec, ConvSpec, PEPESpec, VACSpec
from tests.conftest import TINY_SPEC


class RandomChoices:
    """A trial that picks uniformly at random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.params: dict = {}

    def suggest_categorical(self, name: str, choices: list):
        self.params[name] = value = self.rng.choice(choices)
        return value


def _space_dict(**changes) -> dict:
    """The default space around the tiny spec, as a dict, with ``changes`` applied to its first stage."""
    data = default_space(ArchSpec.from_dict(TINY_SPEC)).to_dict()
    data["stages"][0].update(changes)
    return data


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_shipped_space_holds_its_preset(preset: str) -> None:
    space = load_space(preset)
    assert space.to_dict() == default_space(load_preset(preset)).to_dict()
    spec = space.sample(optuna.trial.FixedTrial(space.prototype_params()))
    assert spec.blocks == load_preset(preset).blocks
    assert spec.head == load_preset(preset).head


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_file_round_trip(tmp_path, suffix: str) -> None:
    space = load_space("attendnet_b")
    space.save(tmp_path / f"space{suffix}")
    again = SearchSpace.load(tmp_path / f"space{suffix}")
    assert again.to_dict() == space.to_dict()
    assert again.prototype_params() == space.prototype_params()


def test_samples_build_and_follow_the_choices() -> None:
    space = load_space("attendnet_b")
    kinds_seen = set()
    depths = set()
    for seed in range(25):
        trial = RandomChoices(seed)
        spec = space.sample(trial)
        build_model(spec, num_classes=10)  # raises if a sample cannot be built
        for block in spec.blocks:
            widths = [block.mid] if isinstance(block, VACSpec) else [block.out]
            if isinstance(block, PEPESpec):
                widths += [block.proj, block.proj2]
                assert block.mult in space.pepe.mult and block.kernel in space.pepe.kernel
            if not (isinstance(block, ConvSpec) and block.groups > 1):
                assert all(w % space.round_to == 0 for w in widths), block
        kinds_seen |= {v for k, v in trial.params.items() if k.endswith(".kind")}
        depths.add(len(spec.blocks) - len(space.prototype.blocks))
    assert kinds_seen == {"vac", "pepe", "conv"}
    assert len(depths) > 3  # depth choices change the number of blocks both ways


def test_width_choice_scales_the_stage() -> None:
    space = load_space("attendnet_b")
    params = {**space.prototype_params(), "s2.width": 1.25}
    spec = space.sample(optuna.trial.FixedTrial(params))
    first, last = space.stages[2].blocks
    for old, new in zip(space.prototype.blocks[first : last + 1], spec.blocks[first : last + 1]):
        if isinstance(old, PEPESpec):
            assert new.out == round(old.out * 1.25 / 8) * 8
    assert spec.blocks[: first] == space.prototype.blocks[: first]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kinds": ["vac", "mlp"]}, "unknown block kind(s) ['mlp']"),
        ({"width": [0.5, 0.75]}, "must include the prototype's 1.0"),
        ({"depth": [-5, 0]}, "depth value -5 is not valid"),
        ({"blocks": [0, 0], "depth": [0]}, "must start at block 1"),
        ({"width": [0.0, 1.0]}, "width value 0.0 is not valid"),
        ({"stride": [4]}, "stride [4] must include the prototype's 2"),
    ],
)
def test_bad_spaces_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(SpaceError) as err:
        SearchSpace.from_dict(_space_dict(**changes))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "part, changes, message",
    [
        ("stage", {"kinds": "vac"}, "stage 0: kinds must be a list of strings, got 'vac'"),
        ("stage", {"width": 1.0}, "stage 0: width must be a list of numbers, got 1.0"),
        ("stage", {"depth": [0, True]}, "stage 0: depth must be a list of integers, got [0, True]"),
        ("stage", {"blocks": [0, "0"]}, "stage 0: blocks must be a list of integers, got [0, '0']"),
        ("head", {"hidden": [128]}, "head: hidden must be a list of lists of integers, got [128]"),
        ("head", {"hidden": 128}, "head: hidden must be a list of lists of integers, got 128"),
        ("pepe", {"mult": ["2"]}, "pepe: mult must be a list of integers, got ['2']"),
        ("space", {"round_to": True}, "space: round_to must be an integer, got True"),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_the_entry(part: str, changes: dict, message: str) -> None:
    data = _space_dict(**changes) if part == "stage" else _space_dict()
    if part == "space":
        data.update(changes)
    elif part != "stage":
        data[part] = {**data[part], **changes}
    with pytest.raises(SpaceError) as err:
        SearchSpace.from_dict(data)
    assert str(err.value) == message


def test_bad_prototype_and_fields() -> None:
    with pytest.raises(SpaceError, match="neither a preset"):
        SearchSpace.from_dict({**_space_dict(), "prototype": "resnet50"})
    with pytest.raises(SpaceError, match=r"unknown field\(s\) \['widths'\]"):
        SearchSpace.from_dict(_space_dict(widths=[1.0]))
    with pytest.raises(SpaceError, match="must include the prototype's"):
        SearchSpace.from_dict({**_space_dict(), "pepe": {"mult": [3]}})
    with pytest.raises(SpaceError, match="cannot read search space"):
        load_space("no/such/space.yaml")


@pytest.mark.parametrize("name", sorted(path.stem for path in SPACE_DIR.glob("*.yaml")))
def test_every_shipped_space_loads_and_its_designs_run(name: str) -> None:
    """Each space file shipped, the presets' (whose presence test_shipped_space_holds_its_preset checks) and
    the others (attendnet_b_fast, demo), loads by its name; its prototype is a point of it; the prototype and a
    few sampled designs build and classify an image at the prototype's resolution."""
    space = load_space(name)
    assert space.name == name
    prototype = space.sample(optuna.trial.FixedTrial(space.prototype_params()))
    assert (prototype.blocks, prototype.head) == (space.prototype.blocks, space.prototype.head)
    size = space.prototype.img_size
    for spec in [prototype] + [space.sample(RandomChoices(seed)) for seed in range(4)]:
        model = build_model(spec, num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, size, size)).shape == (1, 3)


def test_fast_space_holds_attendnet_b_and_reaches_lower_resolutions() -> None:
    """The latency space: attendnet_b is a point of it; a stride-4 stem (kernel 5) halves every later
    resolution; samples build, some without any condenser."""
    space = load_space("attendnet_b_fast")
    assert space.sample(optuna.trial.FixedTrial(space.prototype_params())).blocks == load_preset("attendnet_b").blocks
    spec = space.sample(optuna.trial.FixedTrial({**space.prototype_params(), "s0.stride": 4}))
    assert (spec.blocks[0].stride, spec.blocks[0].kernel) == (4, 5) and spec.blocks[1:] == space.prototype.blocks[1:]
    model = build_model(spec, num_classes=10)
    assert model.forward_features(torch.zeros(1, 3, 128, 128)).shape[-1] == 2  # 128 / 64
    without_condensers = 0
    for seed in range(30):
        sampled = space.sample(RandomChoices(seed))
        build_model(sampled, num_classes=10)
        without_condensers += not any(isinstance(b, VACSpec) for b in sampled.blocks)
    assert without_condensers > 0


def test_stride_choice_needs_a_block_that_stays_in_place() -> None:
    data = default_space(ArchSpec.from_dict(TINY_SPEC)).to_dict()
    data["stages"] = [{"name": "a", "blocks": [0, 0]}, {"name": "b", "blocks": [1, 2], "stride": [1, 2]}]
    with pytest.raises(SpaceError, match="stride: block 1 must downsample or widen"):
        SearchSpace.from_dict(data)
