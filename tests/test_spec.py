"""Spec files are read by type as well as by name: a value of the wrong type is refused in one line that names
the block (or head) and the field, before anything is built."""

from __future__ import annotations

import copy

import pytest
import yaml

from attendnets.registry import PRESETS, load_preset
from attendnets.spec import ArchSpec, SpecError
from tests.conftest import TINY_SPEC


def _changed(where: str | int, **changes) -> dict:
    """TINY_SPEC with ``changes`` in block ``where``, in its ``"head"`` or at the top (``"spec"``)."""
    spec = copy.deepcopy(TINY_SPEC)
    target = spec if where == "spec" else spec["head"] if where == "head" else spec["blocks"][where]
    target.update(changes)
    return spec


@pytest.mark.parametrize(
    "where, changes, message",
    [
        (1, {"residual": "no"}, "block 1 (vac): residual must be true or false, got 'no'"),
        (0, {"out": True}, "block 0 (conv): out must be an integer, got True"),
        (2, {"mult": 2.0}, "block 2 (pepe): mult must be an integer, got 2.0"),
        (0, {"act": ["relu"]}, "block 0 (conv): act must be a string, got ['relu']"),
        (1, {"scale": None}, "block 1 (vac): scale must be a string, got None"),
        ("head", {"dropout": "0.5"}, "head: dropout must be a number, got '0.5'"),
        ("head", {"dropout": False}, "head: dropout must be a number, got False"),
        ("head", {"hidden": "64"}, "head: hidden must be a list of integers, got '64'"),
        ("head", {"hidden": [64, "32"]}, "head: hidden must be a list of integers, got [64, '32']"),
        ("spec", {"img_size": "64"}, "spec: img_size must be an integer, got '64'"),
        ("spec", {"num_classes": True}, "spec: num_classes must be an integer, got True"),
        ("spec", {"name": 7}, "spec: name must be a string, got 7"),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_block_and_field(where, changes: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        ArchSpec.from_dict(_changed(where, **changes))
    assert str(err.value) == message


def test_long_values_are_shortened_in_the_message() -> None:
    with pytest.raises(SpecError) as err:
        ArchSpec.from_dict(_changed("head", hidden="x" * 500))
    assert len(str(err.value)) < 120 and str(err.value).endswith("...")


def test_right_types_pass_an_int_counts_as_a_number() -> None:
    spec = ArchSpec.from_dict(_changed("head", dropout=0))
    assert spec.head.dropout == 0
    assert ArchSpec.from_dict(_changed(1, residual=False)).blocks[1].residual is False


def test_yaml_booleans_are_booleans_and_quoted_ones_strings(tmp_path) -> None:
    """YAML reads a bare ``no`` as false (a valid residual); a quoted "no" is a string, refused."""
    text = yaml.safe_dump(TINY_SPEC, sort_keys=False)
    bare = tmp_path / "bare.yaml"
    bare.write_text(text.replace("embed_groups: 2", "embed_groups: 2\n  residual: no"))
    assert ArchSpec.load(bare).blocks[1].residual is False
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text(text.replace("embed_groups: 2", "embed_groups: 2\n  residual: 'no'"))
    with pytest.raises(SpecError, match=r"block 1 \(vac\): residual must be true or false, got 'no'"):
        ArchSpec.load(quoted)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_pass_and_round_trip(name: str) -> None:
    spec = load_preset(name)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
