"""Reliability of the file-handling verbs (quantize, eval, export, predict, profile, bench): a bad input ends in
exit code 2 with one line naming the problem, no traceback, and every file as it was; a verb writes only into
a new folder or its own, and keeps a result it computed even when saving it fails.

One refusal per item of the issue runs ``attendnets`` as a user would
(:func:`tests.reliability_fixtures.expect_refusal`: a subprocess, real files). Further cases run in this
process (a subprocess spends seconds importing torch and timm), and so do the faults the file system here
cannot be made to produce (a full disk; a read-only folder, which root writes into): patched in.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import onnx
import pytest
import torch

from attendnets.checkpoint import model_meta, save_checkpoint
from attendnets.cli import main
from attendnets.data import make_synthetic_dataset
from attendnets.files import atomic_write_text
from attendnets.model import build_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC
from tests.deploy_fixtures import PREPROCESSING, Trained
from tests.reliability_fixtures import expect_refusal, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _refused_in_process(args: list[str], name: str, watch: list[Path], capsys: pytest.CaptureFixture) -> None:
    """:func:`expect_refusal` in this process, where torch is loaded already."""
    before = snapshot(*watch)
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"attendnets {args[0]}: error:") and name in line
    assert snapshot(*watch) == before


def _copy_checkpoint(trained: Trained, folder: Path, *names: str) -> Path:
    """The trained checkpoint copied into ``folder`` under each of ``names``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".safetensors", ".json"):
            shutil.copy(trained.checkpoint.with_suffix(suffix), folder / f"{name}{suffix}")
    return folder


def _training_run(trained: Trained, folder: Path) -> Path:
    """A finished training run's folder: best and last checkpoints, its config and metrics."""
    _copy_checkpoint(trained, folder, "best", "last")
    (folder / "config.json").write_text(json.dumps({"data": str(trained.data), "epochs": 2}))
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    return folder


# -- 1: quantize writes only into a new folder or its own ----------------------------------------------------


def test_quantize_refuses_a_training_run_as_output(trained, tmp_path) -> None:
    run = _training_run(trained, tmp_path / "run")
    expect_refusal(["quantize", "--checkpoint", str(run / "last"), "--output", str(run)],
                   [f"--output {run} holds the checkpoint {run / 'last.safetensors'}"], watch=[tmp_path])


def test_quantize_refuses_a_folder_holding_another_model(trained, tmp_path, capsys) -> None:
    other = _copy_checkpoint(trained, tmp_path / "other", "best")
    source = _copy_checkpoint(trained, tmp_path / "source", "best")
    _refused_in_process(["quantize", "--checkpoint", str(source), "--output", str(other)], str(other), [tmp_path],
                        capsys)


# -- 9: file-system errors are one line, checked before the work where possible -----------------------------


def test_eval_output_that_is_a_file(trained, tmp_path) -> None:
    report = tmp_path / "report"
    report.write_text("mine")
    expect_refusal(["eval", "--checkpoint", str(trained.checkpoint), "--data", str(trained.data), "--output",
                    str(report), "--workers", "0"], [str(report), "file"], watch=[tmp_path, trained.checkpoint.parent])


def test_export_output_under_a_file(trained, tmp_path, capsys) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    output = blocker / "deploy" / "m.onnx"
    _refused_in_process(["export", "--checkpoint", str(trained.checkpoint), "--output", str(output)], str(blocker),
                        [tmp_path, trained.checkpoint.parent], capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: no permission error to see")
def test_quantize_into_a_read_only_folder(trained, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        expect_refusal(["quantize", "--checkpoint", str(trained.checkpoint), "--output", str(locked / "int8")],
                       [str(locked)], watch=[tmp_path])
    finally:
        locked.chmod(stat.S_IRWXU)


def test_permission_refused_before_the_work(trained, tmp_path, monkeypatch, capsys) -> None:
    """The check above as root, who may write anywhere: the folder's permission is simulated."""
    import attendnets.files

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(attendnets.files.os, "access", lambda path, mode: Path(path) != locked)
    _refused_in_process(["export", "--checkpoint", str(trained.checkpoint), "--output", str(locked / "new" / "m.onnx")],
                        f"no permission to write in {locked}", [tmp_path, trained.checkpoint.parent], capsys)


def test_eval_on_a_full_disk_still_prints_the_result(trained, tmp_path, monkeypatch, capsys) -> None:
    """``ENOSPC`` while saving the report: one line naming the file and the reason; the figures, computed
    before, are printed all the same."""
    import attendnets.evaluate

    def full_disk(path, data) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(attendnets.evaluate, "atomic_write_json", full_disk)
    out = tmp_path / "report"
    args = ["eval", "--checkpoint", str(trained.checkpoint), "--data", str(trained.data), "--output", str(out),
            "--workers", "0", "--json"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 40
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("attendnets eval: error:") and "No space left on device" in line
    assert str(out / "eval.json") in line


# -- 10: numeric options are checked while parsing, naming the option and its range ---------------------------


@pytest.mark.parametrize(
    ("args", "option", "range_"),
    [
        (["eval", "--checkpoint", "ckpt", "--batch-size", "0"], "--batch-size", ">= 1"),
        (["eval", "--checkpoint", "ckpt", "--workers", "-1"], "--workers", ">= 0"),
        (["profile", "--img-size", "0"], "--img-size", ">= 8"),
        (["profile", "--num-classes", "0"], "--num-classes", ">= 1"),
        (["predict", "a.png", "--file", "m.onnx", "--threads", "0"], "--threads", ">= 1"),
        (["predict", "a.png", "--file", "m.onnx", "--top", "0"], "--top", ">= 1"),
        (["bench", "--threads", "0"], "--threads", ">= 1"),
        (["bench", "--rounds", "0"], "--rounds", ">= 1"),
        (["bench", "--batch", "-1"], "--batch", ">= 0"),
        (["export", "--checkpoint", "ckpt", "--calib-images", "0"], "--calib-images", ">= 1"),
        (["quantize", "--checkpoint", "ckpt", "--output", "out", "--qat-epochs", "0"], "--qat-epochs", ">= 1"),
        (["quantize", "--checkpoint", "ckpt", "--output", "out", "--lr", "0"], "--lr", "> 0"),
    ],
)
def test_numeric_options_are_checked_while_parsing(args, option, range_, tmp_path) -> None:
    expect_refusal(args, [f"argument {option}", range_], watch=[tmp_path], cwd=tmp_path)


# -- 12: a damaged exported file ------------------------------------------------------------------------------


def test_onnx_with_damaged_metadata(trained, tmp_path) -> None:
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, 16, 16])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3, 16, 16])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y])
    model = onnx.helper.make_model(graph)
    props = {"format": "attendnets-onnx", "class_names": '["a", "b"', **{k: json.dumps(v) for k, v in PREPROCESSING.items()}}
    onnx.helper.set_model_props(model, props)
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, damaged)
    expect_refusal(["eval", "--file", str(damaged), "--data", str(trained.data), "--output", str(tmp_path / "r")],
                   [str(damaged), "class_names"], watch=[tmp_path])


# -- 14: atomic writes give files the mode open() would ---------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_umask_mode(trained, tmp_path, umask) -> None:
    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
        save_checkpoint(tmp_path / "ckpt", trained.model, {"class_names": trained.classes})  # safetensors: own file
    finally:
        os.umask(before)
    for name in ("new.txt", "plain.txt", "ckpt.safetensors", "ckpt.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# -- 15: a class mismatch names the classes that differ -------------------------------------------------------


@pytest.fixture(scope="module")
def eight_classes(tmp_path_factory) -> tuple[Path, Path]:
    """``(data, checkpoint)``: 8 generated classes, and an untrained tiny checkpoint whose last class is
    ``zebra`` where the data has ``triangle`` (the last of the sorted names, beyond a 5-name summary)."""
    root = tmp_path_factory.mktemp("eight")
    data = make_synthetic_dataset(root / "data", classes=8, per_class=1, size=16, val_per_class=1)
    classes = sorted(p.name for p in (data / "val").iterdir())
    assert classes[-1] == "triangle"
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict({**TINY_SPEC, "num_classes": 8}))
    meta = {**model_meta(model, "tiny.json"), "class_names": [*classes[:-1], "zebra"], **PREPROCESSING}
    save_checkpoint(root / "ckpt" / "best", model, meta)
    return data, root / "ckpt" / "best"


def test_eval_class_mismatch_names_the_differing_classes(eight_classes, tmp_path) -> None:
    data, checkpoint = eight_classes
    expect_refusal(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(tmp_path / "r"),
                    "--workers", "0"], ["triangle", "zebra"], watch=[tmp_path, checkpoint.parent])


# -- 16: failures leave the output as found; reports do not overwrite each other ------------------------------


def test_quantize_class_mismatch_leaves_no_output(eight_classes, tmp_path) -> None:
    data, checkpoint = eight_classes
    out = tmp_path / "int8"
    expect_refusal(["quantize", "--checkpoint", str(checkpoint), "--output", str(out), "--data", str(data),
                    "--workers", "0"], ["triangle", "zebra"], watch=[tmp_path, checkpoint.parent])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_eval_reports_of_two_checkpoints_do_not_overwrite_each_other(trained, tmp_path, capsys) -> None:
    run = _copy_checkpoint(trained, tmp_path / "run", "best", "last")
    for name in ("last", "best"):
        assert main(["eval", "--checkpoint", str(run / name), "--data", str(trained.data), "--workers", "0",
                     "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert json.loads((run / f"eval-{name}-val" / "eval.json").read_text()) == printed
    assert json.loads((run / "eval-last-val" / "eval.json").read_text())["checkpoint"] == str(run / "last")
    before = snapshot(run)
    assert main(["eval", "--checkpoint", str(run), "--data", str(trained.data), "--workers", "0", "--json"]) == 0
    capsys.readouterr()
    assert snapshot(run).keys() == before.keys()  # a run folder is its best checkpoint: eval-best-val again
