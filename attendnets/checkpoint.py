"""Checkpoints: weights as safetensors plus a JSON sidecar that says how to rebuild and feed the model.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``; the sidecar holds the model
(a name, or the full spec of an AttendNet so that a moved or edited spec file does not matter), the class
names, the preprocessing (image size, mean/std, interpolation, crop fraction), the epoch, the metrics and
the library version. Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so a run killed mid-write leaves the previous checkpoint intact.

The training state (optimizer, scheduler, EMA, RNG states, epoch) is a separate ``train_state.pt`` that
only ``--resume`` reads. It holds only tensors and plain data (numbers, strings, lists, dicts), so it is
read with ``torch.load(weights_only=True)``: a tampered file cannot run code.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write, atomic_write_text
from attendnets.model import AttendNet
from attendnets.quantize import dequantize_state_dict, int8_state_dict
from attendnets.registry import create_model, is_spec_path

FORMAT = "attendnets-checkpoint"
TRAIN_STATE_FORMAT = "attendnets-train-state"
WEIGHTS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"


def model_meta(model: nn.Module, name: str) -> dict[str, Any]:
    """How to rebuild ``model`` later: its name and, for AttendNets, its full spec."""
    return {
        "model": None if is_spec_path(name) else name,
        "spec": model.spec.to_dict() if isinstance(model, AttendNet) else None,
        "num_classes": model.num_classes,
        "in_chans": getattr(model, "in_chans", 3),
    }


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, sidecar)`` for a checkpoint given as ``NAME``, ``NAME.safetensors``, ``NAME.json`` or
    a run folder (its ``best`` checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best"
    if path.suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + META_SUFFIX)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any], int8: bool = False) -> None:
    """Write ``path.safetensors`` (weights and buffers, contiguous) and ``path.json`` (``meta``).

    ``int8`` stores every conv/linear weight as int8 with fp32 scales per output channel (a quarter of the
    bytes; see :func:`~attendnets.quantize.int8_state_dict`): for a model whose weights are already 8-bit
    (``attendnets quantize``'s output) nothing is lost, and :func:`load_weights` reads either kind."""
    weights, sidecar = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    if int8:
        tensors = int8_state_dict(model, buffers=True)
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, **({"storage": "int8"} if int8 else {})}
    atomic_write(weights, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
    from attendnets import __version__

    text = json.dumps({"format": FORMAT, "attendnets_version": __version__, **meta}, indent=2) + "\n"
    atomic_write_text(sidecar, text)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a checkpoint, checked to be one of ours."""
    _, sidecar = checkpoint_paths(path)
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise AttendNetsError(f"no checkpoint sidecar {sidecar}") from None
    except json.JSONDecodeError as err:
        raise AttendNetsError(f"checkpoint sidecar {sidecar} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AttendNetsError(f"{sidecar} is not an attendnets checkpoint sidecar")
    return meta


def describe(meta: dict[str, Any]) -> str:
    """``attendnet_b (10 classes)``: the model of a checkpoint in a few words."""
    name = meta.get("model") or (meta.get("spec") or {}).get("name", "?")
    return f"{name} ({meta.get('num_classes')} classes)"


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the architecture a sidecar describes."""
    kwargs = dict(num_classes=meta["num_classes"], in_chans=meta.get("in_chans", 3))
    if meta.get("spec") is not None:
        import timm

        return timm.create_model("attendnet", spec=meta["spec"], **kwargs)
    if meta.get("model"):
        return create_model(meta["model"], **kwargs)
    raise AttendNetsError("checkpoint sidecar names neither a model nor a spec")


def load_weights(model: nn.Module, path: str | os.PathLike, new_classifier: bool = False) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model``; a checkpoint of another architecture or class count
    is refused with a one-line explanation. Returns the sidecar.

    ``new_classifier``: keep ``model``'s own classifier (the one its timm cfg names) and load the rest, so
    that a model for other classes starts from the checkpoint's features, as timm's pretrained loading does."""
    weights, _ = checkpoint_paths(path)
    meta = read_meta(path)
    if not weights.is_file():
        raise AttendNetsError(f"checkpoint weights {weights} are missing")
    try:
        stored = safetensors.torch.load_file(weights)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise AttendNetsError(f"cannot read checkpoint weights {weights}: {err}") from None
    state = dequantize_state_dict(stored, weights)
    own = model.state_dict()
    if new_classifier:
        head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier") + "."
        own = {k: v for k, v in own.items() if not k.startswith(head)}
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise AttendNetsError(
            f"checkpoint {weights.name} holds another architecture, {describe(meta)}: "
            f"{len(missing)} tensor(s) of the model missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None and num_classes != meta.get("num_classes"):
            raise AttendNetsError(
                f"checkpoint {weights.name} is for {meta.get('num_classes')} classes, the model has {num_classes}"
            )
        k = wrong[0]
        raise AttendNetsError(
            f"checkpoint {weights.name} holds another architecture, {describe(meta)}: {len(wrong)} tensor(s) "
            f"differ in shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        )
    model.load_state_dict(state, strict=not new_classifier)
    return meta


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights: ``(model in eval mode, sidecar)``."""
    meta = read_meta(path)
    model = build_from_meta(meta)
    load_weights(model, path)
    return model.eval(), meta


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically; ``state`` must hold only tensors and plain data."""
    atomic_write(path, lambda tmp: torch.save({"format": TRAIN_STATE_FORMAT, **state}, tmp))


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :func:`save_train_state` without unpickling anything but tensors
    and plain data; any other content is refused with a one-line error before it can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AttendNetsError(f"no training state {path} to resume from") from None
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(str(err))
        if reason.startswith("Unsupported global"):
            raise AttendNetsError(
                f"cannot read training state {path}: it holds Python objects other than tensors and plain data "
                f"({reason.split(' was not')[0]}; a tampered file, or one written before attendnets saved plain "
                "states); refused before loading them, as unpickling them could run code"
            ) from None
        raise AttendNetsError(f"cannot read training state {path}: damaged ({reason})") from None
    except Exception as err:  # torch.load raises many types for a damaged file
        raise AttendNetsError(f"cannot read training state {path}: {_first_line(str(err))}") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise AttendNetsError(f"{path} is not an attendnets training state")
    return state


def _unpickler_reason(message: str) -> str:
    """The reason in one of torch's multi-line "Weights only load failed" messages."""
    _, found, reason = message.partition("WeightsUnpickler error:")
    return _first_line(reason if found else message)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")
