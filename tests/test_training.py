"""Training runs end to end: learning, resuming exactly, refusing to clobber, stopping on NaN."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import attendnets.training
from attendnets.cli import main
from attendnets.errors import AttendNetsError
from attendnets.training import TrainingDiverged, train
from tests.training_fixtures import interrupt_at_evaluation, small_config


def test_training_learns_and_writes_run_folder(tmp_path, synthetic_data, small_spec_file) -> None:
    result = train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=5))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.3
    assert result.best_top1 > 50  # chance is 25%
    out = result.output
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "train_state.pt",
                 "config.json", "curves.png"):
        assert (out / name).is_file(), name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    best = json.loads((out / "best.json").read_text())
    assert best["epoch"] == result.best_epoch and best["metrics"]["val_top1"] == result.best_top1
    assert best["class_names"] == ["checks", "disc", "dots", "stripes"]
    assert not list(out.glob("*.tmp"))


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, synthetic_data, small_spec_file, monkeypatch) -> None:
    full = train(small_config(synthetic_data, small_spec_file, tmp_path / "full"))

    # Kill the second run during epoch 3 (after its training steps, before its checkpoint).
    restore = interrupt_at_evaluation(monkeypatch, 5)  # raw + EMA per epoch: the 5th call is epoch 3's
    config = small_config(synthetic_data, small_spec_file, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert json.loads((tmp_path / "resumed" / "last.json").read_text())["epoch"] == 2
    restore()

    config.resume = True
    resumed = train(config)
    assert resumed.epochs_run == 1
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for name in ("last.safetensors", "best.safetensors"):
        a = safetensors.torch.load_file(tmp_path / "full" / name)
        b = safetensors.torch.load_file(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_top1"] == full.history[-1]["val_top1"]


def test_existing_run_needs_resume_and_the_same_recipe(tmp_path, synthetic_data, small_spec_file) -> None:
    train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=1))
    with pytest.raises(AttendNetsError, match="already holds a training run; pass --resume"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=1))
    with pytest.raises(AttendNetsError, match="started with lr=0.01, now 0.1"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=1, lr=0.1, resume=True))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic_data, small_spec_file, monkeypatch) -> None:
    steps_per_epoch = 4 * 96 // 32

    class PoisonedLoss(attendnets.training.LabelSmoothingCrossEntropy):
        calls = 0

        def forward(self, x, target):
            PoisonedLoss.calls += 1
            loss = super().forward(x, target)
            return loss * float("nan") if PoisonedLoss.calls > steps_per_epoch + 3 else loss

    monkeypatch.setattr(attendnets.training, "LabelSmoothingCrossEntropy", PoisonedLoss)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as err:
        train(small_config(synthetic_data, small_spec_file, out))
    message = str(err.value)
    assert "\n" not in message
    assert "loss became nan at epoch 2, step 4" in message and f"last good checkpoint is {out / 'last'} (epoch 1)" in message
    assert json.loads((out / "last.json").read_text())["epoch"] == 1
    assert torch.load(out / "train_state.pt", weights_only=False)["epoch"] == 1
    assert (out / "curves.png").is_file()


def test_cli_train_then_eval(tmp_path, synthetic_data, small_spec_file, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(synthetic_data), "--spec", str(small_spec_file), "--img-size", "32",
            "--epochs", "1", "--batch-size", "32", "--workers", "0", "--no-ema", "--output", str(out)]
    assert main(args) == 0
    assert "best val top-1" in capsys.readouterr().out
    assert "ema_val_top1" not in (out / "metrics.jsonl").read_text()
    assert main(args) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--data", str(synthetic_data), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    best = json.loads((out / "best.json").read_text())
    assert result["top1"] == pytest.approx(best["metrics"]["val_top1"])
    assert result["images"] == 4 * 24


def test_cli_needs_a_model_and_data(tmp_path, small_spec_file, monkeypatch, capsys) -> None:
    monkeypatch.delenv("ATTENDNETS_DATA", raising=False)
    assert main(["train", "--spec", str(small_spec_file), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("pass --data DIR or set ATTENDNETS_DATA")
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "give --model NAME or --spec FILE" in capsys.readouterr().err
