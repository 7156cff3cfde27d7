"""Quantization-aware training runs and the ``attendnets quantize`` verb, end to end on tiny data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from attendnets.checkpoint import load_checkpoint, model_meta, save_checkpoint
from attendnets.cli import main
from attendnets.data import eval_transform, load_rgb
from attendnets.errors import AttendNetsError
from attendnets.model import build_model
from attendnets.quantize import dequantize_per_channel, load_int8, quantize_per_channel
from attendnets.quantize_workflow import POST_TRAINING_FILES
from attendnets.spec import ArchSpec
from attendnets.training import train
from tests.training_fixtures import SMALL_SPEC, interrupt_at_evaluation, small_config

CLASSES = ["checks", "disc", "dots", "stripes"]  # the classes of synthetic_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(path: Path, classes: list[str] = CLASSES) -> Path:
    """A freshly initialised SMALL_SPEC model saved as a checkpoint (the mechanics need no training)."""
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict({**SMALL_SPEC, "num_classes": len(classes)}))
    meta = {**model_meta(model, "small.json"), "class_names": classes, "img_size": 32, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "interpolation": "bilinear", "crop_pct": 0.875, "epoch": 1, "weights": "raw"}
    save_checkpoint(path, model, meta)
    return path


def _top1(checkpoint: Path, data: Path) -> float:
    """Top-1 (%) of a checkpoint on ``data/val``, computed here: every image preprocessed as its sidecar says,
    through the model in one batch."""
    model, meta = load_checkpoint(checkpoint)
    transform = eval_transform(meta)
    paths = sorted((data / "val").rglob("*.png"))
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    targets = torch.tensor([meta["class_names"].index(p.parent.name) for p in paths])
    with torch.no_grad():
        return 100.0 * (model.eval()(images).argmax(1) == targets).float().mean().item()


def _eval_top1(checkpoint: Path, data: Path, capsys) -> float:
    """The top-1 ``attendnets eval --json`` prints for ``checkpoint`` on ``data/val``."""
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--json", "--workers", "0",
                 "--output", str(checkpoint.parent / "eval-check")]) == 0
    return json.loads(capsys.readouterr().out)["top1"]


def _int8_representable(model: nn.Module) -> bool:
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return bool(layers) and all(
        torch.allclose(dequantize_per_channel(*quantize_per_channel(m.weight)), m.weight, rtol=0, atol=1e-6)
        for m in layers
    )


def test_cli_qat_run_from_init_saves_int8_weights_that_load(tmp_path, synthetic_data, small_spec_file, capsys) -> None:
    init = _checkpoint(tmp_path / "float" / "best")
    out = tmp_path / "qat"
    args = ["train", "--data", str(synthetic_data), "--spec", str(small_spec_file), "--img-size", "32", "--epochs", "1",
            "--batch-size", "32", "--workers", "0", "--subset", "128", "--init", str(init), "--qat-activations",
            "--output", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["qat"] and config["qat_activations"] and config["init"] == str(init)
    for name in ("best", "last"):
        model, meta = load_checkpoint(out / name)  # the plain layout: no parametrizations, no quantizers
        assert meta["weight_bits"] == 8 and meta["qat"] == {"activations": True} and meta["init"] == str(init)
        assert _int8_representable(model)
    capsys.readouterr()  # what train printed
    assert main(["eval", "--checkpoint", str(out), "--data", str(synthetic_data), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((out / "eval-best-val" / "eval.json").read_text())  # printed = recorded
    _, best = load_checkpoint(out / "best")
    assert (result["epoch"], result["weights"], result["model"]) == (best["epoch"], best["weights"], "small")
    assert result["classes"] == CLASSES and result["images"] == 4 * 24
    assert result["top1"] == pytest.approx(_top1(out / "best", synthetic_data))


def test_qat_run_resumes_exactly(tmp_path, synthetic_data, small_spec_file, monkeypatch) -> None:
    qat = dict(epochs=2, subset=128, qat=True, qat_activations=True)
    full = train(small_config(synthetic_data, small_spec_file, tmp_path / "full", **qat))
    assert _int8_representable(full.model)

    restore = interrupt_at_evaluation(monkeypatch, 3)  # raw + EMA per epoch: the 3rd call is epoch 2's
    config = small_config(synthetic_data, small_spec_file, tmp_path / "resumed", **qat)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    restore()
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=False)
    assert any(k.endswith("parametrizations.weight.original") for k in state["model"])  # the prepared model

    config.resume = True
    resumed = train(config)
    assert resumed.epochs_run == 1
    for (key, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    a = safetensors.torch.load_file(tmp_path / "full" / "last.safetensors")
    b = safetensors.torch.load_file(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(AttendNetsError, match="started with qat=True, now False"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "resumed", **{**qat, "qat": False, "qat_activations": False},
                           resume=True))


def test_init_for_other_classes_keeps_the_features_and_starts_a_new_classifier(tmp_path, synthetic_data,
                                                                               small_spec_file, capsys) -> None:
    from attendnets.training import _load_init

    same = _checkpoint(tmp_path / "same")
    for other in (CLASSES + ["waves"], ["a", "b", "c", "d"]):  # another count; the same count, other classes
        source = _checkpoint(tmp_path / f"{len(other)}-{other[0]}", classes=other)
        saved, _ = load_checkpoint(source)
        torch.manual_seed(1)
        model = build_model(ArchSpec.from_dict(SMALL_SPEC))
        head = model.classifier.weight.clone()
        _load_init(model, str(source), CLASSES)
        kept = {k: torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items()
                if not k.startswith("classifier.")}
        assert all(kept.values()) and torch.equal(model.classifier.weight, head)  # the model's own new head
    model = build_model(ArchSpec.from_dict(SMALL_SPEC))
    _load_init(model, str(same), CLASSES)
    assert torch.equal(model.classifier.weight, load_checkpoint(same)[0].classifier.weight)  # same classes: all
    result = train(small_config(synthetic_data, small_spec_file, tmp_path / "a", init=str(tmp_path / "5-checks"), epochs=1))
    assert result.epochs_run == 1
    with pytest.raises(AttendNetsError, match=r"need quantization-aware training \(qat\)"):
        train(small_config(synthetic_data, small_spec_file, tmp_path / "c", qat_activations=True))
    args = ["train", "--data", str(synthetic_data), "--model", "attendnet_b", "--init", str(same),
            "--output", str(tmp_path / "d"), "--workers", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds another architecture" in err


def test_cli_quantize_post_training(tmp_path, synthetic_data, capsys, monkeypatch) -> None:
    source = _checkpoint(tmp_path / "float" / "best")
    out = tmp_path / "int8"
    args = ["quantize", "--checkpoint", str(source.parent), "--output", str(out), "--data", str(synthetic_data),
            "--workers", "0", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "post-training" and result["images"] == 4 * 24
    assert json.loads((out / "quantize.json").read_text()) == result
    # The two top-1s are the evaluations of the two checkpoints, as eval reports them and as computed here.
    assert result["float_top1"] == _eval_top1(source, synthetic_data, capsys) == pytest.approx(_top1(source, synthetic_data))
    assert result["int8_top1"] == _eval_top1(out / "best", synthetic_data, capsys) == pytest.approx(
        _top1(out / "best", synthetic_data))

    model, meta = load_checkpoint(out / "best")
    assert meta["weight_bits"] == 8 and meta["metrics"]["val_top1"] == result["int8_top1"]
    assert meta["metrics"]["float_val_top1"] == result["float_top1"]
    assert _int8_representable(model)
    int8 = out / "int8.safetensors"
    memory = result["weight_memory"]
    assert int8.stat().st_size == 8 + struct.unpack("<Q", int8.read_bytes()[:8])[0] + memory["quantized_bytes"]
    assert memory["float_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert memory["ratio"] == pytest.approx(memory["float_bytes"] / memory["quantized_bytes"])
    params = load_int8(int8)
    for name, param in model.named_parameters():
        assert torch.allclose(params[name], param, rtol=0, atol=1e-6), name

    # The table, without data to evaluate on.
    monkeypatch.delenv("ATTENDNETS_DATA", raising=False)
    assert main(["quantize", "--checkpoint", str(source), "--output", str(tmp_path / "t")]) == 0
    printed = capsys.readouterr().out
    assert "weight memory" in printed and "smaller weights" in printed and "no val/ to evaluate on" in printed


def test_cli_quantize_qat_fine_tune(tmp_path, synthetic_data, capsys) -> None:
    source = _checkpoint(tmp_path / "float" / "best")
    out = tmp_path / "qat"
    args = ["quantize", "--checkpoint", str(source), "--output", str(out), "--data", str(synthetic_data),
            "--qat-epochs", "1", "--batch-size", "64", "--workers", "0", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "qat" and result["images"] == 4 * 24
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == pytest.approx(2e-4) and config["warmup_epochs"] == 0 and config["init"] == str(source)
    model, meta = load_checkpoint(out / "best")
    assert meta["qat"] == {"activations": False} and meta["spec"]["name"] == "small" and _int8_representable(model)
    # The fine-tune's top-1 is its best checkpoint's record; the others are evaluations of the two checkpoints.
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert result["qat_val_top1"] == meta["metrics"]["val_top1"] == epochs[-1]["best_top1"]
    assert result["float_top1"] == _eval_top1(source, synthetic_data, capsys)
    assert result["int8_top1"] == _eval_top1(out / "best", synthetic_data, capsys)
    assert (out / "int8.safetensors").is_file() and (out / "metrics.jsonl").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--qat-activations"], "add --qat-epochs N"),
        (["--output-same"], "holds the checkpoint"),
    ],
)
def test_cli_quantize_bad_inputs(tmp_path, capsys, extra, message) -> None:
    source = _checkpoint(tmp_path / "run" / "best")
    output = tmp_path / "run" if extra == ["--output-same"] else tmp_path / "out"
    args = ["quantize", "--checkpoint", str(tmp_path / "run"), "--output", str(output)]
    assert main(args + [a for a in extra if a != "--output-same"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert source.with_suffix(".json").is_file()


def test_cli_quantize_redoes_only_its_own_output(tmp_path, capsys, monkeypatch) -> None:
    """A post-training run may redo an earlier one of the same checkpoint in its OUTPUT; another checkpoint's,
    or a QAT fine-tune, is refused there, and so is a folder with one file more."""
    monkeypatch.delenv("ATTENDNETS_DATA", raising=False)
    source = _checkpoint(tmp_path / "float" / "best")
    out = tmp_path / "int8"
    args = ["quantize", "--checkpoint", str(source), "--output", str(out), "--json"]
    assert main(args) == 0 and main(args) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted(POST_TRAINING_FILES)
    other = _checkpoint(tmp_path / "other" / "best")
    refused = [["quantize", "--checkpoint", str(other), "--output", str(out)],
               ["quantize", "--checkpoint", str(source), "--output", str(out), "--qat-epochs", "1"]]
    for command in refused:
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(out) in err
    (out / "notes.txt").write_text("mine")
    assert main(args) == 2
    assert "already holds files quantize did not write there" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([*POST_TRAINING_FILES, "notes.txt"])


def test_cli_quantize_qat_checks_the_classes_first(tmp_path, synthetic_data, capsys) -> None:
    source = _checkpoint(tmp_path / "float" / "best", classes=CLASSES + ["waves"])
    out = tmp_path / "qat"
    assert main(["quantize", "--checkpoint", str(source), "--output", str(out), "--data", str(synthetic_data),
                 "--qat-epochs", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "only in the checkpoint: waves" in err
    assert not out.exists()
