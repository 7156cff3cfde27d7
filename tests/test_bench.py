"""``attendnets bench``: a tiny model measured in every runtime gives a sane report; ratios are computed
against the reference model of the same run; bad options are one-line errors (numeric ones, refused while
parsing: tests/test_reliability_files.py)."""

from __future__ import annotations

import json

import pytest
import torch

from attendnets import bench
from attendnets.bench import load_bench_model, speed_table
from attendnets.cli import main
from attendnets.registry import create_model
from tests.conftest import TINY_SPEC


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_SPEC))
    return path


def test_bench_tiny_model_all_runtimes(tiny_file, tmp_path, capsys) -> None:
    args = [str(tiny_file), "--no-baselines", "--img-size", "16", "--num-classes", "5", "--threads", "1",
            "--rounds", "2", "--batch", "3", "--profile", str(tmp_path / "prof"), "--json"]
    assert main(["bench", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["runtime"]: row for row in report["results"]}
    assert set(rows) == {"eager", "ort", "ort-int8"} and {r["model"] for r in rows.values()} == {str(tiny_file)}
    for row in rows.values():
        assert 0 < row["batch1_median_ms"] <= row["batch1_p90_ms"] < 10_000
        assert row["batchN_images_per_s"] > 0 and row["batch1_speedup_vs_eager"] > 0
        assert "batch1_speedup_vs_mobilenet_v1" not in row
    assert rows["eager"]["batch1_speedup_vs_eager"] == 1.0
    assert report["settings"] == {**report["settings"], "threads": 1, "img_size": 16, "batch": 3, "rounds": 2}
    assert report["machine"]["cores"] >= 1 and "random weights" in report["note"]
    int8 = report["profiles"][f"{tiny_file}|ort-int8"]
    assert "QLinearConv" in int8["ops"] and abs(sum(v["share"] for v in int8["ops"].values()) - 1) < 1e-6
    written = sorted(p.name for p in (tmp_path / "prof").iterdir())
    assert len(written) == 2 and all(name.endswith(("-ort.json", "-ort-int8.json")) for name in written)


def test_several_thread_counts_time_one_export_each(tiny_file, tmp_path, monkeypatch, capsys) -> None:
    exports, real = [], bench._export

    def export(model, runtime, *rest):
        exports.append(runtime)
        return real(model, runtime, *rest)

    monkeypatch.setattr(bench, "_export", export)
    args = [str(tiny_file), "--no-baselines", "--img-size", "16", "--num-classes", "5", "--threads", "1,2",
            "--runtimes", "eager,ort-int8", "--rounds", "1", "--batch", "0", "--json"]
    assert main(["bench", *args]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["settings"]["threads"] for r in reports] == [1, 2] and exports == ["ort-int8"]
    for report in reports:
        assert {row["runtime"] for row in report["results"]} == {"eager", "ort-int8"}
    assert main(["bench", *args[:-1], "--profile", str(tmp_path / "prof")]) == 2
    assert "--profile takes one thread count" in capsys.readouterr().err


def test_measured_models_keep_every_branch(tiny_file) -> None:
    """zero_init_last makes a residual condenser's branch output zeros, which converters fold away: a measured
    model gets that BN's scale back to 1, so its file does the work of a trained network."""
    def zeroed(model: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any()]

    assert len(zeroed(create_model(str(tiny_file), num_classes=5))) == 1  # the default the measurement undoes
    assert zeroed(load_bench_model(str(tiny_file), 16, 5).module) == []


def test_ratios_are_against_the_reference_in_the_same_runtime() -> None:
    times = {
        1: {("ours", "eager"): [4.0, 4.0], ("ours", "ort"): [1.0, 3.0], ("mobilenet_v1", "eager"): [8.0],
            ("mobilenet_v1", "ort"): [4.0]},
        8: {("ours", "eager"): [40.0], ("ours", "ort"): [20.0], ("mobilenet_v1", "eager"): [80.0],
            ("mobilenet_v1", "ort"): [10.0]},
    }
    rows = speed_table(["ours", "mobilenet_v1"], ["eager", "ort"], times, 8)
    ours = {row["runtime"]: row for row in rows if row["model"] == "ours"}
    assert ours["eager"]["batch1_speedup_vs_mobilenet_v1"] == 2.0 and ours["ort"]["batch1_speedup_vs_mobilenet_v1"] == 2.0
    assert ours["ort"]["batchN_speedup_vs_mobilenet_v1"] == 0.5 and ours["ort"]["batchN_images_per_s"] == 400.0
    assert ours["ort"]["batch1_speedup_vs_eager"] == 2.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runtimes", "tflite"], "unknown runtime tflite"),
        (["no_such_model"], "unknown model 'no_such_model'"),
    ],
)
def test_bench_bad_options(args, message, capsys) -> None:
    assert main(["bench", "--no-baselines", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("attendnets bench: error:") and message in err
