"""TFLite export for LiteRT (phones, with XNNPACK) and TFLite Micro (microcontrollers), and runners for both.

The float file comes from ``litert-torch`` (the model in its XNNPACK or microcontroller form, see
:func:`attendnets.export.forms.for_runtime`, with a channels-last ``images (1, H, W, C)`` input so no
runtime transposes the image); ``--int8`` is all-integer by ``ai-edge-quantizer``: int8 weights per output
channel, int8 activations per tensor calibrated on training images, int8 input and output. Every file is
then rewritten once (:func:`_finish`): weight buffers inline in the flatbuffer (``ai-edge-quantizer`` may
store them after it, which LiteRT reads and TFLite Micro silently does not) and the class names and
preprocessing in a metadata entry named :data:`METADATA_NAME`.

``pip install 'attendnets[litert]'`` brings ``litert-torch`` (with ``ai-edge-litert`` and
``ai-edge-quantizer``); ``attendnets[micro]`` brings the ``tflite-micro`` interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.export.forms import Target, for_runtime
from attendnets.export.meta import Runner, as_numpy, deploy_meta, file_path, require
from attendnets.files import atomic_write

FORMAT = "attendnets-tflite"
METADATA_NAME = "attendnets"
BUFFER_ALIGNMENT = 16  # what TFLite's own converter aligns weight buffers to


def _convert(form: nn.Module, example: torch.Tensor) -> bytes:
    """The float TFLite flatbuffer of ``form`` with a channels-last input (``example`` is ``(1, C, H, W)``)."""
    import litert_torch

    wrapped = litert_torch.to_channel_last_io(form, args=[0]).eval()
    with contextlib.redirect_stdout(sys.stderr):  # litert-torch reports its stages on stdout
        return bytes(litert_torch.convert(wrapped, (example.permute(0, 2, 3, 1).contiguous(),)).model_content())


def _quantize(float_model: bytes, calibration: torch.Tensor) -> bytes:
    """All-integer int8 (static: weights per channel, activations per tensor, int8 input and output),
    calibrated on ``calibration`` ``(N, C, H, W)`` fed one image at a time.

    Activation ranges are the minimum and maximum over all images, as ONNX Runtime's and ExecuTorch's
    calibration take them: ai-edge-quantizer's default moving average of per-image ranges clipped the logits
    of a trained model by a third (its calibrator takes the update rule; its ``Quantizer`` does not)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils

    signatures = Interpreter(model_content=float_model).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    samples = [{name: image.permute(1, 2, 0).unsqueeze(0).numpy().astype(np.float32)} for image in calibration]
    with contextlib.redirect_stdout(sys.stderr):
        tool = quantizer.Quantizer(float_model)
        tool.load_quantization_recipe(recipe.static_wi8_ai8())
        observer = calibrator.Calibrator(float_model, qsv_update_func=qsv_utils.min_max_update)
        observer.calibrate({key: samples}, tool._recipe_manager)
        return bytes(tool.quantize(observer.get_model_qsvs(), enable_progress_report=False).quantized_model)


def _finish(model_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """``model_bytes`` with every weight buffer inline (16-byte aligned) and ``metadata`` as JSON in a
    metadata entry named :data:`METADATA_NAME` (replacing an older one)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    raw = np.frombuffer(model_bytes, np.uint8)
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    for buffer in model.buffers:
        if buffer.offset > 1:  # stored after the flatbuffer body
            buffer.data = raw[buffer.offset : buffer.offset + buffer.size].copy()
            buffer.offset = buffer.size = 0
    model.metadata = [m for m in model.metadata or [] if _text(m.name) != METADATA_NAME]
    model.buffers.append(schema.BufferT(data=np.frombuffer(json.dumps(metadata).encode(), np.uint8)))
    model.metadata.append(schema.MetadataT(name=METADATA_NAME, buffer=len(model.buffers) - 1))
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    data = {}
    for index, buffer in enumerate(model.buffers):  # weight vectors first, aligned as TFLite expects
        if buffer.data is not None and len(buffer.data):
            values = np.asarray(buffer.data, np.uint8)
            builder.StartVector(1, len(values), BUFFER_ALIGNMENT)
            builder.head -= len(values)
            builder.Bytes[builder.head : builder.head + len(values)] = values.tobytes()
            data[index] = builder.EndVector()
            buffer.data = None
    model.buffers = [_Packed(_pack_buffer(builder, schema, data.get(i))) for i in range(len(model.buffers))]
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _Packed:
    """A table already written to the builder: ``ModelT.Pack`` takes its offset as is."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def Pack(self, builder: Any) -> int:  # noqa: N802 (flatbuffers' object API name)
        return self.offset


def _pack_buffer(builder: Any, schema: Any, data: int | None) -> int:
    schema.BufferStart(builder)
    if data is not None:
        schema.BufferAddData(builder, data)
    return schema.BufferEnd(builder)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def export_tflite(
    model: nn.Module,
    path: str | os.PathLike,
    meta: dict[str, Any],
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    micro: bool = False,
) -> Path:
    """Export ``model`` to ``path`` as a ``.tflite`` file, ``images (1, H, W, C) -> logits (1, classes)``, with
    ``meta``'s class names and preprocessing inside. ``int8``: all-integer, calibrated on ``calibration``
    ``(N, C, H, W)`` (preprocessed training images). ``micro``: the model in its microcontroller form for
    TFLite Micro (needs ``int8``); otherwise in its XNNPACK form for LiteRT."""
    require("litert_torch", "litert")
    metadata = deploy_meta(model, meta, FORMAT)
    if micro and not int8:
        raise AttendNetsError("a TFLite Micro export is all-integer: add --int8")
    if int8 and (calibration is None or len(calibration) == 0):
        raise AttendNetsError("an int8 TFLite export needs calibration images")
    size = meta["img_size"]
    example = torch.zeros(1, getattr(model, "in_chans", 3), size, size)
    form = for_runtime(model.eval(), Target.MICRO if micro else Target.XNNPACK).eval()
    flat = _convert(form, example)
    if int8:
        flat = _quantize(flat, calibration)
    metadata.update(layout="NHWC", int8=int8, micro=micro, target=(Target.MICRO if micro else Target.XNNPACK).value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = _finish(flat, metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(finished))
    return path


def read_tflite_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`export_tflite` stored in a ``.tflite`` file."""
    from ai_edge_litert import schema_py_generated as schema

    path = file_path(path)
    raw = path.read_bytes()
    try:
        if not schema.Model.ModelBufferHasIdentifier(raw, 0):
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAs(raw, 0)
        entries = {_text(model.Metadata(i).Name()): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
        if METADATA_NAME not in entries:
            raise KeyError(METADATA_NAME)
        meta = json.loads(model.Buffers(entries[METADATA_NAME]).DataAsNumpy().tobytes())
    except (KeyError, ValueError, IndexError, AttributeError, TypeError, UnicodeDecodeError):
        raise AttendNetsError(f"{path} is not a .tflite file exported by attendnets (no class names or preprocessing)") from None
    if meta.get("format") != FORMAT:
        raise AttendNetsError(f"{path} was not exported by attendnets")
    return meta


def _quantization(detail: dict[str, Any]) -> tuple[Any, float, int]:
    """``(dtype, scale, zero point)`` of a tensor, from LiteRT's or TFLite Micro's tensor details."""
    if "quantization" in detail:
        scale, zero = detail["quantization"]
    else:
        params = detail.get("quantization_parameters") or {}
        scales, zeros = list(params.get("scales", [])), list(params.get("zero_points", []))
        scale, zero = (float(scales[0]), int(zeros[0])) if len(scales) else (0.0, 0)
    return detail["dtype"], scale, zero


class _QuantizedIO:
    """Moves a batch in and out of a channels-last, possibly int8, batch-1 model: ``(N, C, H, W)`` float in,
    ``(N, classes)`` float out."""

    def __init__(self, input_detail: dict[str, Any], output_detail: dict[str, Any]) -> None:
        self.input_dtype, self.in_scale, self.in_zero = _quantization(input_detail)
        self.output_dtype, self.out_scale, self.out_zero = _quantization(output_detail)

    def image(self, image: np.ndarray) -> np.ndarray:
        """One ``(C, H, W)`` float image as the model's ``(1, H, W, C)`` input."""
        x = image.transpose(1, 2, 0)[None]
        if self.input_dtype == np.float32:
            return np.ascontiguousarray(x)
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(x / self.in_scale) + self.in_zero, info.min, info.max).astype(self.input_dtype)

    def logits(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out).reshape(1, -1)
        if self.output_dtype == np.float32:
            return out.astype(np.float32)
        return ((out.astype(np.float32) - self.out_zero) * self.out_scale).astype(np.float32)


class LiteRTRunner(Runner):
    """A ``.tflite`` file in the LiteRT interpreter on CPU, with XNNPACK (its default delegate).
    ``threads``: the interpreter's threads (``None``: LiteRT's default)."""

    def __init__(self, path: str | os.PathLike, class_names: list[str] | None = None, threads: int | None = None) -> None:
        require("ai_edge_litert", "litert")
        from ai_edge_litert.interpreter import Interpreter

        self.meta = read_tflite_meta(path)
        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise AttendNetsError(f"LiteRT cannot load {self.path}: {str(err).splitlines()[0]}") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.input_index, self.output_index = inputs[0]["index"], outputs[0]["index"]
        self.io = _QuantizedIO(inputs[0], outputs[0])
        self.num_classes = int(outputs[0]["shape"][-1])
        self.runtime, self.int8 = "litert", bool(self.meta.get("int8"))
        if class_names is not None:
            self.check_classes(class_names)

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        rows = []
        for image in as_numpy(images):
            self.interpreter.set_tensor(self.input_index, self.io.image(image))
            self.interpreter.invoke()
            rows.append(self.io.logits(self.interpreter.get_tensor(self.output_index)))
        return np.concatenate(rows) if rows else np.zeros((0, self.num_classes), np.float32)


ARENA_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


@contextlib.contextmanager
def _captured_output() -> Any:
    """What C++ code writes to file descriptors 1 and 2 inside the block (TFLite Micro logs to stderr), as a
    list that holds one string after it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers what it writes to a file
            for fd, copy in enumerate(saved, start=1):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


class MicroRunner(Runner):
    """A ``.tflite`` file in the TFLite Micro interpreter (reference kernels, as on a microcontroller).

    ``arena_bytes``: the tensor arena the model really used, as TFLite Micro's recording allocator reports
    it after a first call: ``arena_planned_bytes`` (the arena's head: the tensors its memory planner lays out,
    activations and kernels' scratch) plus ``arena_persistent_bytes`` (its tail: per-tensor and per-operator
    bookkeeping, per-channel quantization data). ``arena_size``: the arena to give it (default: large enough,
    then measured)."""

    def __init__(self, path: str | os.PathLike, class_names: list[str] | None = None, arena_size: int | None = None) -> None:
        require("tflite_micro", "micro")
        from tflite_micro.python.tflite_micro import runtime

        self.meta = read_tflite_meta(path)
        self.path = Path(path)
        if not self.meta.get("int8"):
            raise AttendNetsError(f"{self.path} is a float model: TFLite Micro runs the --int8 --micro export")
        data = self.path.read_bytes()
        try:
            self.interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena_size or 64 * len(data) + (16 << 20))
        except (ValueError, RuntimeError) as err:
            raise AttendNetsError(f"TFLite Micro cannot load {self.path}: {str(err).splitlines()[0]}") from None
        self.io = _QuantizedIO(self.interpreter.get_input_details(0), self.interpreter.get_output_details(0))
        self.num_classes = int(self.interpreter.get_output_details(0)["shape"][-1])
        self.runtime, self.int8 = "tflm", True
        arena = self._measure_arena()
        self.arena_bytes, self.arena_planned_bytes, self.arena_persistent_bytes = arena["total"], arena["head"], arena["tail"]
        if class_names is not None:
            self.check_classes(class_names)

    def _measure_arena(self) -> dict[str, int]:
        shape = self.interpreter.get_input_details(0)["shape"]
        self.interpreter.set_input(np.zeros(shape, self.io.input_dtype), 0)
        self.interpreter.invoke()
        with _captured_output() as report:
            self.interpreter.print_allocations()
        found = {part: int(size) for part, size in ARENA_LINE.findall(report[0])}
        if set(found) != {"total", "head", "tail"}:
            raise AttendNetsError(f"TFLite Micro reported no arena size for {self.path}")
        return found

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        rows = []
        for image in as_numpy(images):
            self.interpreter.set_input(self.io.image(image), 0)
            self.interpreter.invoke()
            rows.append(self.io.logits(self.interpreter.get_output(0)))
        return np.concatenate(rows) if rows else np.zeros((0, self.num_classes), np.float32)
