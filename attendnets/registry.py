"""Model names: our presets, the baselines of Table 1, what the paper reports, and one ``create_model``.

Light to import (no torch, no timm): the command line reads these names while building its parser. The
presets are registered with timm by :mod:`attendnets.timm_models`, which ``import attendnets`` arranges to
load whenever timm is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attendnets.errors import AttendNetsError

if TYPE_CHECKING:
    from torch import nn

    from attendnets.spec import ArchSpec

PRESET_DIR = Path(__file__).parent / "presets"
PAPER_PRESETS = ("attendnet_a", "attendnet_b")  # reconstructions of the paper's networks (Table 1's setting)
# Designs our exploration found (attendnets explore), not the paper's.
FOUND_PRESETS = ("attendnet_found_macs", "attendnet_found_latency")
PRESETS = (*PAPER_PRESETS, *FOUND_PRESETS)

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
    """The spec of a preset (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise AttendNetsError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    from attendnets.spec import ArchSpec

    return ArchSpec.load(PRESET_DIR / f"{name}.json")


def is_spec_path(name: str) -> bool:
    return Path(name).suffix in (".json", ".yaml", ".yml")


def is_attendnet(name: str) -> bool:
    """Whether ``create_model(name)`` builds an :class:`~attendnets.model.AttendNet` (a preset, a spec file or
    the generic registered name)."""
    return is_spec_path(name) or name in (*PRESETS, "attendnet")


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs) -> nn.Module:
    """Build a model by preset name, baseline short name (``mobilenet_v1``), any timm name, or spec path.

    ``num_classes``/``in_chans`` of ``None`` keep the model's defaults.
    """
    import timm  # with our presets registered: see attendnets/__init__.py

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
