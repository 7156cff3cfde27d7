"""Shared fixtures: a tiny spec that exercises every block type and runs in milliseconds, one-thread torch for
tests of tiny models, and the data, specs and trained checkpoint several test modules use.

The fixtures live here, not in helper modules that tests import, so that a session-scoped one is built once
per session rather than once per importing module. Helpers that are plain functions or constants stay in
``tests/*_fixtures.py``; attendnets modules other than the spec are imported inside the fixtures that
need them, so that an import error there fails those tests only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attendnets.runtime import torch_threads, tune_malloc
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


def assert_traces_unchanged(module: torch.nn.Module, x: torch.Tensor) -> None:
    """``module`` (in eval mode) computes exactly the same after FX tracing, TorchScript, and both."""
    traced = torch.fx.symbolic_trace(module)
    with torch.no_grad():
        expected = module(x)
        for compiled in (traced, torch.jit.script(module), torch.jit.script(traced)):
            torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)


def pytest_configure(config: pytest.Config) -> None:
    tune_malloc()  # as the command line does at start: tests train in this process


@pytest.fixture
def tiny_spec() -> ArchSpec:
    return ArchSpec.from_dict(TINY_SPEC)


# -- threads ---------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for the test, the previous count restored after it: tiny models run several
    times faster than with threads competing for the cores of a busy machine. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; broader-scoped fixtures that compute use
    :func:`torch_threads` (a function-scoped fixture cannot serve them)."""
    with torch_threads(1):
        yield


# -- training, checkpoint and evaluation data (tests/training_fixtures.py holds the helpers) ---------------


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """4 classes, 96 training and 24 val images each, 32 px."""
    from attendnets.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), classes=4, per_class=96, size=32)


@pytest.fixture(scope="session")
def small_spec_file(tmp_path_factory) -> Path:
    """tests.training_fixtures.SMALL_SPEC as a spec file."""
    from tests.training_fixtures import SMALL_SPEC

    path = tmp_path_factory.mktemp("spec") / "small.json"
    path.write_text(json.dumps(SMALL_SPEC))
    return path


# -- a trained tiny checkpoint for export, ONNX evaluation and prediction (tests/deploy_fixtures.py) -------


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A :class:`tests.deploy_fixtures.Trained`: the tiny model fitted for a few seconds to 5 synthetic
    classes at 16 px (a random model's logits hinge on tiny feature differences that any 8-bit rounding
    reorders: only a trained model has inputs that are easy for it). Shared by the whole session: tests
    write their outputs elsewhere and leave its data, checkpoint and model unchanged."""
    from torch import nn

    from attendnets.checkpoint import model_meta, save_checkpoint
    from attendnets.data import make_synthetic_dataset
    from attendnets.model import build_model
    from tests.deploy_fixtures import PREPROCESSING, Trained, load_images

    root = make_synthetic_dataset(tmp_path_factory.mktemp("images"), classes=5, per_class=16, size=16, val_per_class=8)
    classes = sorted(p.name for p in (root / "train").iterdir())
    images, targets = load_images(root / "train", classes)
    torch.manual_seed(0)
    # Kaiming's start, the default when the deployment tests' tolerances were set on this fitted model: with
    # PyTorch's, LiteRT's 8-bit file flips one of 26 clear calls of the tiny model.
    model = build_model(ArchSpec.from_dict(TINY_SPEC), weight_init="kaiming")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch_threads(1):
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), targets).backward()
            optimizer.step()
    model.eval()
    checkpoint = root.parent / "run" / "best"
    meta = {**model_meta(model, "tiny.json"), "class_names": classes, **PREPROCESSING, "epoch": 150, "weights": "raw"}
    save_checkpoint(checkpoint, model, meta)
    return Trained(root, classes, checkpoint, model)


# -- exploration: a search space around the tiny spec, and tiny generated data -----------------------------


@pytest.fixture(scope="session")
def space_file(tmp_path_factory) -> Path:
    """The default search space around the tiny spec, as a file (named ``tiny``)."""
    from attendnets.search.space import default_space

    path = tmp_path_factory.mktemp("space") / "tiny_space.yaml"
    default_space(ArchSpec.from_dict(TINY_SPEC), name="tiny").save(path)
    return path


@pytest.fixture(scope="session")
def explore_data(tmp_path_factory) -> Path:
    """3 generated classes, 6 images each, 16 px: what a study or pilot draws its tiny splits from."""
    from attendnets.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), classes=3, per_class=6, size=16)


# -- PostgreSQL (tests/postgres_fixtures.py holds the server helpers) --------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A :class:`tests.postgres_fixtures.PostgresServer` for the session; skips with the reason when it
    cannot run here."""
    from tests.postgres_fixtures import running_server

    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server, request: pytest.FixtureRequest) -> str:
    """URL of a new, empty database for this test on the session's server."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:60]
    return postgres_server.create_database(name)
