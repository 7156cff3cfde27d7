"""The search's settings that need neither torch, timm nor optuna, so that ``attendnets explore --help`` is
built without loading them: the training fidelity with its defaults, the costs, samplers and the count parser.
The modules that run a search take these from here."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from attendnets.errors import AttendNetsError

COSTS = ("macs", "params", "weight_kb", "peak_activation_kb", "micro_arena_kb", "latency_ms", "latency_ratio")
PREDICTION_MARGIN = 1.2  # a design predicted above the latency-ratio cap times this is not exported
SAMPLERS = ("tpe", "nsga2", "random")
MIN_DESIGNS = 3  # a pilot ranks at least this many designs
_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_count(text: str) -> float:
    """``150M`` -> 150e6, ``200k`` -> 2e5, ``1.5G``, or a plain number (for ``--max-macs`` and ``--max-params``)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgKMG]?)\s*", text)
    if not match:
        raise AttendNetsError(f"{text!r} is not a count (examples: 150M, 200k, 1500000)")
    return float(match[1]) * _SUFFIXES[match[2].lower()]


@dataclass(frozen=True)
class Fidelity:
    """How a design is trained and scored during the search (the same for every design of a rung)."""

    img_size: int = 64
    # On Imagenette at 64 px and 3 epochs attendnet_b scored 9.6% (chance) with 100 images per class and
    # ~30% with 800: below that, rung 0 ranks noise.
    images_per_class: int = 800
    holdout_per_class: int = 50
    epochs: int = 3  # at rung 0; rung r trains epochs * eta**r
    eta: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0  # the hold-out split, the initial weights and the data order
    # The random-resized crop's share of the image area: timm's range, which every study so far trained with,
    # kept when the comparison recipe moved to 35-100%, so that studies old and new score designs alike.
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("seed", "crop_scale") and not value > 0:
                raise AttendNetsError(f"--{f.name.replace('_', '-')} must be positive, got {value}")
        if self.eta < 2:
            raise AttendNetsError(f"--eta must be at least 2 (keep the top 1/eta of each rung), got {self.eta}")
        if self.img_size < 8:
            raise AttendNetsError(f"--img-size-search must be at least 8 pixels, got {self.img_size}")

    def rung_epochs(self, rung: int) -> int:
        return self.epochs * self.eta**rung

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
