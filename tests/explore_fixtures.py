"""Fixtures shared by the exploration tests: a search space around the tiny spec, and tiny generated data."""

from __future__ import annotations

from pathlib import Path

import pytest

from attendnets.data import make_synthetic_dataset
from attendnets.search.space import default_space
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny_space.yaml"
    default_space(ArchSpec.from_dict(TINY_SPEC), name="tiny").save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), classes=3, per_class=6, size=16)
