"""Shared fixtures: a tiny spec that exercises every block type and runs in milliseconds."""

from __future__ import annotations

import pytest

from attendnets.spec import ArchSpec

TINY_SPEC = {
    "name": "tiny",
    "num_classes": 5,
    "img_size": 16,
    "blocks": [
        {"type": "conv", "out": 8, "kernel": 3, "stride": 2},
        {"type": "vac", "mid": 4, "embed_groups": 2},
        {"type": "pepe", "proj": 4, "mult": 2, "proj2": 4, "out": 16, "stride": 2},
    ],
    "head": {"hidden": [12]},
}


@pytest.fixture
def tiny_spec() -> ArchSpec:
    return ArchSpec.from_dict(TINY_SPEC)
