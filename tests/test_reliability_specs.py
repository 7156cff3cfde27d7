"""Reliability table, specs and exploration: each bad input a user can give ``attendnets`` from the command line
ends in exit code 2 with one line naming the problem, no traceback, and the files around it untouched (the
harness is tests/reliability_fixtures.py). The in-process tests of each fix live in test_spec.py,
test_search_space.py, test_data.py, test_explore.py and test_explore_cli.py; here only the user's view."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from attendnets.data import make_synthetic_dataset
from attendnets.search.space import default_space
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC
from tests.reliability_fixtures import expect_refusal


def _spec_file(folder: Path, where: str | int, **changes) -> Path:
    """TINY_SPEC with ``changes`` in block ``where`` or its ``"head"``, written to ``folder/spec.json``."""
    spec = copy.deepcopy(TINY_SPEC)
    (spec["head"] if where == "head" else spec["blocks"][where]).update(changes)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def explore_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Generated data (3 classes, 10 training images each) and the tiny spec's search space."""
    root = tmp_path_factory.mktemp("inputs")
    space = root / "space.yaml"
    default_space(ArchSpec.from_dict(TINY_SPEC), name="tiny").save(space)
    return make_synthetic_dataset(root / "data", classes=3, per_class=10, size=16), space


# -- 5: a numeric option out of range is refused while parsing, never replaced by its default ----------------


@pytest.mark.parametrize(
    "argv, names",
    [
        (["run", "--name", "x", "--trials", "0"], ["argument --trials", ">= 1", "got 0"]),
        (["run", "--name", "x", "--max-macs", "0"], ["argument --max-macs", "> 0"]),
        (["pilot", "--designs", "2"], ["argument --designs", ">= 3"]),
    ],
)
def test_out_of_range_explore_option(tmp_path, argv: list[str], names: list[str]) -> None:
    (tmp_path / "keep.txt").write_text("a file of the user's")
    expect_refusal(["explore", *argv, "--synthetic", "--output", str(tmp_path / "out")], names, watch=[tmp_path])
    assert not (tmp_path / "out").exists()


# -- 6: spec values of the wrong type --------------------------------------------------------------------------


def test_spec_with_a_string_for_a_boolean_in_profile(tmp_path) -> None:
    spec = _spec_file(tmp_path, 1, residual="no")
    expect_refusal(["profile", str(spec)], ["block 1 (vac)", "residual must be true or false", "'no'"],
                   watch=[tmp_path])


def test_spec_with_a_string_for_a_list_in_train(tmp_path, explore_inputs) -> None:
    data, _ = explore_inputs
    spec = _spec_file(tmp_path, "head", hidden="64")
    expect_refusal(["train", "--spec", str(spec), "--data", str(data), "--output", str(tmp_path / "run"),
                    "--epochs", "1", "--batch-size", "8"], ["head", "hidden must be a list of integers", "'64'"],
                   watch=[tmp_path, data])
    assert not (tmp_path / "run").exists()


# -- 11: a batch larger than the search's cached subset ------------------------------------------------------


def test_explore_batch_larger_than_the_subset(tmp_path, explore_inputs) -> None:
    """3 classes x 6 training images (4 held out of 10): a batch of 64 is refused before any study exists, so
    the folder is as it was and the corrected command needs no --resume."""
    data, space = explore_inputs
    expect_refusal(["explore", "run", "--name", "big", "--data", str(data), "--space", str(space),
                    "--output", str(tmp_path / "out"), "--images-per-class", "6", "--holdout-per-class", "4",
                    "--img-size-search", "16", "--img-size", "16", "--batch-size", "64"],
                   ["--batch-size 64", "the largest allowed is 18"], watch=[tmp_path, data.parent])
    assert not (tmp_path / "out").exists()
