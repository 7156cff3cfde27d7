"""Our models registered with timm: importing this module registers the presets (``attendnet_a``,
``attendnet_b``, ``attendnet_found_macs``, ``attendnet_found_latency``) and ``attendnet`` (any spec;
AttendNet-B's without one).
``import attendnets`` sees to it that this happens whenever timm is imported (see :mod:`attendnets`), so::

    timm.create_model("attendnet_b", num_classes=10, drop_path_rate=0.1)
    timm.create_model("attendnet", spec="my_design.json")   # any spec file, dict or ArchSpec
    timm.create_model("attendnet_b", pretrained=True)         # the shipped Imagenette weights (attendnets.pretrained)
    timm.create_model("attendnet_b", pretrained=True,        # one of our checkpoints (its JSON sidecar beside it)
                      pretrained_cfg_overlay=dict(file="runs/b/best.safetensors"))

A preset with shipped weights is registered with the pretrained tag ``imagenette`` (``attendnet_b.imagenette``),
its default; ``attendnet`` has none. The pretrained cfg a model gets follows its spec (input size, class count,
first conv, final feature map size) and, when the file is one of our checkpoints, the checkpoint's class count,
input channels and preprocessing, so that timm keeps its classifier (same class count) or drops it (another
one) as for any pretrained model. 8-bit checkpoints load as the float weights they stand for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from attendnets.checkpoint import checkpoint_paths, describe, read_meta
from attendnets.data import CROP_PCT, INTERPOLATION, MEAN, STD
from attendnets.errors import AttendNetsError
from attendnets.model import AttendNet, spec_geometry
from attendnets.pretrained import TAG, release_cfg, shipped
from attendnets.quantize import dequantize_state_dict
from attendnets.registry import PRESETS, load_preset
from attendnets.spec import ArchSpec

DEFAULT_SPEC = "attendnet_b"  # what timm.create_model("attendnet") builds without a spec
WEIGHT_SOURCES = ("file", "state_dict", "url", "hf_hub_id")
PREPROCESSING = ("mean", "std", "interpolation", "crop_pct")  # cfg entries a checkpoint's sidecar gives


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "crop_pct": CROP_PCT,
        "interpolation": INTERPOLATION,
        "mean": MEAN,
        "std": STD,
        "classifier": "classifier",
        "license": "apache-2.0",
        **kwargs,
    }


def _registry_cfgs() -> dict[str, dict]:
    """The registry's cfgs: a preset with a shipped checkpoint has that checkpoint's, under the tag
    ``imagenette``; the other presets their spec's, and ``attendnet`` its default spec's. Each model gets the
    cfg of its own spec (spec_cfg) as an overlay."""
    weights = shipped()
    cfgs = {}
    for name in (*PRESETS, "attendnet"):
        spec = load_preset(DEFAULT_SPEC if name == "attendnet" else name)
        if name in weights:
            meta = read_meta(weights[name])
            file, _ = checkpoint_paths(weights[name])
            spec = dataclasses.replace(spec, img_size=meta["img_size"], num_classes=meta["num_classes"])
            cfgs[f"{name}.{TAG}"] = _cfg(**{**spec_cfg(spec), **checkpoint_cfg(meta, spec.in_chans),
                                            **release_cfg(file, meta)})
        else:
            cfgs[name] = _cfg(**spec_cfg(spec))
    return cfgs


def spec_cfg(spec: ArchSpec, in_chans: int | None = None) -> dict[str, Any]:
    """The pretrained-cfg entries that follow from a spec: ``input_size`` (``spec.img_size``), ``num_classes``,
    ``first_conv`` (the first conv module's name) and ``pool_size`` (the final feature map's size at
    ``img_size``)."""
    in_chans = spec.in_chans if in_chans is None else in_chans
    first_conv, size = spec_geometry(spec, in_chans)
    return dict(
        input_size=(in_chans, spec.img_size, spec.img_size),
        num_classes=spec.num_classes,
        first_conv=first_conv,
        pool_size=(size, size),
    )


def checkpoint_cfg(meta: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """The pretrained-cfg entries one of our checkpoints' sidecars gives: its class count and, where it says,
    its input size (with ``in_chans`` channels) and preprocessing."""
    cfg: dict[str, Any] = {"num_classes": meta["num_classes"]}
    if "img_size" in meta:
        cfg["input_size"] = (in_chans, meta["img_size"], meta["img_size"])
    cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in meta.items() if k in PREPROCESSING})
    return cfg


default_cfgs = generate_default_cfgs(_registry_cfgs())


def _checkpoint_meta(file: Any) -> dict[str, Any] | None:
    """The JSON sidecar of one of our checkpoints, when ``file`` (a weights source) is one and has it."""
    if not isinstance(file, (str, Path)):
        return None
    _, sidecar = checkpoint_paths(file)
    return read_meta(file) if sidecar.is_file() else None


def _pretrained_spec(variant: str, spec: ArchSpec | None, cfg: dict[str, Any]) -> tuple[ArchSpec | None, dict | None]:
    """``(spec, sidecar)`` for ``pretrained=True`` with the resolved cfg ``cfg``: refuses a cfg without a
    weights source, and a checkpoint of another architecture than ``spec`` (which it gives when ``None``)."""
    if not any(cfg.get(k) for k in WEIGHT_SOURCES):
        raise AttendNetsError(
            f"no pretrained weights are shipped for {variant}: give a checkpoint, e.g. "
            f"timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file='run/best.safetensors'))"
        )
    meta = _checkpoint_meta(cfg.get("file"))
    if meta is None or meta.get("spec") is None:
        return spec, meta
    stored = ArchSpec.from_dict(meta["spec"])
    if spec is not None and stored != spec:
        raise AttendNetsError(
            f"checkpoint {cfg['file']} holds {describe(meta)}, another architecture than {variant}'s; "
            "build it with timm.create_model('attendnet', pretrained=True, pretrained_cfg_overlay=dict(file=...))"
        )
    return stored, meta


def _create(variant: str, spec: ArchSpec | None, pretrained: bool, **kwargs: Any) -> AttendNet:
    """Build ``variant`` from ``spec`` (``None``: the default spec, or a checkpoint's) through timm's builder,
    with the spec's pretrained cfg under the caller's ``pretrained_cfg_overlay``."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    meta = None
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay).to_dict()
        spec, meta = _pretrained_spec(variant, spec, cfg)
    spec = spec or load_preset(DEFAULT_SPEC)
    # The cfg's input channels: the weights' when loading (timm adapts the first conv to in_chans), else the model's.
    weights_chans = (meta or {}).get("in_chans", spec.in_chans)
    derived = spec_cfg(spec, weights_chans if pretrained else kwargs.get("in_chans"))
    if meta:  # the weights' classes (timm keeps or drops the classifier) and preprocessing
        derived.update(checkpoint_cfg(meta, weights_chans))
    return build_model_with_cfg(
        AttendNet,
        variant,
        pretrained=pretrained,
        pretrained_cfg_overlay={**derived, **overlay},
        pretrained_filter_fn=_float_weights,
        spec=spec,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


def _float_weights(state_dict: dict[str, Any], model: AttendNet) -> dict[str, Any]:
    """timm's filter of loaded weights: an 8-bit checkpoint's int8 tensors as the float ones they stand for."""
    return dequantize_state_dict(state_dict, "the pretrained weights")


@register_model
def attendnet_a(pretrained: bool = False, **kwargs) -> AttendNet:
    """AttendNet-A (reconstruction matching Table 1: 1,386K params, 276.8M MACs at 224 px, 50 classes)."""
    return _create("attendnet_a", load_preset("attendnet_a"), pretrained, **kwargs)


@register_model
def attendnet_b(pretrained: bool = False, **kwargs) -> AttendNet:
    """AttendNet-B (reconstruction matching Table 1: 782K params, 191.3M MACs at 224 px, 50 classes)."""
    return _create("attendnet_b", load_preset("attendnet_b"), pretrained, **kwargs)


@register_model
def attendnet_found_macs(pretrained: bool = False, **kwargs) -> AttendNet:
    """An AttendNet our exploration found on Imagenette (accuracy against multiply-adds), not the paper's:
    440K params, 49.9M MACs at 128 px, 10 classes."""
    return _create("attendnet_found_macs", load_preset("attendnet_found_macs"), pretrained, **kwargs)


@register_model
def attendnet_found_latency(pretrained: bool = False, **kwargs) -> AttendNet:
    """A design our exploration found on Imagenette (accuracy against measured int8 latency), not the paper's:
    307K params, 6.9M MACs at 128 px, 10 classes, no attention condenser."""
    return _create("attendnet_found_latency", load_preset("attendnet_found_latency"), pretrained, **kwargs)


@register_model
def attendnet(pretrained: bool = False, spec: ArchSpec | dict | str | Path | None = None, **kwargs) -> AttendNet:
    """An AttendNet from any spec (file path, dict or :class:`ArchSpec`), whose ``num_classes`` and
    ``in_chans`` are the defaults; without one AttendNet-B's, or with ``pretrained=True`` the checkpoint's."""
    return _create("attendnet", None if spec is None else ArchSpec.coerce(spec), pretrained, **kwargs)
