"""Deployment in every runtime: no layout traffic in any runtime's int8 graph for the presets, the found design
and a spec with a bare depthwise expansion; TFLite (LiteRT, TFLite Micro) and ExecuTorch files that carry their
classes, follow PyTorch, and that eval, predict and the command line read."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attendnets.cli import main
from attendnets.data import DATA_ENV, make_synthetic_dataset
from attendnets.errors import AttendNetsError
from attendnets.export import (
    CalibrationImages,
    LiteRTRunner,
    MicroRunner,
    export_executorch,
    export_onnx,
    export_tflite,
    load_runner,
    quantize_onnx,
)
from attendnets.export.graphs import ort_layout_ops, tflite_delegation, tflite_layout_ops
from attendnets.model import build_model
from attendnets.registry import create_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC
from tests.deploy_fixtures import PREPROCESSING, Trained, load_images

ROOT = Path(__file__).resolve().parent.parent
needs_litert = pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None,
                                  reason="needs pip install 'attendnets[litert]'")
needs_micro = pytest.mark.skipif(importlib.util.find_spec("tflite_micro") is None,
                                 reason="needs pip install 'attendnets[micro]'")
needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="needs pip install 'attendnets[executorch]'")

SIZE = 32  # layout and delegation do not depend on the resolution
# A depthwise expansion as a block of its own (not inside a PEPE), followed by a residual condenser.
EXPANSION_SPEC = {**TINY_SPEC, "img_size": SIZE, "blocks": [
    {"type": "conv", "out": 8, "kernel": 3, "stride": 2}, {"type": "conv", "out": 16, "groups": 8, "stride": 2},
    {"type": "vac", "mid": 8}, {"type": "pepe", "proj": 8, "mult": 2, "proj2": 8, "out": 16}]}
MODELS = ["attendnet_a", "attendnet_b", "found design", "depthwise expansion"]
# attendnet_a is attendnet_b's blocks at other widths, and lowering it to LiteRT and ExecuTorch took 243 s in a
# CI run whose tests took 1,115 s on 2 workers (--durations): the ONNX Runtime check keeps it, and
# benchmarks/deploy.py exports it to every runtime.
XNNPACK_MODELS = [m for m in MODELS if m != "attendnet_a"]


def _model(name: str) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    if name == "found design":
        model = build_model(ArchSpec.load(ROOT / "docs" / "results" / "explore_found_tpe.json"))
    elif name == "depthwise expansion":
        model = build_model(ArchSpec.from_dict(EXPANSION_SPEC), num_classes=10)
    else:
        model = create_model(name, num_classes=10)
    meta = {"class_names": [f"c{i}" for i in range(10)], **PREPROCESSING, "img_size": SIZE}
    return model.eval(), meta


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    folder = make_synthetic_dataset(tmp_path_factory.mktemp("calib"), classes=4, per_class=2, size=SIZE) / "train"
    reader = CalibrationImages(folder, {**PREPROCESSING, "img_size": SIZE}, max_images=8)
    return folder, torch.from_numpy(np.concatenate(reader.batches))


@pytest.mark.parametrize("name", MODELS)
def test_ort_int8_graph_has_no_layout_ops(name, calibration, tmp_path) -> None:
    model, meta = _model(name)
    float_path = export_onnx(model, tmp_path / "m.onnx", meta)
    assert ort_layout_ops(quantize_onnx(float_path, tmp_path / "m.int8.onnx", calibration[0], 8)) == {}


@needs_litert
@pytest.mark.parametrize("name", XNNPACK_MODELS)
def test_litert_int8_graph_is_one_xnnpack_partition(name, calibration, tmp_path) -> None:
    model, meta = _model(name)
    path = export_tflite(model, tmp_path / "m.int8.tflite", meta, int8=True, calibration=calibration[1])
    assert tflite_layout_ops(path) == {}
    assert tflite_delegation(path) == {"partitions": 1, "undelegated": {}}


@needs_executorch
@pytest.mark.parametrize("name", XNNPACK_MODELS)
def test_executorch_int8_program_is_one_xnnpack_partition(name, calibration, tmp_path) -> None:
    model, meta = _model(name)
    path = export_executorch(model, tmp_path / "m.int8.pte", meta, int8=True, calibration=calibration[1])
    delegation = json.loads(Path(f"{path}.json").read_text())["delegation"]
    assert delegation == {"partitions": 1, "undelegated": {}, "edge_quant_ops": {}}


def _float_top1(trained: Trained) -> float:
    val, targets = load_images(trained.data / "val", trained.classes)
    with torch.no_grad():
        return 100.0 * float((trained.model(val).argmax(1) == targets).float().mean())


def _assert_same_clear_calls(logits: np.ndarray, float_logits: np.ndarray) -> None:
    """Where float has a clear winner, the 8-bit model picks it too (near-ties may flip by rounding)."""
    top2 = np.sort(float_logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1 * np.ptp(float_logits, axis=1)
    assert clear.sum() >= len(float_logits) // 4
    assert np.array_equal(logits[clear].argmax(1), float_logits[clear].argmax(1))


@needs_litert
@needs_micro
def test_cli_tflite_micro_export_eval_predict(trained: Trained, tmp_path, capsys) -> None:
    """Float, int8 and microcontroller files from the trained tiny model: parity with PyTorch, TFLite Micro
    computing what LiteRT computes on the same file, its arena measured (and the profiler's estimate of it within
    10%), and eval/predict reading them."""
    output = tmp_path / "tiny.tflite"
    args = ["export", "--checkpoint", str(trained.checkpoint), "--format", "tflite", "--int8", "--micro",
            "--calib-data", str(trained.data / "train"), "--calib-images", "32", "--output", str(output), "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record["files"]) == {"float", "int8", "micro"}
    parity = record["parity"]
    assert parity["float_max_abs_diff"] < 1e-4
    assert min(parity[f"{k}_top1_agreement"] for k in ("int8", "micro", "micro_litert")) >= 75.0
    micro = MicroRunner(record["files"]["micro"]["path"])
    arena = record["micro"]
    assert micro.arena_bytes == arena["arena_bytes"] > 0
    assert arena["profiler_arena_planned_bytes"] == arena["arena_planned_bytes"]  # the same planner on the same tensors
    assert abs(arena["profiler_arena_bytes"] / arena["arena_bytes"] - 1) < 0.1
    val, _ = load_images(trained.data / "val", trained.classes)
    in_litert = LiteRTRunner(record["files"]["micro"]["path"], threads=1)(val)
    np.testing.assert_allclose(micro(val), in_litert, atol=3 * micro.io.out_scale)  # a rounding step or so
    float_logits = LiteRTRunner(output, trained.classes)(val)
    _assert_same_clear_calls(LiteRTRunner(record["files"]["int8"]["path"], threads=1)(val), float_logits)
    _assert_same_clear_calls(micro(val), float_logits)

    micro_path = record["files"]["micro"]["path"]
    assert main(["eval", "--file", micro_path, "--runtime", "tflm", "--data", str(trained.data), "--json",
                 "--workers", "0", "--agreement-with", str(output)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == "tflm-int8" and result["images"] == 40
    assert result["top1"] == pytest.approx(_float_top1(trained), abs=10)
    assert result["agreement"]["with_weights"] == "litert" and result["agreement"]["top1_agreement"] >= 90.0
    photos = [str(next((trained.data / "train" / name).iterdir())) for name in trained.classes]
    answers = []
    for path in (output, record["files"]["int8"]["path"]):
        assert main(["predict", *photos, "--file", str(path), "--threads", "1", "--top", "2", "--json"]) == 0
        answers.append([r["top"][0]["class"] for r in json.loads(capsys.readouterr().out)])
    assert answers[0] == answers[1] and sum(a == c for a, c in zip(answers[0], trained.classes)) >= 4


@needs_executorch
def test_cli_executorch_export_and_eval(trained: Trained, tmp_path, capsys) -> None:
    output = tmp_path / "tiny.pte"
    assert main(["export", "--checkpoint", str(trained.checkpoint), "--format", "executorch", "--int8",
                 "--calib-data", str(trained.data / "train"), "--output", str(output), "--threads", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["files"]["int8"]["path"] == str(tmp_path / "tiny.int8.pte") and Path(f"{output}.json").is_file()
    assert record["parity"]["float_max_abs_diff"] < 1e-4 and record["parity"]["int8_top1_agreement"] >= 90.0
    assert main(["eval", "--file", record["files"]["int8"]["path"], "--data", str(trained.data), "--json",
                 "--workers", "0", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == "executorch-int8" and result["top1"] == pytest.approx(_float_top1(trained), abs=10)


def test_runner_and_export_errors(trained: Trained, tmp_path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer")
    for path, runtime, message in [
        (tmp_path / "model.bin", None, "not a model file attendnets exports"),
        (tmp_path / "missing.onnx", None, "no model file"),
        (tmp_path / "model.onnx", "tflm", "runs in ort, not tflm"),
    ]:
        with pytest.raises(AttendNetsError, match=message):
            load_runner(path, runtime)
    if importlib.util.find_spec("litert_torch") is not None:
        with pytest.raises(AttendNetsError, match="not a .tflite file exported by attendnets"):
            load_runner(bad)
        with pytest.raises(AttendNetsError, match="all-integer: add --int8"):
            export_tflite(trained.model, tmp_path / "m.tflite", {"class_names": trained.classes, **PREPROCESSING},
                          micro=True)


@needs_litert
def test_cli_export_option_errors(trained: Trained, tmp_path, capsys) -> None:
    base = ["export", "--checkpoint", str(trained.checkpoint), "--calib-data", str(trained.data / "train")]
    for extra, message in [
        (["--micro", "--int8"], "--micro needs --format tflite --int8"),
        (["--format", "tflite", "--micro"], "--micro needs --format tflite --int8"),
        (["--format", "tflite", "--int8", "--float-stem"], "--float-stem applies to --format onnx --int8 only"),
        (["--weight-bits", "8"], "--weight-bits applies to --format onnx --int8 only"),
        (["--format", "executorch", "--output", str(tmp_path / "m.onnx")], "--output must be a .pte file"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@needs_litert
@needs_micro
@pytest.mark.skipif(not os.environ.get(DATA_ENV), reason=f"needs real photos: set {DATA_ENV} to an ImageFolder dataset")
def test_micro_follows_litert_on_real_photos(tmp_path) -> None:
    """On the real dataset's val JPEGs, TFLite Micro's reference kernels compute what LiteRT computes from the
    same all-integer file (the file's buffers are read, not garbage), for an untrained model at 32 px."""
    root = Path(os.environ[DATA_ENV])
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    model, _ = _model("attendnet_b")
    model.reset_classifier(len(classes))
    meta = {"class_names": classes, **PREPROCESSING, "img_size": SIZE}
    calibration = torch.from_numpy(np.concatenate(CalibrationImages(root / "train", meta, 16).batches))
    path = export_tflite(model, tmp_path / "b.micro.tflite", meta, int8=True, calibration=calibration, micro=True)
    val = torch.from_numpy(np.concatenate(CalibrationImages(root / "val", meta, 20).batches))
    micro, litert = MicroRunner(path, classes), LiteRTRunner(path, classes, threads=1)
    np.testing.assert_allclose(micro(val), litert(val), atol=3 * micro.io.out_scale)
    assert micro.arena_bytes > SIZE * SIZE * 32  # at least the stem's int8 output lives in the arena


def _with_buffer_outside(model_bytes: bytes) -> bytes:
    """``model_bytes`` with its largest weight buffer stored after the flatbuffer body (offset and size), the way
    ai-edge-quantizer may write it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    metadata = {m.buffer for m in model.metadata or []}
    index = max((i for i in range(len(model.buffers)) if i not in metadata),
                key=lambda i: 0 if model.buffers[i].data is None else len(model.buffers[i].data))
    data = np.asarray(model.buffers[index].data, np.uint8).tobytes()
    model.buffers[index] = schema.BufferT(offset=1, size=len(data))

    def pack() -> bytes:
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    body = pack()
    model.buffers[index].offset = (len(body) + 15) // 16 * 16  # same field widths: the body keeps its length
    body = pack()
    return body + bytes(model.buffers[index].offset - len(body)) + data


@needs_litert
@needs_micro
def test_buffers_after_the_body_are_inlined(trained: Trained, tmp_path) -> None:
    """A file whose weights lie after the flatbuffer body runs in LiteRT; rewritten by the export, TFLite Micro
    computes the same logits from it as from the file that had them inline."""
    from attendnets.export.litert import _finish, read_tflite_meta

    meta = {"class_names": trained.classes, **PREPROCESSING}
    images, _ = load_images(trained.data / "train", trained.classes)
    inline = export_tflite(trained.model, tmp_path / "inline.tflite", meta, int8=True, calibration=images, micro=True)
    outside = _with_buffer_outside(inline.read_bytes())
    (tmp_path / "outside.tflite").write_bytes(outside)
    val, _ = load_images(trained.data / "val", trained.classes)
    expected = MicroRunner(inline)(val)
    np.testing.assert_array_equal(LiteRTRunner(tmp_path / "outside.tflite")(val), LiteRTRunner(inline)(val))
    from ai_edge_litert import schema_py_generated as schema

    moved = schema.ModelT.InitFromPackedBuf(bytearray(outside), 0).buffers
    assert any(b.offset > 1 and b.data is None for b in moved)  # the weights really lie behind the body
    (tmp_path / "rewritten.tflite").write_bytes(_finish(outside, read_tflite_meta(inline)))
    np.testing.assert_array_equal(MicroRunner(tmp_path / "rewritten.tflite")(val), expected)
