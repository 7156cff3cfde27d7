"""Our models registered with timm: importing this module registers ``attendnet_a``, ``attendnet_b`` and
``attendnet`` (any spec). ``import attendnets`` sees to it that this happens whenever timm is imported (see
:mod:`attendnets`), so::

    timm.create_model("attendnet_b", num_classes=10)
    timm.create_model("attendnet", spec="my_design.json")   # any spec file, dict or ArchSpec
"""

from __future__ import annotations

from pathlib import Path

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from attendnets.data import CROP_PCT, INTERPOLATION, MEAN, STD
from attendnets.errors import AttendNetsError
from attendnets.model import AttendNet
from attendnets.registry import load_preset
from attendnets.spec import ArchSpec


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 50,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": CROP_PCT,
        "interpolation": INTERPOLATION,
        "mean": MEAN,
        "std": STD,
        "first_conv": "blocks.0.0",
        "classifier": "classifier",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "attendnet_a": _cfg(),
        "attendnet_b": _cfg(),
        "attendnet": _cfg(),
    }
)


def _create(variant: str, spec: ArchSpec, pretrained: bool, **kwargs) -> AttendNet:
    if pretrained:
        raise AttendNetsError(f"no pretrained weights are published for {variant}; load a checkpoint instead")
    if kwargs.pop("global_pool", "avg") != "avg":
        raise AttendNetsError(f"{variant} pools by global average only")
    return build_model_with_cfg(
        AttendNet, variant, pretrained=False, spec=spec, feature_cfg=dict(flatten_sequential=True), **kwargs
    )


@register_model
def attendnet_a(pretrained: bool = False, **kwargs) -> AttendNet:
    """AttendNet-A (reconstruction matching Table 1: 1,386K params, 276.8M MACs at 224 px, 50 classes)."""
    return _create("attendnet_a", load_preset("attendnet_a"), pretrained, **kwargs)


@register_model
def attendnet_b(pretrained: bool = False, **kwargs) -> AttendNet:
    """AttendNet-B (reconstruction matching Table 1: 782K params, 191.3M MACs at 224 px, 50 classes)."""
    return _create("attendnet_b", load_preset("attendnet_b"), pretrained, **kwargs)


@register_model
def attendnet(pretrained: bool = False, spec: ArchSpec | dict | str | Path | None = None, **kwargs) -> AttendNet:
    """An AttendNet from any spec (file path, dict or :class:`ArchSpec`); the spec's own ``num_classes``
    and ``in_chans`` are the defaults."""
    if spec is None:
        raise AttendNetsError("timm.create_model('attendnet', spec=...) needs a spec file, dict or ArchSpec")
    spec = ArchSpec.coerce(spec)
    kwargs.setdefault("num_classes", spec.num_classes)
    kwargs.setdefault("in_chans", spec.in_chans)
    return _create("attendnet", spec, pretrained, **kwargs)
