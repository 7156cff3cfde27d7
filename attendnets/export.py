"""ONNX export for deployment: a float graph with a dynamic batch axis that carries its own class names and
preprocessing, its int8 version, and an ONNX Runtime runner that reads them back.

The graph is exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), which gives the
graph that ONNX Runtime quantizes into fast int8 (see ``shared/notes/performance.md``). What a deployed
model needs besides its weights is stored in the model's ``metadata_props``, each value JSON-encoded:
``class_names`` and the preprocessing of the checkpoint sidecar (``img_size``, ``mean``, ``std``,
``interpolation``, ``crop_pct``), so an ``.onnx`` file is usable on its own.

:func:`for_runtime` expresses the blocks the way ONNX Runtime's int8 kernels are fast at, with the same math
(measured in ``docs/results/ort_profile.md``); the PyTorch model is not changed:

- a depthwise conv with a channel multiplier (``Conv2d(c, m*c, groups=c)``, PEPE's depthwise expansion)
  falls off the fast depthwise kernel (6.4x slower network): it becomes a plain depthwise conv over
  ``m`` copies of its input. In a PEPE the copies are tiled (``cat([x] * m)``, one int8 ``Concat``) with the
  conv's weights and the next projection's inputs permuted to tile order (:class:`TiledPEPE`); elsewhere each
  channel is repeated in place (:class:`RepeatedDepthwise`), which costs layout ops (``Transpose``,
  ``Expand``, ``Reshape``) in ONNX Runtime's channels-last int8 graph. (Folding the copies into PEPE's
  preceding 1x1 projection instead doubled that conv's work: no measurable gain, not kept.)
- the attention condenser's learned scale ``S`` is folded into the up-mixing conv's weights (a broadcast
  per-channel ``Mul`` is slow in int8), and its embedding's grouped conv (4 groups) becomes a dense conv
  with a block-diagonal weight (tiny groups are slow in int8; the dense conv is not).

:func:`quantize_onnx` makes the int8 graph that is fast in ONNX Runtime on x86 (measured): static
quantization calibrated on real images, QDQ format, per-channel int8 weights, uint8 activations.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.blocks import PEPE, VisualAttentionCondenser
from attendnets.checkpoint import atomic_write, load_checkpoint
from attendnets.data import IMAGE_EXTENSIONS, image_files, load_rgb, short_list
from attendnets.errors import AttendNetsError
from attendnets.evaluate import eval_transform

FORMAT = "attendnets-onnx"
PREPROCESSING_KEYS = ("img_size", "mean", "std", "interpolation", "crop_pct")
META_KEYS = ("class_names", *PREPROCESSING_KEYS)
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class TiledPEPE(nn.Module):
    """A :class:`~attendnets.blocks.PEPE` whose depthwise expansion reads its input tiled ``m`` times
    (``cat([x] * m)``: one int8 ``Concat``, no layout ops) instead of each channel repeated ``m`` times in
    place. Tiled channel ``t * c + i`` is original channel ``i * m + t``: the depthwise conv's weight and BN
    and the input columns of the next 1x1 projection are permuted to match, so the output is the same."""

    def __init__(self, pepe: PEPE) -> None:
        super().__init__()
        pepe = copy.deepcopy(pepe)
        self.project, self.expand_dw, self.project2, self.expand_pw = (
            pepe.project, pepe.expand_dw, pepe.project2, pepe.expand_pw
        )
        self.residual = pepe.residual
        conv, norm = self.expand_dw[0], self.expand_dw[1]
        channels, self.mult = conv.in_channels, conv.out_channels // conv.in_channels
        # tiled position t * c + i holds original channel i * m + t
        order = torch.arange(conv.out_channels).reshape(channels, self.mult).t().reshape(-1)
        tiled = nn.Conv2d(
            conv.out_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            groups=conv.out_channels, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )
        with torch.no_grad():
            tiled.weight.copy_(conv.weight[order])
            if conv.bias is not None:
                tiled.bias.copy_(conv.bias[order])
            if isinstance(norm, nn.BatchNorm2d):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, name).copy_(getattr(norm, name)[order])
            next_conv = self.project2[0]
            next_conv.weight.copy_(next_conv.weight[:, order])
        self.expand_dw[0] = tiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.project(x)
        out = self.expand_dw(torch.cat([projected] * self.mult, dim=1))
        out = self.expand_pw(self.project2(out))
        return x + out if self.residual else out


class RepeatedDepthwise(nn.Module):
    """``Conv2d(c, m*c, groups=c)`` as each input channel repeated ``m`` times, then a depthwise
    ``Conv2d(m*c, m*c, groups=m*c)`` with the same ``(m*c, 1, k, k)`` weight: output channel ``j`` sees
    input channel ``j // m`` in both."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.mult = conv.out_channels // conv.in_channels
        self.conv = nn.Conv2d(
            conv.out_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=conv.out_channels,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x.unsqueeze(2).expand(n, c, self.mult, h, w).reshape(n, c * self.mult, h, w))


# The dense conv does ``groups`` times the multiply-adds of the grouped one: a win measured at 4 groups.
MAX_DENSE_GROUPS = 4


def _dense(conv: nn.Conv2d) -> nn.Conv2d:
    """A grouped conv as a dense one whose weight is block-diagonal (zero across groups): the same result."""
    dense = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    with torch.no_grad():
        dense.weight.zero_()
        for g in range(conv.groups):
            rows, cols = slice(g * per_out, (g + 1) * per_out), slice(g * per_in, (g + 1) * per_in)
            dense.weight[rows, cols] = conv.weight[rows]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
    return dense


class RuntimeVAC(nn.Module):
    """A :class:`~attendnets.blocks.VisualAttentionCondenser` with the same math, as ONNX Runtime's int8
    kernels are fast at: ``S`` folded into the up-mixing conv (``M'(V' * A * S) = M'_S(V' * A)``, ``M'_S``
    having column ``c`` of its weight times ``S_c``), and an embedding conv of at most
    :data:`MAX_DENSE_GROUPS` groups made dense with a block-diagonal weight."""

    def __init__(self, vac: VisualAttentionCondenser) -> None:
        super().__init__()
        vac = copy.deepcopy(vac)
        self.pool_size, self.residual = vac.pool_size, vac.residual
        self.down_mix, self.condense, self.embed, self.up_mix = vac.down_mix, vac.condense, vac.embed, vac.up_mix
        grouped = self.embed[0][0]
        if 1 < grouped.groups <= MAX_DENSE_GROUPS and grouped.groups < grouped.in_channels:
            self.embed[0][0] = _dense(grouped)
        with torch.no_grad():
            self.up_mix[0].weight.mul_(vac.scale.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.down_mix(x)
        attention = torch.sigmoid(self.embed(self.condense(v)))
        attention = nn.functional.interpolate(attention, scale_factor=float(self.pool_size), mode="nearest")
        height, width = v.shape[-2:]
        if attention.shape[-2] != height or attention.shape[-1] != width:
            attention = attention[..., :height, :width]
        out = self.up_mix(v * attention)
        return x + out if self.residual else out


def _runtime_block(module: nn.Module) -> nn.Module | None:
    """The runtime form of an attention condenser or an expanding PEPE; ``None`` for any other module."""
    if isinstance(module, VisualAttentionCondenser):
        return RuntimeVAC(module)
    if isinstance(module, PEPE) and module.expand_dw[0].out_channels > module.expand_dw[0].in_channels:
        return TiledPEPE(module)
    return None


def for_runtime(model: nn.Module) -> nn.Module:
    """A copy of ``model`` expressed for ONNX Runtime with the same math (see the module docstring): attention
    condensers as :class:`RuntimeVAC`, PEPEs that expand as :class:`TiledPEPE`, and other depthwise convs with
    a channel multiplier as :class:`RepeatedDepthwise`."""
    rewrite = _runtime_block(model)
    if rewrite is not None:
        return rewrite
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        rewrite = _runtime_block(module)
        if rewrite is not None:
            model.set_submodule(name, rewrite)
    for name, module in list(model.named_modules()):
        if (
            isinstance(module, nn.Conv2d)
            and module.groups == module.in_channels > 1
            and module.out_channels > module.in_channels
        ):
            model.set_submodule(name, RepeatedDepthwise(module))
    return model


def export_onnx(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Export ``model`` to ``path`` as a checked float ONNX graph, ``images (batch, C, H, W) -> logits
    (batch, classes)``, with ``meta``'s class names and preprocessing (see :data:`META_KEYS`) stored in it."""
    import onnx

    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise AttendNetsError(f"cannot export without {', '.join(missing)}: export from a checkpoint sidecar")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != len(meta["class_names"]):
        raise AttendNetsError(f"the model has {num_classes} classes but {len(meta['class_names'])} class names")
    model = for_runtime(model).eval()
    size = meta["img_size"]
    example = torch.zeros(1, getattr(model, "in_chans", 3), size, size)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    proto = program.model_proto
    from attendnets import __version__

    props = {"format": FORMAT, "attendnets_version": __version__, **{k: json.dumps(meta[k]) for k in META_KEYS}}
    if meta.get("model") or meta.get("spec"):
        props["model"] = meta.get("model") or meta["spec"]["name"]
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    return path


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Export the model of a checkpoint with the class names and preprocessing of its sidecar."""
    model, meta = load_checkpoint(checkpoint)
    return export_onnx(model, path, meta)


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

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._next = iter(self.batches)


def quantize_onnx(
    float_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: str | os.PathLike,
    max_images: int = 64,
    float_stem: bool = True,
) -> Path:
    """Write the int8 (static, QDQ, per-channel int8 weights, uint8 activations) version of an exported
    float graph, its activation ranges calibrated on up to ``max_images`` images of the folder
    ``calibration`` (training images, not the test set). The metadata is carried over.

    ``float_stem`` keeps the convs that read the image in float (everything after them is int8): on the
    Imagenette checkpoints, quantizing the stem and the image was most of the int8 graph's disagreement
    with float (AttendNet-B: top-1 agreement 92.5% -> 97.5%, MobileNet-V1: 87% -> 91% on 400 val images),
    for about 1-2% more latency."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = read_onnx_meta(float_path)
    reader = CalibrationImages(calibration, meta, max_images)
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = int8_path.with_name(f".{int8_path.name}.pre.onnx")
    try:
        # Symbolic shape inference has failed on Resize nodes (the attention condenser's expansion).
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False)
        props = {p.key: p.value for p in graph.metadata_props}
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
            )
            proto = onnx.load(tmp)
            onnx.helper.set_model_props(proto, props)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, tmp)

        atomic_write(int8_path, write)
    finally:
        prepared.unlink(missing_ok=True)
    return int8_path


def read_onnx_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The class names, preprocessing and model name stored in an ONNX file written by :func:`export_onnx`."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise AttendNetsError(f"no ONNX file {path}") from None
    except Exception as err:  # onnx raises protobuf's DecodeError and others for a damaged file
        raise AttendNetsError(f"cannot read ONNX file {path}: {err}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("format") != FORMAT:
        raise AttendNetsError(f"{path} was not exported by attendnets: it has no class names or preprocessing")
    meta = {k: json.loads(props[k]) for k in META_KEYS}
    meta.update({k: props[k] for k in ("model", "attendnets_version") if k in props})
    return meta


class OnnxRunner:
    """An ONNX Runtime session on CPU for an exported model: ``runner(images) -> logits`` (numpy).

    ``class_names``: the classes of the data it will see; a model trained on other classes is refused.
    ``threads``: ONNX Runtime's intra-op threads (``None``: its default, one per core)."""

    def __init__(
        self, path: str | os.PathLike, class_names: list[str] | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_onnx_meta(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.num_classes = self.session.get_outputs()[0].shape[-1]
        if class_names is not None:
            self.check_classes(class_names)

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def check_classes(self, class_names: list[str]) -> None:
        """Refuse data whose classes are not the ones the model was exported with."""
        if len(class_names) != self.num_classes:
            raise AttendNetsError(
                f"{self.path.name} predicts {self.num_classes} classes, the data has {len(class_names)} "
                f"({short_list(class_names)})"
            )
        if class_names != self.class_names:
            raise AttendNetsError(
                f"the data's classes ({short_list(class_names)}) are not the ones {self.path.name} was trained "
                f"on ({short_list(self.class_names)})"
            )

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]
