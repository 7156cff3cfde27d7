"""``attendnets models``, ``profile`` and ``demo`` as a user and a script would call them."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from attendnets.cli import main, os_error
from tests.reliability_fixtures import ROOT


def test_profile_default_shows_table1_comparison(capsys) -> None:
    assert main(["profile", "--json"]) == 0
    records = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(records) == {"attendnet_a", "attendnet_b", "mobilenet_v1", "mobilenet_v2", "attonet_a", "attonet_b"}
    for name, tolerance in [("attendnet_a", 0.03), ("attendnet_b", 0.03), ("mobilenet_v1", 0.01), ("mobilenet_v2", 0.01)]:
        assert abs(records[name]["table1"]["params_deviation"]) <= tolerance
        assert abs(records[name]["table1"]["macs_deviation"]) <= tolerance
    assert records["attonet_b"]["source"] == "reported (Table 1)"
    # The paper: AttendNet-B has ~4.17x fewer params, ~3x fewer MACs, ~16.7x lower weight memory than MobileNet-V1.
    ratios = records["attendnet_b"]["vs_mobilenet_v1"]
    assert ratios["fewer_params"] == pytest.approx(4.17, rel=0.03)
    assert ratios["fewer_macs"] == pytest.approx(3.0, rel=0.03)
    assert ratios["lower_weight_memory"] == pytest.approx(16.7, rel=0.03)


def test_profile_table_and_spec_file(tmp_path, tiny_spec, capsys) -> None:
    path = tmp_path / "tiny.json"
    tiny_spec.save(path)
    assert main(["profile", "--spec", str(path), "--img-size", "32", "--num-classes", "5", "--per-block"]) == 0
    out = capsys.readouterr().out
    assert "tiny.json" in out and "blocks.1" in out and "Table 1" not in out


def test_models_lists_presets_and_baselines(capsys) -> None:
    assert main(["models", "--json"]) == 0
    kinds = {r["model"]: r["kind"] for r in json.loads(capsys.readouterr().out)}
    assert kinds["attendnet_b"] == "preset" and kinds["mobilenet_v1"] == "baseline"
    assert kinds["attonet_a"] == "reported only"


def test_bad_inputs_give_one_line_errors(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "blocks": [{"type": "conv", "out": 8, "groups": 3}]}))
    assert main(["profile", "--spec", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "block 0 (conv): groups=3" in err
    assert main(["profile", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["profile", "attonet_a", "--img-size", "224"]) == 0  # reported-only rows need no build


def test_parser_is_built_without_torch() -> None:
    """``attendnets --help`` answers at once: no verb module loads torch, timm or numpy to build the parser."""
    script = ("import sys, attendnets.cli\nattendnets.cli.build_parser()\n"
              "print(sorted({'torch', 'timm', 'numpy'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_os_errors_read_as_one_line() -> None:
    assert os_error(OSError(errno.ENOSPC, "No space left on device", "/out/eval.json")) == (
        "/out/eval.json: No space left on device")
    assert os_error(PermissionError(errno.EACCES, "Permission denied", "/a", None, "/b")) == "/a -> /b: Permission denied"
    assert os_error(OSError("something\nwent wrong")) == "something went wrong"


def test_demo_trains_on_generated_data(tmp_path, tiny_spec, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ATTENDNETS_DATA", raising=False)
    spec = tmp_path / "tiny.json"
    tiny_spec.save(spec)
    args = ["demo", "--model", str(spec), "--epochs", "1", "--img-size", "32", "--output", str(tmp_path / "run"), "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["chance"] == 12.5 and record["epochs"] == 1
    # The top-1 reported is the run's own record: the best checkpoint's sidecar and the epoch's metrics line.
    run = tmp_path / "run" / "tiny"
    assert record["checkpoint"] == str(run / "best") and (run / "best.safetensors").is_file()
    best = json.loads((run / "best.json").read_text())
    (epoch,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["val_top1"] == best["metrics"]["val_top1"] == epoch["best_top1"]
    assert best["epoch"] == epoch["best_epoch"] == 1


def test_demo_refusals_name_its_own_options(tmp_path, synthetic_data, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ATTENDNETS_DATA", str(synthetic_data))
    # Too few images for the demo's batch: it has no --batch-size to lower; --subset is its option.
    assert main(["demo", "--subset", "10", "--json", "--output", str(tmp_path / "demo")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == ("attendnets demo: error: ATTENDNETS_DATA gives 10 training images, fewer than the demo's batch "
                    "of 64; raise --subset to 64 or more")
    assert list(tmp_path.iterdir()) == []
    for option in (["--epochs", "0"], ["--img-size", "8"], ["--subset", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", *option])
        assert exit_.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert f"argument {option[0]}: must be an integer >=" in line
