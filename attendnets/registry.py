"""Model names: our presets registered with timm, the baselines of Table 1, and one ``create_model``.

After ``import attendnets``::

    timm.create_model("attendnet_b", num_classes=10)
    timm.create_model("attendnet", spec="my_design.json")   # any spec file, dict or ArchSpec
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from attendnets.data import CROP_PCT, INTERPOLATION, MEAN, STD
from attendnets.errors import AttendNetsError
from attendnets.model import AttendNet
from attendnets.spec import ArchSpec

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("attendnet_a", "attendnet_b")

# Short names for the baselines of Table 1, resolved to timm's implementations.
BASELINES = {"mobilenet_v1": "mobilenetv1_100", "mobilenet_v2": "mobilenetv2_100"}


@dataclass(frozen=True)
class Reported:
    """A row of the paper's Table 1 (ImageNet50, 224x224): what the authors reported, not measured by us.
    AttendNet rows are at 8-bit weights, the others at 32-bit."""

    top1: float
    params: int
    macs: int


TABLE1 = {
    "mobilenet_v1": Reported(64.5, 3_260_000, 567_500_000),
    "mobilenet_v2": Reported(68.7, 2_290_000, 299_700_000),
    "attonet_a": Reported(73.0, 2_970_000, 424_800_000),
    "attonet_b": Reported(71.1, 1_870_000, 277_500_000),
    "attendnet_a": Reported(73.2, 1_386_000, 276_800_000),
    "attendnet_b": Reported(71.7, 782_000, 191_300_000),
}
REPORTED_ONLY = ("attonet_a", "attonet_b")  # no public architecture: shown with the paper's figures


def load_preset(name: str) -> ArchSpec:
    """The spec of a preset (``attendnet_a`` or ``attendnet_b``)."""
    if name not in PRESETS:
        raise AttendNetsError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return ArchSpec.load(PRESET_DIR / f"{name}.json")


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


def is_spec_path(name: str) -> bool:
    return Path(name).suffix in (".json", ".yaml", ".yml")


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs) -> nn.Module:
    """Build a model by preset name, baseline short name (``mobilenet_v1``), any timm name, or spec path.

    ``num_classes``/``in_chans`` of ``None`` keep the model's defaults.
    """
    overrides = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v is not None}
    if is_spec_path(name):
        return timm.create_model("attendnet", spec=name, **overrides, **kwargs)
    if name in REPORTED_ONLY:
        raise AttendNetsError(f"{name} has no public architecture: only the paper's reported figures are known")
    timm_name = BASELINES.get(name, name)
    if not timm.is_model(timm_name):
        raise AttendNetsError(
            f"unknown model {name!r}: give a preset ({', '.join(PRESETS)}), a baseline "
            f"({', '.join(BASELINES)}), a timm model name, or a .json/.yaml spec file"
        )
    return timm.create_model(timm_name, **overrides, **kwargs)
