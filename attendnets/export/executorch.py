"""ExecuTorch export for phones and other CPU devices: a batch-1 ``.pte`` program lowered to XNNPACK, float
or all-integer int8, plus a runner that reads it back.

An ExecuTorch program holds one fixed graph, so the export takes ``images (1, C, H, W)`` float32 NCHW and
gives ``logits (1, classes)``; :class:`ExecuTorchRunner` feeds a batch one image at a time. What a deployed
model needs besides the program goes in a side file ``NAME.pte.json``: the class names, the preprocessing,
the input shape and how much of the program XNNPACK runs (:func:`delegation_summary`), since an operator left
outside XNNPACK runs on ExecuTorch's own, slower CPU kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.export.forms import Target, for_runtime
from attendnets.export.meta import Runner, as_numpy, deploy_meta, require
from attendnets.files import atomic_write, atomic_write_json

FORMAT = "attendnets-executorch"


def meta_path(path: str | os.PathLike) -> Path:
    """The side file of the program ``path``: ``NAME.pte`` -> ``NAME.pte.json``."""
    return Path(f"{os.fspath(path)}.json")


def _lower(exported: torch.export.ExportedProgram) -> Any:
    """An ``ExecutorchProgramManager`` with every part of ``exported`` that XNNPACK takes delegated to it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()


def _quantize(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor) -> nn.Module:
    """``model`` with static int8 quantization for XNNPACK (PT2E): int8 weights per output channel, int8
    activations per tensor, ranges observed on ``calibration`` ``(N, C, H, W)`` fed as N batches of one.

    Activation ranges are the observed min and max, not the quantizer's default histogram fit: on the four
    Imagenette models the histogram fit cost MobileNet-V2 0.69 point of top-1 and min/max 0.38, with the
    others within 0.2 point either way (docs/results/deploy.md); ONNX Runtime's export calibrates the same way."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    activations = dataclasses.replace(
        config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12)
    )
    config = dataclasses.replace(config, input_activation=activations, output_activation=activations)
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), XNNPACKQuantizer().set_global(config))
    with torch.no_grad():
        for image in calibration:
            prepared(image.unsqueeze(0).to(example.dtype))
    return convert_pt2e(prepared)


def delegation_summary(program: Any) -> dict[str, Any]:
    """How much of a lowered program XNNPACK runs: ``{"partitions": delegate calls, "undelegated": {operator:
    count}, "edge_quant_ops": {operator: count}}``. ``edge_quant_ops`` are the (de)quantize kernels run outside
    XNNPACK, at the edges of the model or of a partition. ``program``: a ``.pte`` path or an
    ``ExecutorchProgramManager``."""
    from executorch.exir.schema import DelegateCall, KernelCall

    if isinstance(program, (str, os.PathLike)):
        program = _read_program(Path(program))
    plan = getattr(program, "executorch_program", program).execution_plan[0]
    partitions, undelegated, quant_ops = 0, Counter(), Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            call = instruction.instr_args
            if isinstance(call, DelegateCall):
                partitions += 1
            elif isinstance(call, KernelCall):
                name = plan.operators[call.op_index].name
                (quant_ops if "quantize" in name else undelegated)[name] += 1
    return {"partitions": partitions, "undelegated": dict(undelegated), "edge_quant_ops": dict(quant_ops)}


def _read_program(path: Path) -> Any:
    """The serialized program (``executorch.exir.schema.Program``) in the ``.pte`` file ``path``."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    try:
        return deserialize_pte_binary(path.read_bytes()).program
    except OSError as e:
        raise AttendNetsError(f"cannot read {path}: {e.strerror}") from None
    except Exception:
        raise AttendNetsError(f"{path} is not an ExecuTorch program (.pte)") from None


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    meta: dict[str, Any],
    int8: bool = False,
    calibration: torch.Tensor | None = None,
) -> Path:
    """Export ``model`` in its XNNPACK form (:func:`~attendnets.export.forms.for_runtime`) to ``path`` as an
    ExecuTorch program lowered to XNNPACK, ``images (1, C, H, W) -> logits (1, classes)``, and write the side
    file ``path.json`` with ``meta``'s class names and preprocessing. ``int8``: quantize weights and
    activations, calibrated on ``calibration`` ``(N, C, H, W)``, preprocessed training images."""
    require("executorch", "executorch")
    side = deploy_meta(model, meta, FORMAT)
    if int8 and (calibration is None or len(calibration) == 0):
        raise AttendNetsError("int8 ExecuTorch export needs calibration images")
    path = Path(path)
    input_shape = [1, getattr(model, "in_chans", 3), meta["img_size"], meta["img_size"]]
    model = for_runtime(model.eval(), Target.XNNPACK).eval()
    example = torch.zeros(input_shape)
    if int8:
        model = _quantize(model, example, calibration)
    program = _lower(torch.export.export(model, (example,)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(program.buffer))

    side.update(int8=bool(int8), layout="NCHW", input_shape=input_shape)
    side["delegation"] = delegation_summary(program)
    atomic_write_json(meta_path(path), side)
    return path


def read_executorch_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The side file of the ``.pte`` program ``path`` (see :func:`export_executorch`)."""
    side = meta_path(path)
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AttendNetsError(f"{path} was not exported by attendnets (no valid side file {side.name})")
    return meta


class ExecuTorchRunner(Runner):
    """An exported ExecuTorch program on CPU: ``runner(images (N, C, H, W)) -> logits (N, classes)`` (numpy).

    ``class_names``: the classes of the data it will see; a model trained on other classes is refused.
    ``threads``: the size of ExecuTorch's threadpool, which XNNPACK runs on (``None``: ExecuTorch's default,
    about one per core). The pool is shared by the whole process: this resizes it for every program, and must
    not happen while another thread runs one."""

    def __init__(
        self, path: str | os.PathLike, class_names: list[str] | None = None, threads: int | None = None
    ) -> None:
        require("executorch", "executorch")
        from executorch.runtime import Runtime

        self.path = Path(path)
        self.meta = read_executorch_meta(path)
        if threads is not None:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        try:
            self.program = Runtime.get().load_program(self.path)
        except RuntimeError:
            raise AttendNetsError(f"{self.path} is not a valid ExecuTorch program (.pte)") from None
        try:
            self.method = self.program.load_method("forward")
        except (RuntimeError, KeyError) as e:
            raise AttendNetsError(f"cannot load the forward method of {self.path}: {e}") from None
        self.input_shape = tuple(self.meta["input_shape"])
        self.num_classes = self.method.metadata.output_tensor_meta(0).sizes()[-1]
        self.runtime, self.int8 = "executorch", bool(self.meta.get("int8"))
        if class_names is not None:
            self.check_classes(class_names)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        images = torch.from_numpy(as_numpy(images))
        if images.shape[1:] != self.input_shape[1:]:
            raise AttendNetsError(
                f"{self.path.name} takes images of shape (N, {', '.join(map(str, self.input_shape[1:]))}), "
                f"got {tuple(images.shape)}"
            )
        logits = [self.method.execute([image.unsqueeze(0).contiguous()])[0] for image in images]
        return torch.cat(logits).numpy() if logits else np.zeros((0, self.num_classes), np.float32)
