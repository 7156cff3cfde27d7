"""The ledger of finished runs (benchmarks/ledger.py): a run is recorded once, where the reports find it, and a
recorded run counts as finished even where its folder is not (a study spread over machines)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from attendnets.cli import build_parser
from attendnets.errors import AttendNetsError
from attendnets.cli.train import config_from_args
from attendnets.registry import load_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ablation  # noqa: E402
import arms  # noqa: E402
import imagenette  # noqa: E402
import ledger  # noqa: E402
import presets  # noqa: E402


def finished_run(run: Path, model: str = "attendnet_b", options: list[str] = imagenette.RECIPE) -> None:
    """A run folder of the comparison recipe (or of ``options``) as the train verb leaves it after two epochs
    (no checkpoint: evaluation is faked)."""
    run.mkdir(parents=True)
    config = config_from_args(build_parser().parse_args(
        ["train", "--model", model, "--output", str(run), "--epochs", str(imagenette.EPOCHS), *options]))
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    epochs = [{"epoch": e, "val_top1": 70.0 + e, "ema_val_top1": 71.0 + e, "train_images_per_s": 40.0,
               "epoch_seconds": 200.0} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))


@pytest.fixture
def evaluations(monkeypatch) -> list[Path]:
    """Fakes ``attendnets eval`` and ``quantize``; returns the runs evaluated."""
    done: list[Path] = []

    def evaluate(run: Path, data: Path, workers: int) -> tuple[dict, list[str]]:
        done.append(run)
        return {"top1": 73.0, "top5": 95.0, "epoch": 2, "weights": "ema", "per_class_top1": {}}, \
            [sys.executable, "-m", "attendnets", "eval", "--checkpoint", str(run / "best"), "--data", str(data)]

    monkeypatch.setattr(ledger, "evaluate", evaluate)
    monkeypatch.setattr(ledger, "quantize", lambda run, data, workers: {
        "float_top1": 73.0, "int8_top1": 72.5, "command": f"python -m attendnets quantize --checkpoint {run}",
        "checkpoint": str(run / "int8")})
    return done


def test_a_run_is_recorded_once_with_what_its_reports_need(tmp_path, evaluations) -> None:
    run, data = tmp_path / "runs" / "arm" / "attendnet_b-s0", tmp_path / "data"
    finished_run(run)
    made = ledger.record(run, [sys.executable, "-m", "attendnets", "train", "--data", str(data)], data, 2)
    assert (made["top1"], made["int8_top1"], made["best_epoch"], made["weights"]) == (73.0, 72.5, 2, "ema")
    assert (made["last_raw_top1"], made["last_ema_top1"]) == (72.0, 73.0)
    assert made["train_command"] == f"python -m attendnets train --data {os.path.relpath(data, ledger.ROOT)}"
    assert len(made["history"]) == 2 and made["config"]["model"] == "attendnet_b" and made["recorded"]["commit"]
    assert ledger.record_path(run) == run.parent / "attendnet_b-s0.record.json"  # outside runs/: beside it
    again = ledger.record(run, [], data, 2)  # read back: not evaluated again
    assert again == json.loads(json.dumps(made)) and evaluations == [run]


def test_a_run_of_a_spec_file_keeps_its_spec_in_the_record(tmp_path, evaluations) -> None:
    spec = tmp_path / "attendnet_b-vac28.json"
    presets.ARMS["vac28-narrow"].spec(load_preset("attendnet_b")).save(spec)
    run = tmp_path / "attendnet_b-s0"
    finished_run(run, model=str(spec))
    made = ledger.record(run, [sys.executable], tmp_path, 2)
    assert [b["mid"] for b in made["spec"]["blocks"] if b["type"] == "vac"] == [16, 16, 32, 32, 32]


def test_records_of_runs_are_committed_and_smoke_runs_are_not() -> None:
    assert ledger.record_path(ledger.RUNS / "presets" / "crop035" / "mobilenet_v1-s0") == (
        ledger.LEDGER / "presets" / "crop035" / "mobilenet_v1-s0.json")
    smoke = ledger.RUNS / "imagenette-smoke" / "attendnet_b"
    assert ledger.record_path(smoke) == smoke.parent / "attendnet_b.record.json"


def test_a_recorded_run_counts_as_finished_and_is_not_trained_again(tmp_path, monkeypatch, evaluations) -> None:
    study = arms.Study(presets.ARMS, tmp_path, tmp_path / "data", workers=2)
    run = study.folder("init-torch", "attendnet_b", 1)
    finished_run(run)
    ledger.record(run, study.train_command("init-torch", "attendnet_b", 1), study.data, 2)
    for name in ("config.json", "metrics.jsonl"):  # the folder stayed on the machine that trained it
        (run / name).unlink()
    monkeypatch.setattr(arms.subprocess, "run", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    rows = study.collect(["init-torch"], [1], train=True)
    assert rows["init-torch"]["attendnet_b"]["seeds"][1]["int8_top1"] == 72.5


def test_imagenette_skips_a_recorded_run_and_checks_its_recipe_from_the_record(tmp_path, monkeypatch,
                                                                             evaluations) -> None:
    run, data = tmp_path / "attendnet_b", tmp_path / "data"
    finished_run(run)
    ledger.record(run, [sys.executable], data, 2)
    (run / "config.json").unlink()
    monkeypatch.setattr(imagenette.subprocess, "run", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    args = argparse.Namespace(epochs=imagenette.EPOCHS, workers=2, subset=None, seed=0)
    imagenette.train("attendnet_b", run, args, data)
    assert imagenette.recipe_changes(run, "attendnet_b", imagenette.EPOCHS, None, seed=1) == ["seed: 0 -> 1"]


def test_imagenette_trains_another_seed_beside_the_comparison_and_reports_the_spread(tmp_path, monkeypatch,
                                                                                   evaluations) -> None:
    for module in (ledger, imagenette):
        monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
        monkeypatch.setattr(module, "LEDGER", tmp_path / "ledger")
    data = tmp_path / "data"
    given = []
    args = argparse.Namespace(epochs=imagenette.EPOCHS, workers=2, subset=None, seed=1)
    with monkeypatch.context() as training:  # subprocess.run itself: the records below need git
        training.setattr(imagenette.subprocess, "run", lambda command, **_: given.append(command))
        imagenette.train("attendnet_b", tmp_path / "runs" / "imagenette-s1" / "attendnet_b", args, data)
    assert given[0][given[0].index("--seed") + 1] == "1"
    for seed, folder in ((0, "imagenette"), (1, "imagenette-s1")):
        run = tmp_path / "runs" / folder / "attendnet_b"
        finished_run(run, options=imagenette.recipe(seed))
        ledger.record(run, [sys.executable], data, 2)
    assert (tmp_path / "ledger" / "imagenette-s1" / "attendnet_b.json").is_file()
    seed1 = ledger.record_path(tmp_path / "runs" / "imagenette-s1" / "attendnet_b")
    seed1.write_text(json.dumps({**json.loads(seed1.read_text()), "top1": 74.5}))
    (spread,) = imagenette.seed_spread(["attendnet_b", "mobilenet_v1"])  # mobilenet_v1: no run, no row
    assert spread["top1"] == {0: 73.0, 1: 74.5} and spread["top1_spread"] == pytest.approx(1.5)
    assert spread["int8_spread"] == 0.0


def test_the_comparison_runs_seed0_is_imagenettes_for_both_studies(tmp_path) -> None:
    for arms_of, arm, run in ((presets.ARMS, "crop035", presets.KAIMING_COMPARISON_RUN),
                              (ablation.ARMS, "attention", presets.KAIMING_COMPARISON_RUN),
                              (presets.ARMS, "init-torch", presets.COMPARISON_RUN)):
        comparison = ledger.RUNS / run
        study = arms.Study(arms_of, tmp_path, tmp_path / "data", workers=2)
        assert study.folder(arm, "attendnet_b", 0) == comparison
        assert study.folder(arm, "attendnet_b", 1) != comparison


def test_ship_and_deploy_take_another_seed_of_the_comparison_recipe_and_refuse_another_recipe(tmp_path,
                                                                                             evaluations) -> None:
    seed1, kaiming = tmp_path / "init-torch-s1", tmp_path / "kaiming-s1"
    finished_run(seed1, options=imagenette.recipe(1))
    finished_run(kaiming, "attendnet_a", arms.with_option(imagenette.recipe(1), "--weight-init", "kaiming"))
    for run in (seed1, kaiming):
        ledger.record(run, [sys.executable], tmp_path, 2)
    chosen = imagenette.run_options([f"attendnet_b={seed1}", f"attendnet_a={kaiming}"], list(imagenette.MODELS))
    assert imagenette.comparison_run("attendnet_b", chosen) == seed1.resolve()
    assert imagenette.comparison_run("mobilenet_v1", chosen) == ledger.RUNS / "imagenette" / "mobilenet_v1"
    with pytest.raises(AttendNetsError, match="not a run of the comparison recipe .weight_init: kaiming -> torch"):
        imagenette.comparison_run("attendnet_a", chosen)
    with pytest.raises(AttendNetsError, match="no recorded run there"):
        imagenette.comparison_run("attendnet_b", {"attendnet_b": tmp_path})
    for bad in ("attendnet_b", "resnet50=runs/x"):
        with pytest.raises(AttendNetsError, match="--run takes MODEL=FOLDER"):
            imagenette.run_options([bad], list(imagenette.MODELS))
