"""ExecuTorch export: float and int8 programs run and agree with PyTorch, the side file round-trips, bad files
are refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from attendnets.errors import AttendNetsError  # noqa: E402
from attendnets.export.executorch import (  # noqa: E402
    ExecuTorchRunner,
    delegation_summary,
    export_executorch,
    read_executorch_meta,
)
from attendnets.model import build_model  # noqa: E402
from attendnets.spec import ArchSpec  # noqa: E402

from tests.conftest import TINY_SPEC  # noqa: E402

META = dict(
    class_names=[f"c{i}" for i in range(5)], img_size=16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
    interpolation="bicubic", crop_pct=0.9,
)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The tiny AttendNet with weights like a trained one's: its initial head (std 0.01) gives logits of
    ~1e-4, which would make every closeness check below vacuous; these give logits of ~1, and BatchNorms
    that are not the identity."""
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict(TINY_SPEC)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, 0, 4 * module.in_features**-0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def float_pte(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("et") / "model.pte"
    return export_executorch(model, path, META | {"spec": model.spec.to_dict()})


@pytest.fixture(scope="module")
def int8_pte(model, tmp_path_factory):
    calibration = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return export_executorch(model, tmp_path_factory.mktemp("et") / "q.pte", META, int8=True, calibration=calibration)


def images(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_float_program_matches_pytorch(model, float_pte):
    x = images(4)
    with torch.no_grad():
        expected = model(x).numpy()
    runner = ExecuTorchRunner(float_pte, class_names=META["class_names"], threads=1)
    assert runner.num_classes == 5
    logits = runner(x.numpy())
    assert logits.shape == (4, 5) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 1e-4
    assert np.array_equal(runner(x), logits)  # a tensor batch gives the same as a numpy one


def test_int8_program_is_quantized_and_close_to_float(model, int8_pte):
    x = images(32)
    with torch.no_grad():
        expected = model(x).numpy()
    logits = ExecuTorchRunner(int8_pte)(x)
    assert logits.shape == (32, 5)
    assert not np.allclose(logits, expected, atol=1e-5)  # really int8, not the float graph
    # per-class offsets would make any two outputs correlate: compare how the logits vary with the input
    centered, centered_expected = logits - logits.mean(0), expected - expected.mean(0)
    assert np.corrcoef(centered.ravel(), centered_expected.ravel())[0, 1] > 0.95
    assert read_executorch_meta(int8_pte)["int8"] is True


def test_side_file_round_trips_meta(float_pte):
    meta = read_executorch_meta(float_pte)
    assert {k: meta[k] for k in META} == META
    assert meta["format"] == "attendnets-executorch" and meta["int8"] is False
    assert meta["layout"] == "NCHW" and meta["input_shape"] == [1, 3, 16, 16]
    assert meta["model"] == "tiny"
    assert json.loads(float_pte.with_name("model.pte.json").read_text()) == meta


def test_delegation_summary(float_pte, int8_pte):
    for path in (float_pte, int8_pte):
        summary = delegation_summary(path)
        assert summary == read_executorch_meta(path)["delegation"]
        assert summary["partitions"] >= 1
        assert isinstance(summary["undelegated"], dict) and isinstance(summary["edge_quant_ops"], dict)


def test_check_classes_refuses_other_classes(float_pte):
    runner = ExecuTorchRunner(float_pte)
    assert runner.class_names == META["class_names"]
    runner.check_classes(META["class_names"])
    with pytest.raises(AttendNetsError, match="predicts 5 classes"):
        runner.check_classes(["a", "b"])
    with pytest.raises(AttendNetsError, match="not the ones"):
        runner.check_classes([f"d{i}" for i in range(5)])
    with pytest.raises(AttendNetsError):
        ExecuTorchRunner(float_pte, class_names=["a", "b", "c", "d", "e"])


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(AttendNetsError) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_files_are_refused(float_pte, tmp_path):
    garbage = tmp_path / "garbage.pte"
    garbage.write_bytes(b"not a program" * 20)
    assert "not exported by attendnets" in one_line_error(ExecuTorchRunner, garbage)
    shutil.copy(float_pte.with_name("model.pte.json"), tmp_path / "garbage.pte.json")
    assert "garbage.pte" in one_line_error(ExecuTorchRunner, garbage)
    assert "garbage.pte" in one_line_error(delegation_summary, garbage)

    lone = tmp_path / "lone.pte"
    shutil.copy(float_pte, lone)
    assert "not exported by attendnets" in one_line_error(ExecuTorchRunner, lone)
    (tmp_path / "lone.pte.json").write_text(json.dumps({"format": "something-else"}))
    assert "not exported by attendnets" in one_line_error(read_executorch_meta, lone)


def test_export_checks_its_inputs_first(model, tmp_path):
    message = one_line_error(export_executorch, model, tmp_path / "m.pte", {"class_names": ["a"], "img_size": 16})
    assert "mean" in message and "crop_pct" in message
    one_line_error(export_executorch, model, tmp_path / "m.pte", META, int8=True)
    assert not list(tmp_path.iterdir())
