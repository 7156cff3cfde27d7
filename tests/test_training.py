"""Training runs end to end: learning, resuming exactly, refusing to clobber, stopping on NaN; the train
verb's options checked while parsing. (Refusals through the command line: tests/test_reliability_training.py.)"""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import attendnets.training
from attendnets.cli import build_parser, main
from attendnets.cli import train as train_verb
from attendnets.data import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.files import as_json_data
from attendnets.model import WEIGHT_INITS
from attendnets.training import TrainConfig, TrainingDiverged, recipe_changes, train
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
    spec = shutil.copy(small_spec_file, tmp_path / "small.json")
    config = small_config(synthetic_data, spec, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert json.loads((tmp_path / "resumed" / "last.json").read_text())["epoch"] == 2
    restore()
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)  # no pickled objects
    assert state["class_names"] == ["checks", "disc", "dots", "stripes"] and state["spec"]["name"] == "small"

    spec.unlink()  # the run resumes from the spec it saved
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


def test_images_decoded_into_memory_train_exactly_as_read_from_files(tmp_path, synthetic_data, small_spec_file) -> None:
    runs = [train(small_config(synthetic_data, small_spec_file, tmp_path / name, epochs=1, cache_images=cache))
            for name, cache in (("read", False), ("cached", True))]
    for a, b in zip(*(r.model.state_dict().values() for r in runs), strict=True):
        assert torch.equal(a, b)
    assert runs[0].history[0]["val_top1"] == runs[1].history[0]["val_top1"]


def test_existing_run_needs_resume_and_the_same_recipe(tmp_path, synthetic_data, small_spec_file) -> None:
    train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=1))
    with pytest.raises(AttendNetsError, match="already holds a training run; pass --resume"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=1))
    with pytest.raises(AttendNetsError, match="started with lr=0.01, now 0.1"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=1, lr=0.1, resume=True))


def test_a_run_that_completed_no_epoch_needs_resume_and_its_recipe(tmp_path, synthetic_data, small_spec_file) -> None:
    started = small_config(synthetic_data, small_spec_file, tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(dataclasses.asdict(started)))
    with pytest.raises(AttendNetsError, match="completed no epoch .*pass --resume to start it over"):
        train(started)
    with pytest.raises(AttendNetsError, match="started with lr=0.01, now 0.1"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "run", lr=0.1, resume=True))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic_data, small_spec_file, monkeypatch) -> None:
    steps_per_epoch = 4 * 96 // 32

    class PoisonedLoss(attendnets.training.TrainingLoss):
        calls = 0

        def __call__(self, net, inputs, targets):
            PoisonedLoss.calls += 1
            loss = super().__call__(net, inputs, targets)
            return loss * float("nan") if PoisonedLoss.calls > steps_per_epoch + 3 else loss

    monkeypatch.setattr(attendnets.training, "TrainingLoss", PoisonedLoss)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as err:
        train(small_config(synthetic_data, small_spec_file, out))
    message = str(err.value)
    assert "\n" not in message
    assert "loss became nan at epoch 2, step 4" in message and f"last good checkpoint is {out / 'last'} (epoch 1)" in message
    assert json.loads((out / "last.json").read_text())["epoch"] == 1
    assert torch.load(out / "train_state.pt", weights_only=True)["epoch"] == 1
    assert (out / "curves.png").is_file()


def test_cli_train_then_eval(tmp_path, synthetic_data, small_spec_file, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.chdir(synthetic_data.parent)
    args = ["train", "--data", synthetic_data.name, "--spec", str(small_spec_file), "--img-size", "32",
            "--epochs", "1", "--batch-size", "32", "--workers", "0", "--no-ema", "--output", str(out)]
    assert main(args) == 0
    assert "best val top-1" in capsys.readouterr().out
    assert "ema_val_top1" not in (out / "metrics.jsonl").read_text()
    # Recorded absolute, so export finds the calibration images from any folder.
    assert json.loads((out / "config.json").read_text())["data"] == str(synthetic_data.resolve())
    assert main(args) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--data", str(synthetic_data), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    best = json.loads((out / "best.json").read_text())
    assert result["top1"] == pytest.approx(best["metrics"]["val_top1"])
    assert result["images"] == 4 * 24 and result["crop_pct"] == 0.875
    whole = ["eval", "--checkpoint", str(out), "--data", str(synthetic_data), "--json", "--workers", "0",
             "--crop-pct", "1", "--output", str(tmp_path / "whole")]
    assert main(whole) == 0
    assert json.loads(capsys.readouterr().out)["crop_pct"] == 1.0
    assert main(["eval", "--file", "m.onnx", "--crop-pct", "1"]) == 2
    assert "--crop-pct only applies with --checkpoint" in capsys.readouterr().err


def test_cli_needs_a_model_and_data(tmp_path, small_spec_file, monkeypatch, capsys) -> None:
    monkeypatch.delenv("ATTENDNETS_DATA", raising=False)
    assert main(["train", "--spec", str(small_spec_file), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("pass --data DIR or set ATTENDNETS_DATA")
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "give --model NAME or --spec FILE" in capsys.readouterr().err


def test_batch_norm_with_one_value_per_channel_is_one_line(tmp_path, synthetic_data) -> None:
    config = TrainConfig(model="attendnet_b", output=str(tmp_path / "run"), data=str(synthetic_data), img_size=16,
                         epochs=1, batch_size=1, subset=4, workers=0)
    with pytest.raises(AttendNetsError, match="a batch of 1 at 16 px leaves batch norm one value per channel"):
        train(config)


def test_initialisation_options_reach_the_attendnet_and_are_refused_for_other_models(tmp_path, synthetic_data) -> None:
    from attendnets.training import _build_model

    def parse(*options: str) -> TrainConfig:
        return train_verb.config_from_args(build_parser().parse_args(
            ["train", "--output", str(tmp_path / "run"), "--data", str(synthetic_data), *options]))

    config = parse("--model", "attendnet_b")
    assert (config.weight_init, config.zero_init_last) == ("torch", True)  # both the defaults
    model = _build_model(config, 3, None)
    assert torch.count_nonzero(model.classifier.bias) > 0  # PyTorch's default; kaiming starts biases at 0
    assert torch.all(model.blocks[1].up_mix.norm.weight == 0)
    kaiming = _build_model(parse("--model", "attendnet_b", "--weight-init", "kaiming"), 3, None)
    assert torch.count_nonzero(kaiming.classifier.bias) == 0
    unzeroed = _build_model(parse("--model", "attendnet_b", "--no-zero-init-last"), 3, None)
    assert torch.all(unzeroed.blocks[1].up_mix.norm.weight == 1)
    with pytest.raises(AttendNetsError, match="^weight_init applies to AttendNets only, not to mobilenet_v1$"):
        train(parse("--model", "mobilenet_v1", "--weight-init", "kaiming"))
    assert not (tmp_path / "run").exists()
    assert _build_model(parse("--model", "mobilenet_v1", "--no-zero-init-last"), 3, None)  # no condensers: ignored


@pytest.mark.parametrize(("field", "as_before"), [("zero_init_last", ["--no-zero-init-last"]),
                                                  ("weight_init", ["--weight-init", "kaiming"])])
def test_a_run_started_before_an_init_default_changed_keeps_its_recipe(tmp_path, synthetic_data, field,
                                                                       as_before) -> None:
    """An AttendNet run whose config predates the field (zero_init_last; weight_init, whose default became
    PyTorch's) started with the behaviour before it, so resuming it under today's default is a change of recipe;
    for a MobileNet, which ignores both, no field of them counts."""
    def changes(model: str, *options: str) -> list[str]:
        config = train_verb.config_from_args(build_parser().parse_args(
            ["train", "--output", str(tmp_path), "--data", str(synthetic_data), "--model", model, *options]))
        saved = {k: v for k, v in as_json_data(dataclasses.asdict(config)).items() if k != field}
        return [changed for changed, _, _ in recipe_changes({**saved, "model": model}, config)]

    assert changes("attendnet_b") == [field]
    assert changes("attendnet_b", *as_before) == []
    assert changes("mobilenet_v1") == []


def test_a_run_saved_before_a_spec_field_existed_resumes_with_its_default(tmp_path, small_spec_file) -> None:
    """A training state whose spec lacks a field added since (the condensers' ``attention``) still matches."""
    from attendnets.spec import ArchSpec
    from attendnets.training import _build_model

    saved = ArchSpec.load(small_spec_file).to_dict()
    for block in saved["blocks"]:
        block.pop("attention", None)
    config = TrainConfig(model=str(small_spec_file), output=str(tmp_path))
    model = _build_model(config, 3, {"spec": saved})
    assert [b.attention for b in model.spec.blocks if b.type == "vac"] == ["condenser"]
    described = {**saved, "description": "reworded since the run started"}  # prose, not design: resumes
    assert _build_model(config, 3, {"spec": described}).spec == model.spec
    saved["blocks"][2]["pool"] = 4
    with pytest.raises(AttendNetsError, match=r"the spec of .* has changed since the run started \(blocks\[2\]\.pool: 4 in the run, 2 now\)"):
        _build_model(config, 3, {"spec": saved})


@pytest.mark.parametrize("option", [
    ["--epochs", "0"], ["--img-size", "0"], ["--img-size", "-64"], ["--img-size", "15"], ["--subset", "0"],
    ["--subset", "-3"], ["--batch-size", "0"], ["--lr", "0"], ["--lr", "nan"], ["--weight-decay", "-0.1"],
    ["--warmup-epochs", "-1"], ["--label-smoothing", "1"], ["--label-smoothing", "-0.1"], ["--workers", "-1"],
    ["--seed", "-1"], ["--crop-scale", "0", "1"], ["--hflip", "1.5"], ["--random-erase", "-0.1"], ["--mixup", "-1"],
    ["--color-jitter", "-0.4"],
])
def test_out_of_range_options_are_refused_while_parsing(option, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--data", "D", "--model", "m", "--output", "O", *option])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"argument {option[0]}: must be" in line and "got" in line


def test_given_values_are_kept_and_defaults_follow_the_recipe() -> None:
    def config(*options: str) -> TrainConfig:
        return train_verb.config_from_args(build_parser().parse_args(["train", "--output", "O", *options]))

    given = config("--model", "m", "--epochs", "1", "--img-size", "16", "--subset", "1", "--warmup-epochs", "0")
    assert (given.epochs, given.img_size, given.subset, given.warmup_epochs) == (1, 16, 1, 0)
    assert dataclasses.asdict(config("--model", "m")) == dataclasses.asdict(TrainConfig(model="m", output="O"))
    demo = config("--demo")
    assert (demo.epochs, demo.img_size) == (train_verb.DEMO_EPOCHS, train_verb.DEMO_IMG_SIZE)
    with pytest.raises(AttendNetsError, match="--crop-scale LOW HIGH needs LOW <= HIGH, got 0.9 0.5"):
        config("--model", "m", "--crop-scale", "0.9", "0.5")


def test_verb_restates_the_recipe_defaults() -> None:
    defaults = TrainConfig(model="", output="")
    assert {k: getattr(defaults, k) for k in train_verb.DEFAULTS} == train_verb.DEFAULTS
    assert train_verb.DATA_ENV == DATA_ENV
    assert train_verb.WEIGHT_INITS == WEIGHT_INITS


@pytest.mark.parametrize("verb", ["train", "demo"])
def test_verb_module_imports_nothing_heavy(verb) -> None:
    """--help imports every verb module: at module level they import the standard library and light modules
    only (torch, timm and the training code are imported when the verb runs)."""
    light = {"attendnets.env", "attendnets.errors", "attendnets.cli.options", "attendnets.cli.train"}
    path = Path(train_verb.__file__).with_name(f"{verb}.py")
    for node in ast.parse(path.read_text()).body:  # module level only; `if TYPE_CHECKING:` blocks do not run
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        else:
            continue
        for name in names:
            assert name in light or name.split(".")[0] in sys.stdlib_module_names | {"__future__"}, name
