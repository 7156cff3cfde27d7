"""The ``attendnets quantize`` workflow: a trained checkpoint in, an 8-bit checkpoint and its report out.

It builds on the primitives of :mod:`attendnets.quantize` and on training (for the QAT fine-tune) and
evaluation (float against 8-bit top-1), which is why it is a module of its own above all three.

Where it writes: OUTPUT must be a new or empty folder, with two exceptions that lose nothing:

- a post-training run may replace an earlier post-training output of the same checkpoint: OUTPUT holds
  nothing but the files quantize writes, and its ``quantize.json`` names that checkpoint. The files replaced
  are this verb's own, recomputed from the same source;
- ``resume`` continues an interrupted QAT fine-tune in its own OUTPUT (training checks that it is one).

Anything else in OUTPUT (a training run, another model's 8-bit copy, other files) is refused before any
work. Post-training output is written into a staging folder beside OUTPUT and moved in at the end, so a
failure leaves OUTPUT as it was. A QAT fine-tune checks its data against the checkpoint first, then writes its
run files into OUTPUT as training does (an interrupted one continues with ``resume``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attendnets.checkpoint import checkpoint_paths, load_checkpoint, read_meta, save_checkpoint
from attendnets.data import DATA_ENV, list_classes, resolve_data_dir, short_list
from attendnets.errors import AttendNetsError
from attendnets.evaluate import class_difference, evaluate_checkpoint
from attendnets.files import atomic_write_json, check_writable, staged_folder
from attendnets.quantize import memory_record, quantize_weights, save_int8
from attendnets.training import TrainConfig, check_output, train

POST_TRAINING_FILES = ("best.safetensors", "best.json", "int8.safetensors", "quantize.json")
SPEC_FILE = "spec.json"  # the model of a QAT fine-tune of an AttendNet, for training to rebuild


@dataclass
class _Job:
    """What one quantize run was asked, with the defaults filled in."""

    checkpoint: str | os.PathLike
    meta: dict[str, Any]
    out: Path
    data: str | os.PathLike | None
    batch_size: int
    workers: int
    qat_epochs: int | None = None
    qat_activations: bool = False


def quantize_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    data: str | os.PathLike | None = None,
    qat_epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    qat_activations: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """8-bit weights for a trained checkpoint, written to ``output``: ``best.safetensors`` + sidecar (a
    checkpoint like any other, with int8-representable weights), ``int8.safetensors`` (the storage form,
    :func:`~attendnets.quantize.save_int8`) and ``quantize.json`` (the returned report). What ``output`` may
    already hold: see the module docstring.

    Without ``qat_epochs``: post-training quantization. With it: a quantization-aware fine-tune from the
    checkpoint through :func:`attendnets.training.train` (cosine schedule without warm-up, ``lr`` by default
    a tenth of the recipe's, the checkpoint's preprocessing), whose run files also land in ``output``.
    When ``data`` (or ``$ATTENDNETS_DATA``) is there, the float and the 8-bit checkpoint are evaluated on
    its ``val/``. ``batch_size`` and ``workers`` default to the training recipe's."""
    if qat_epochs is None and (qat_activations or lr is not None or resume):
        raise AttendNetsError("--qat-activations, --lr and --resume apply to a QAT fine-tune: add --qat-epochs N")
    if qat_epochs is not None and qat_epochs < 1:
        raise AttendNetsError(f"--qat-epochs must be at least 1, got {qat_epochs}")
    recipe = TrainConfig(model="", output="")
    job = _Job(checkpoint, read_meta(checkpoint), Path(output), data or os.environ.get(DATA_ENV),
               recipe.batch_size if batch_size is None else batch_size, recipe.workers if workers is None else workers,
               qat_epochs, qat_activations)
    if qat_epochs is None:
        _check_post_training_output(job.out, checkpoint)
        if job.data:
            _check_classes(job, ("val",))
        with staged_folder(job.out) as folder:
            model, _ = load_checkpoint(checkpoint)
            quantized, _ = quantize_weights(model)
            return _finish(job, folder, quantized, _post_training_meta(job))
    check_output(job.out, resume)
    _check_classes(job, ("train", "val"))
    _fine_tune(job, recipe.lr / 10 if lr is None else lr, resume)
    quantized, q_meta = load_checkpoint(job.out / "best")
    return _finish(job, job.out, quantized, q_meta)


def _check_post_training_output(out: Path, checkpoint: str | os.PathLike) -> None:
    """Refuse, before any work, an OUTPUT a post-training run may not write into."""
    check_writable(out, "--output")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names or _earlier_post_training(out, names, checkpoint):
        return
    source = checkpoint_paths(checkpoint)[0]
    if source.resolve().parent == out.resolve():
        raise AttendNetsError(f"--output {out} holds the checkpoint {source} itself; choose a new or empty folder")
    raise AttendNetsError(
        f"--output {out} already holds files quantize did not write there for {checkpoint} ({short_list(names, 3)}); "
        "choose a new or empty folder"
    )


def _earlier_post_training(out: Path, names: list[str], checkpoint: str | os.PathLike) -> bool:
    """Whether ``out`` holds only what an earlier post-training quantize of the same checkpoint wrote."""
    if "quantize.json" not in names or not set(names) <= set(POST_TRAINING_FILES):
        return False
    try:
        earlier = json.loads((out / "quantize.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(earlier, dict) or earlier.get("method") != "post-training":
        return False
    source = checkpoint_paths(str(earlier.get("checkpoint")))[0]
    return source.resolve() == checkpoint_paths(checkpoint)[0].resolve()


def _check_classes(job: _Job, splits: tuple[str, ...]) -> None:
    """Refuse data whose class folders are not the checkpoint's, before any work."""
    root = resolve_data_dir(job.data)
    trained = job.meta["class_names"]
    for split in splits:
        classes = list_classes(root / split)
        if classes != trained:
            raise AttendNetsError(
                f"the {len(classes)} classes of {root / split} are not the {len(trained)} {job.checkpoint} was "
                f"trained on: {class_difference(classes, trained, f'{split}/', 'the checkpoint')}"
            )


def _finish(job: _Job, folder: Path, quantized: nn.Module, q_meta: dict[str, Any]) -> dict[str, Any]:
    """Write the 8-bit checkpoint (post-training; a fine-tune's is there), ``int8.safetensors`` and
    ``quantize.json`` into ``folder`` (``job.out`` or its staging folder) and return the report, which names
    the files in ``job.out``. ``q_meta``: the 8-bit checkpoint's sidecar."""
    if not job.qat_epochs:
        save_checkpoint(folder / "best", quantized, q_meta)
    memory = save_int8(quantized, folder / "int8.safetensors")
    result: dict[str, Any] = {
        "checkpoint": str(job.checkpoint),
        "output": str(job.out),
        "model": job.meta.get("model") or job.meta["spec"]["name"],
        "method": "qat" if job.qat_epochs else "post-training",
        "qat_epochs": job.qat_epochs,
        "qat_activations": job.qat_activations,
        "weight_memory": memory_record(memory),
        "int8_file": str(job.out / "int8.safetensors"),
        "int8_file_bytes": (folder / "int8.safetensors").stat().st_size,
        "checkpoint_8bit": str(job.out / "best"),
    }
    if job.qat_epochs:  # as trained: fake-quantized activations too
        result["qat_val_top1"] = q_meta["metrics"]["val_top1"]
    if job.data:
        float_eval = evaluate_checkpoint(job.checkpoint, job.data, "val", job.batch_size, job.workers)
        int8_eval = evaluate_checkpoint(folder / "best", job.data, "val", job.batch_size, job.workers)
        result.update(images=int8_eval["images"], float_top1=float_eval["top1"], int8_top1=int8_eval["top1"],
                      float_top5=float_eval["top5"], int8_top5=int8_eval["top5"])
        if not job.qat_epochs:
            metrics = {"val_top1": int8_eval["top1"], "val_top5": int8_eval["top5"], "val_loss": int8_eval["loss"],
                       "float_val_top1": float_eval["top1"]}
            save_checkpoint(folder / "best", quantized, {**q_meta, "metrics": metrics})
    atomic_write_json(folder / "quantize.json", result)
    return result


def _post_training_meta(job: _Job) -> dict[str, Any]:
    kept = {k: v for k, v in job.meta.items() if k not in ("format", "attendnets_version", "metrics")}
    return {**kept, "weight_bits": 8, "ptq": {"source": str(job.checkpoint)}}


def _fine_tune(job: _Job, lr: float, resume: bool) -> None:
    """The QAT fine-tune: a training run in ``job.out`` that starts from the checkpoint with its preprocessing.
    If it fails, the spec file written for it (and the folder, if made for it and left empty) is removed."""
    meta, out = job.meta, job.out
    created = not out.exists()
    model_name, spec_written = meta.get("model"), False
    if model_name is None:  # an AttendNet from a spec: training rebuilds it from a spec file
        model_name = str(out / SPEC_FILE)
        spec_written = _write_spec(out / SPEC_FILE, meta["spec"])
    config = TrainConfig(
        model=model_name, output=str(out), data=str(job.data), img_size=meta["img_size"], epochs=job.qat_epochs,
        batch_size=job.batch_size, lr=lr, warmup_epochs=0, workers=job.workers, resume=resume,
        init=str(job.checkpoint), qat=True, qat_activations=job.qat_activations, interpolation=meta["interpolation"],
        crop_pct=meta["crop_pct"], mean=tuple(meta["mean"]), std=tuple(meta["std"]),
    )
    try:
        train(config)
    except BaseException:
        if spec_written:  # a resumed fine-tune writes it again; its training state holds the spec
            (out / SPEC_FILE).unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _write_spec(path: Path, spec: dict[str, Any]) -> bool:
    """Write the spec file a fine-tune trains from; ``False`` when ``path`` already holds that very spec (a
    resumed fine-tune's). A different file there is refused: it is not ours to replace."""
    if path.exists():
        try:
            same = json.loads(path.read_text()) == spec
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            same = False
        if not same:
            raise AttendNetsError(f"{path} is another spec than the checkpoint's; choose a new or empty --output")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, spec)
    return True
