"""The ``attendnets quantize`` workflow: a trained checkpoint in, an 8-bit checkpoint and its report out.

It builds on the primitives of :mod:`attendnets.quantize` and on training (for the QAT fine-tune) and
evaluation (float against 8-bit top-1), which is why it is a module of its own above all three.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attendnets.checkpoint import checkpoint_paths, load_checkpoint, read_meta, save_checkpoint
from attendnets.data import DATA_ENV
from attendnets.errors import AttendNetsError
from attendnets.evaluate import evaluate_checkpoint
from attendnets.files import atomic_write_json
from attendnets.quantize import memory_record, quantize_weights, save_int8
from attendnets.training import TrainConfig, train


def quantize_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    data: str | os.PathLike | None = None,
    qat_epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    qat_activations: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """8-bit weights for a trained checkpoint, written to ``output``: ``best.safetensors`` + sidecar (a
    checkpoint like any other, with int8-representable weights), ``int8.safetensors`` (the storage form,
    :func:`~attendnets.quantize.save_int8`) and ``quantize.json`` (the returned report).

    Without ``qat_epochs``: post-training quantization. With it: a quantization-aware fine-tune from the
    checkpoint through :func:`attendnets.training.train` (cosine schedule without warm-up, ``lr`` by default
    a tenth of the recipe's, the checkpoint's preprocessing), whose run files also land in ``output``.
    When ``data`` (or ``$ATTENDNETS_DATA``) is there, the float and the 8-bit checkpoint are evaluated on
    its ``val/``."""
    if qat_epochs is None and (qat_activations or lr is not None or resume):
        raise AttendNetsError("--qat-activations, --lr and --resume apply to a QAT fine-tune: add --qat-epochs N")
    if qat_epochs is not None and qat_epochs < 1:
        raise AttendNetsError(f"--qat-epochs must be at least 1, got {qat_epochs}")
    out = Path(output)
    best = out / "best"
    source_weights, _ = checkpoint_paths(checkpoint)
    if source_weights.resolve() == checkpoint_paths(best)[0].resolve():
        raise AttendNetsError(f"--output {out} would overwrite the checkpoint {source_weights}; choose another folder")
    meta = read_meta(checkpoint)
    data = data or os.environ.get(DATA_ENV)

    if qat_epochs is None:
        model, _ = load_checkpoint(checkpoint)
        quantized, _ = quantize_weights(model)
        kept = {k: v for k, v in meta.items() if k not in ("format", "attendnets_version", "metrics")}
        q_meta = {**kept, "weight_bits": 8, "ptq": {"source": str(checkpoint)}}
        save_checkpoint(best, quantized, q_meta)
    else:
        _fine_tune(checkpoint, meta, out, data, qat_epochs, lr, batch_size, workers, qat_activations, resume)
        quantized, q_meta = load_checkpoint(best)
    memory = save_int8(quantized, out / "int8.safetensors")

    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "output": str(out),
        "model": meta.get("model") or meta["spec"]["name"],
        "method": "qat" if qat_epochs else "post-training",
        "qat_epochs": qat_epochs,
        "qat_activations": qat_activations,
        "weight_memory": memory_record(memory),
        "int8_file": str(out / "int8.safetensors"),
        "int8_file_bytes": (out / "int8.safetensors").stat().st_size,
        "checkpoint_8bit": str(best),
    }
    if qat_epochs:
        result["qat_val_top1"] = q_meta["metrics"]["val_top1"]  # as trained: fake-quantized activations too
    if data:
        float_eval = evaluate_checkpoint(checkpoint, data, "val", batch_size, workers)
        int8_eval = evaluate_checkpoint(best, data, "val", batch_size, workers)
        result.update(images=int8_eval["images"], float_top1=float_eval["top1"], int8_top1=int8_eval["top1"],
                      float_top5=float_eval["top5"], int8_top5=int8_eval["top5"])
        if qat_epochs is None:
            metrics = {"val_top1": int8_eval["top1"], "val_top5": int8_eval["top5"], "val_loss": int8_eval["loss"],
                       "float_val_top1": float_eval["top1"]}
            save_checkpoint(best, quantized, {**q_meta, "metrics": metrics})
    atomic_write_json(out / "quantize.json", result)
    return result


def _fine_tune(checkpoint: str | os.PathLike, meta: dict[str, Any], out: Path, data: str | os.PathLike | None,
               epochs: int, lr: float | None, batch_size: int, workers: int, activations: bool, resume: bool) -> None:
    """The QAT fine-tune: a training run in ``out`` that starts from ``checkpoint`` with its preprocessing."""
    out.mkdir(parents=True, exist_ok=True)
    model_name = meta.get("model")
    if model_name is None:  # an AttendNet from a spec: training rebuilds it from a spec file
        model_name = str(out / "spec.json")
        atomic_write_json(model_name, meta["spec"])
    defaults = TrainConfig(model="", output="")
    train(TrainConfig(
        model=model_name, output=str(out), data=None if data is None else str(data), img_size=meta["img_size"],
        epochs=epochs, batch_size=batch_size, lr=defaults.lr / 10 if lr is None else lr, warmup_epochs=0,
        workers=workers, resume=resume, init=str(checkpoint), qat=True, qat_activations=activations,
        interpolation=meta["interpolation"], crop_pct=meta["crop_pct"], mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    ))
