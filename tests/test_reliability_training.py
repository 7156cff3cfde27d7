"""The reliability table of ``attendnets train`` and ``demo``: each bad input a user can give is refused in
one line (exit code 2), and the run folder, the data and every other file are left exactly as they were.

The cases share one finished run (one epoch of the small spec); a case that needs a damaged run works on a
copy of it. Each case starts a process, which costs seconds: the other out-of-range options are checked while
parsing in tests/test_training.py, and demo's refusal in tests/test_cli.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from attendnets.files import held_folder
from attendnets.runtime import torch_threads
from attendnets.training import train
from tests.reliability_fixtures import expect_refusal
from tests.training_fixtures import SMALL_SPEC, small_config

# small_config's recipe as options of the command line.
RECIPE = ["--img-size", "32", "--epochs", "1", "--batch-size", "32", "--lr", "0.01", "--workers", "0"]


@dataclass
class Run:
    folder: Path
    spec: Path  # the run's own copy of the small spec: a case may edit it and must restore it
    data: Path

    def train_args(self, output: Path | None = None, data: Path | None = None, resume: bool = True) -> list[str]:
        """``attendnets train`` with this run's recipe, resuming ``output`` (default: the run itself)."""
        return ["train", "--output", str(output or self.folder), "--data", str(data or self.data),
                "--spec", str(self.spec), *RECIPE, *(["--resume"] if resume else [])]

    def copy(self, dest: Path) -> Path:
        return shutil.copytree(self.folder, dest)


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data) -> Run:
    root = tmp_path_factory.mktemp("finished")
    spec = root / "small.json"
    spec.write_text(json.dumps(SMALL_SPEC))
    with torch_threads(1):
        train(small_config(synthetic_data, spec, root / "run", epochs=1))
    return Run(root / "run", spec, synthetic_data)


class _RunsCode:
    """Pickles to a call of ``exec``: what a tampered training state could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("option, names", [
    (["--epochs", "0"], ["--epochs", ">= 1, got 0"]),  # 5: was 30 epochs
    (["--img-size", "-64"], ["--img-size", ">= 16, got -64"]),  # 10: failed mid-epoch
])
def test_out_of_range_option(run, tmp_path, option, names) -> None:
    expect_refusal([*run.train_args(tmp_path / "new", resume=False), *option], names, watch=[tmp_path])


def test_new_run_into_a_folder_of_checkpoints(run, tmp_path) -> None:
    """2: a quantize output (checkpoint, int8 weights and report, no training state) is not overwritten."""
    folder = tmp_path / "b-int8"
    folder.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(run.folder / name, folder / name)
    shutil.copy(run.folder / "best.safetensors", folder / "int8.safetensors")
    (folder / "quantize.json").write_text("{}\n")
    expect_refusal(run.train_args(folder, resume=False), [str(folder), "quantize.json", "no training state"],
                   watch=[tmp_path])


def test_resume_with_an_edited_spec(run) -> None:
    """3: same tensor shapes, another architecture (a condenser's pool 2 -> 4)."""
    original = run.spec.read_text()
    edited = json.loads(original)
    edited["blocks"][2]["pool"] = 4
    run.spec.write_text(json.dumps(edited))
    try:
        expect_refusal(run.train_args(), ["spec", "blocks[2].pool: 2 in the run, 4 now"], watch=[run.folder])
    finally:
        run.spec.write_text(original)


def test_resume_with_renamed_class_folders(run, tmp_path) -> None:
    """4: labels would silently mean other classes."""
    data = shutil.copytree(run.data, tmp_path / "data")
    for split in ("train", "val"):
        (data / split / "disc").rename(data / split / "circle")
    expect_refusal(run.train_args(data=data), ["only in the data: circle", "only in the run: disc"],
                   watch=[run.folder, data])


def test_resume_with_another_class_count(run, tmp_path) -> None:
    """15: said "another architecture"."""
    data = shutil.copytree(run.data, tmp_path / "data")
    for split in ("train", "val"):
        shutil.rmtree(data / split / "disc")
    expect_refusal(run.train_args(data=data), ["the data has 3 classes", "trained on 4"], watch=[run.folder, data])


def test_resume_a_run_that_is_still_training(run) -> None:
    """16: the same command started twice (a queue restarted while its run went on): both would write the
    run's checkpoints. The test holds the folder as a running training does."""
    with held_folder(run.folder, "a training"):
        expect_refusal(run.train_args(), [str(run.folder), "in use by another process"], watch=[run.folder])


def test_resume_a_mistyped_folder(run, tmp_path) -> None:
    """8: was a new run."""
    expect_refusal(run.train_args(tmp_path / "rnu"), ["cannot resume", str(tmp_path / "rnu")], watch=[tmp_path])


def test_resume_with_damaged_metrics(run, tmp_path) -> None:
    """12: was a JSONDecodeError traceback; the records exist nowhere else, so the file is not rewritten."""
    folder = run.copy(tmp_path / "run")
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train_lo\n')
    expect_refusal(run.train_args(folder), [str(folder / "metrics.jsonl"), "line 2"], watch=[tmp_path])


def test_resume_refuses_a_training_state_that_runs_code(run, tmp_path) -> None:
    """13: the state was unpickled with weights_only=False."""
    folder = run.copy(tmp_path / "run")
    marker = tmp_path / "code-ran"
    state = torch.load(folder / "train_state.pt", weights_only=True)
    torch.save({**state, "rng": [_RunsCode(marker)]}, folder / "train_state.pt")
    expect_refusal(run.train_args(folder), [str(folder / "train_state.pt"), "could run code"], watch=[tmp_path])
    assert not marker.exists()

