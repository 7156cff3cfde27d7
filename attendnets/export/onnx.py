"""ONNX export for deployment: a float graph with a dynamic batch axis that carries its own class names and
preprocessing, and its int8 version (:mod:`attendnets.export.ort` runs and reads them back).

The graph is exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), which gives the
graph that ONNX Runtime quantizes into fast int8 (see ``shared/notes/performance.md``). What a deployed
model needs besides its weights is stored in the model's ``metadata_props``, each value JSON-encoded:
``class_names`` and the preprocessing of the checkpoint sidecar (``img_size``, ``mean``, ``std``,
``interpolation``, ``crop_pct``), so an ``.onnx`` file is usable on its own.

The model is exported in its ONNX Runtime form (:func:`attendnets.export.forms.for_runtime` with
``Target.ORT``: the same math, written the way ONNX Runtime's int8 kernels are fast at).

:func:`quantize_onnx` makes the int8 graph that is fast in ONNX Runtime on x86 (measured): static
quantization calibrated on real images, QDQ format, per-channel int8 weights, uint8 activations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.attention import WithAttentionOutputs
from attendnets.checkpoint import load_checkpoint
from attendnets.data import IMAGE_EXTENSIONS, eval_transform, image_files, load_rgb
from attendnets.errors import AttendNetsError
from attendnets.export.forms import Target, for_runtime
from attendnets.export.meta import deploy_meta
from attendnets.export.ort import FORMAT, read_onnx_meta
from attendnets.files import atomic_write
from attendnets.runtime import cpu_flags

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any], attention_outputs: bool = False
                ) -> Path:
    """Export ``model`` to ``path`` as a checked float ONNX graph, ``images (batch, C, H, W) -> logits
    (batch, classes)``, with ``meta``'s class names and preprocessing (see :data:`META_KEYS`) stored in it.

    ``attention_outputs``: also output every condenser's attention values (sigmoid of A after expansion,
    ``(batch, mid, H, W)``) as ``attention_block<i>``, ``i`` its block index (see :mod:`attendnets.attention`);
    the metadata entry ``attention_blocks`` lists them."""
    import onnx

    stored = deploy_meta(model, meta, FORMAT)
    model = for_runtime(model, Target.ORT).eval()
    size = meta["img_size"]
    example = torch.zeros(1, getattr(model, "in_chans", 3), size, size)
    outputs = [OUTPUT_NAME]
    if attention_outputs:
        model = WithAttentionOutputs(model)
        outputs += [f"attention_block{i}" for i in model.blocks]
        stored["attention_blocks"] = model.blocks
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=outputs,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    proto = program.model_proto
    props = {k: v if k in ("format", "attendnets_version", "model") else json.dumps(v) for k, v in stored.items()}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    return path


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, attention_outputs: bool = False) -> Path:
    """Export the model of a checkpoint with the class names and preprocessing of its sidecar."""
    model, meta = load_checkpoint(checkpoint)
    return export_onnx(model, path, meta, attention_outputs)


class CalibrationImages:
    """ONNX Runtime calibration data: up to ``max_images`` images of ``folder`` (searched recursively,
    evenly spaced through the sorted list so every class folder is represented), preprocessed as ``meta``
    says, in batches of ``batch_size``. Unreadable images are skipped."""

    def __init__(
        self, folder: str | os.PathLike, meta: dict[str, Any], max_images: int = 64, batch_size: int = 16
    ) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise AttendNetsError(f"calibration folder {folder} does not exist")
        files = image_files(folder)
        if not files:
            raise AttendNetsError(
                f"{folder} has no images to calibrate on ({', '.join(IMAGE_EXTENSIONS[:3])}, ...)"
            )
        files = [files[i * len(files) // max_images] for i in range(min(max_images, len(files)))]
        transform = eval_transform(meta)
        images = []
        for path in files:
            try:
                images.append(transform(load_rgb(path)))
            except (OSError, ValueError):
                continue
        if not images:
            raise AttendNetsError(f"none of the {len(files)} images picked from {folder} could be read")
        self.batches = [torch.stack(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
        self._next = iter(self.batches)

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor, batch_size: int = 16) -> CalibrationImages:
        """Calibration data that is already preprocessed: ``inputs (N, C, H, W)``."""
        reader = cls.__new__(cls)
        reader.batches = [inputs[i : i + batch_size].numpy() for i in range(0, len(inputs), batch_size)]
        reader._next = iter(reader.batches)
        return reader

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._next = iter(self.batches)


def saturating_int8() -> bool:
    """Whether this is an x86 CPU with AVX2 but no VNNI, where ONNX Runtime's uint8 x int8 products saturate."""
    flags = cpu_flags()
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & flags


def quantize_onnx(
    float_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: str | os.PathLike | torch.Tensor,
    max_images: int = 64,
    float_stem: bool = False,
    weight_bits: int | None = None,
) -> Path:
    """Write the int8 (static, QDQ, per-channel int8 weights, uint8 activations) version of an exported
    float graph, its activation ranges calibrated on up to ``max_images`` images of the folder
    ``calibration`` (training images, not the test set), or on a tensor of preprocessed inputs
    ``(N, C, H, W)``. The metadata is carried over.

    ``weight_bits``: 8, or 7 (ONNX Runtime's ``reduce_range``) for x86 CPUs with AVX2 but no VNNI, where ONNX
    Runtime multiplies uint8 by int8 in 16-bit sums that saturate: measured on such a machine, 8-bit weights
    left a small test network's int8 graph agreeing with float on 77.5% of images, below the 90% the tests
    ask. ``None``: 7 if this CPU is one of those (:func:`saturating_int8`), else 8; give 8 for a graph that
    will run on another CPU (ARM, or x86 with VNNI). The choice is stored in the metadata (``weight_bits``).

    The graph is all-integer by default. ``float_stem`` keeps the convs that read the image in float: on the
    Imagenette checkpoints that was most of the int8 graph's disagreement with float (AttendNet-B: top-1
    agreement 92.5% -> 97.5%, MobileNet-V1: 87% -> 91% on 400 val images), but where the stem's output also
    feeds a residual add (AttendNet-B's first condensers) ONNX Runtime runs those adds channels-first between
    Transposes, at 112 px."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if weight_bits is None:
        weight_bits = 7 if saturating_int8() else 8
    if weight_bits not in (7, 8):
        raise AttendNetsError(f"weight_bits must be 7 or 8, not {weight_bits}")
    meta = read_onnx_meta(float_path)
    if isinstance(calibration, torch.Tensor):
        reader = CalibrationImages.from_inputs(calibration[:max_images])
    else:
        reader = CalibrationImages(calibration, meta, max_images)
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = int8_path.with_name(f".{int8_path.name}.pre.onnx")
    try:
        # Symbolic shape inference has failed on Resize nodes (the attention condenser's expansion).
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False)
        props = {**{p.key: p.value for p in graph.metadata_props}, "weight_bits": json.dumps(weight_bits)}
        inputs = {i.name for i in graph.graph.input}
        stem = [n.name for n in graph.graph.node if n.op_type == "Conv" and n.input[0] in inputs] if float_stem else []

        def write(tmp: str) -> None:
            quantize_static(
                str(prepared),
                tmp,
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=stem,
                reduce_range=weight_bits == 7,
            )
            proto = onnx.load(tmp)
            onnx.helper.set_model_props(proto, props)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, tmp)

        atomic_write(int8_path, write)
    finally:
        prepared.unlink(missing_ok=True)
    return int8_path
