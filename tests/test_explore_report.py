"""``attendnets explore`` end to end: a tiny study of tiny models really trained on generated data, its
report files, and the verb's other actions and errors."""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
import yaml

from attendnets.cli import main
from attendnets.data import make_synthetic_dataset
from attendnets.model import build_model
from attendnets.search.report import load_rungs
from attendnets.search.space import SearchSpace, default_space
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("explore")
    space = root / "space.yaml"
    default_space(ArchSpec.from_dict(TINY_SPEC), name="tiny").save(space)
    data = make_synthetic_dataset(root / "data", classes=3, per_class=10, size=24)
    args = ["explore", "run", "--data", str(data), "--space", str(space), "--name", "t", "--output", str(root / "out"),
            "--trials", "3", "--rungs", "2", "--eta", "2", "--epochs", "1", "--img-size-search", "16",
            "--images-per-class", "6", "--holdout-per-class", "3", "--batch-size", "6", "--img-size", "16",
            "--cost", "params", "--max-params", "20k", "--json"]
    return root / "out" / "t", args


def test_tiny_study_writes_its_report(study, capsys) -> None:
    folder, args = study
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["trials"] for r in summary["rungs"]][0] >= 3 and summary["rungs"][1]["trials"] >= 2
    assert (folder / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    trained = [r for r in rows if r["status"] in ("trained", "reference")]
    assert {r["rung"] for r in trained} == {"0", "1"} and all(r["epochs"] in ("1", "2") for r in trained)
    assert all(float(r["params"]) <= 20_000 for r in trained if r["status"] == "trained")
    # Each row's scores are the trial's own records: its values in the study, and the float top-1 of the last
    # epoch in its training's metrics.jsonl; the 8-bit top-1 counts whole images of the 3 x 3 hold-out.
    studies = load_rungs(folder)
    for r in trained:
        trial = studies[int(r["rung"])].trials[int(r["trial"])]
        assert float(r["top1_int8"]) == pytest.approx(trial.values[0], abs=1e-4)
        assert float(r["top1_int8"]) * 9 / 100 == pytest.approx(round(float(r["top1_int8"]) * 9 / 100), abs=1e-4)
        metrics = (folder / f"rung{r['rung']}" / f"trial_{int(r['trial']):04d}" / "metrics.jsonl").read_text()
        epochs = [json.loads(line) for line in metrics.splitlines()]
        assert len(epochs) == int(r["epochs"]) and float(r["top1_float"]) == epochs[-1]["val_top1"]
    for rung in summary["rungs"]:
        reference = [r for r in trained if r["rung"] == str(rung["rung"]) and r["status"] == "reference"]
        assert rung["prototype_top1"] == pytest.approx(float(reference[-1]["top1_int8"]), abs=1e-4)
    assert summary["pareto"] and summary["pareto_rung"] == 1
    for design in summary["pareto"]:
        assert design["costs"]["params"] <= 20_000
        model = timm.create_model("attendnet", spec=design["file"], num_classes=3)
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
        build_model(design["file"])
    assert set(summary["references"]) == {"attendnet_a", "attendnet_b", "mobilenet_v1", "mobilenet_v2"}
    # each trained trial keeps only small files
    kept = {p.name for p in (folder / "rung0").rglob("*") if p.is_file()}
    assert kept <= {"spec.json", "config.json", "metrics.jsonl", "curves.png"}

    assert main(["explore", "report", str(folder), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["pareto"] == summary["pareto"]

    assert main(args) == 2  # the study exists: resume or another name
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # nothing left to do: the same report
    assert json.loads(capsys.readouterr().out)["rungs"] == summary["rungs"]


def test_space_action_prints_an_editable_space(tmp_path, capsys) -> None:
    assert main(["explore", "space", "attendnet_b"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Default search space")
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert SearchSpace.load(path).name == "attendnet_b"
    assert yaml.safe_load(text)["prototype"] == "attendnet_b"


def test_bad_inputs_are_one_line_errors(tmp_path, capsys) -> None:
    data = make_synthetic_dataset(tmp_path / "d", classes=2, per_class=3, size=16)
    base = ["explore", "run", "--data", str(data), "--output", str(tmp_path / "o")]
    cases = [
        ([*base, "--name", "a", "--storage", "nosuchdb://host/x"], "cannot open storage"),
        ([*base, "--name", "b", "--space", str(tmp_path / "missing.yaml")], "cannot read search space"),
        ([*base, "--name", "c", "--latency-table", str(tmp_path / "t.json")], "--latency-table filters on"),
        ([*base, "--name", "d", "--holdout-per-class", "5"], "not more than --holdout-per-class"),
        (["explore", "report", str(tmp_path)], "not a study folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # a failed run leaves no study folder behind
