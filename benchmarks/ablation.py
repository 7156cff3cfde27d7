"""Does the attention condenser earn its cost? The ablation the paper never ran, on Imagenette (issue 17).

attendnet_b's margin over MobileNet-V1 could come from the condensers' attention or from the small residual
design around it (down-mixing, up-mixing, residual). Every arm keeps attendnet_b's layout and trains with the
comparison recipe (crops keeping 35-100% of the area, the residual condensers' last BN zero-initialised:
docs/results/presets.md), 2 seeds:

- ``attention``: attendnet_b as it is (benchmarks/presets.py's crop035 runs, reused: run that first; its
  seed 0 is benchmarks/imagenette.py's run);
- ``no-attention``: every condenser without its attention values, ``V'' = V' * S`` (no condensation,
  embedding or expansion): the same widths, fewer multiply-adds;
- ``no-attention-wider``: the same with the freed multiply-adds given back as wider down-mixing;
- ``squeeze-excite``: the attention values from timm's squeeze-excite block instead (channel attention in
  place of condensed spatial attention), down-mixing widened as in ``no-attention-wider``;
- ``mobilenet_v1``: the baseline the paper compares with (presets.py's crop035 runs, reused).

Widening: a condenser's attention branch costs ``mid^2 (k^2/g + 1) / p^2`` multiply-adds per pixel of its
input (embedding conv k x k in g groups, then 1x1, at 1/p^2 of the pixels) and its mixing ``2 C mid``; so
``mid + mid^2 (k^2/g + 1) / (2 C p^2)`` channels of mixing alone cost what the condenser did.

Runs are in ``runs/ablation/<arm>/attendnet_b-s<seed>`` (see benchmarks/arms.py); the report
(docs/results/ablation.{md,json}) is written once every arm has both seeds, until then into the runs folder.

    python benchmarks/ablation.py --data ../shared/datasets/imagenette2-224
    python benchmarks/ablation.py --report
    python benchmarks/ablation.py --latency   # each arm's int8 latency (docs/results/ablation_latency.md)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import Arm, compare, gap, run_study, with_blocks  # noqa: E402
from common import run_main  # noqa: E402
from imagenette import EPOCHS  # noqa: E402
from presets import KAIMING_COMPARISON_RUN  # noqa: E402

from attendnets.spec import ArchSpec, VACSpec, block_out_chs  # noqa: E402


def equal_cost_mid(block: VACSpec, chs: int) -> int:
    """Down-mixing width whose mixing alone costs what ``block`` (mixing and attention) costs on ``chs`` channels."""
    attention = block.mid**2 * (block.embed_kernel**2 / block.embed_groups + 1) / block.pool**2
    return int(block.mid + attention / (2 * chs) + 0.5)


def without_attention(attention: str, widen: bool) -> Callable[[ArchSpec], ArchSpec]:
    def change(spec: ArchSpec) -> ArchSpec:
        inputs = [spec.in_chans]
        for b in spec.blocks:
            inputs.append(block_out_chs(b, inputs[-1]))

        def replace(i: int, b: Any) -> Any:
            if not isinstance(b, VACSpec):
                return b
            return dataclasses.replace(b, attention=attention, mid=equal_cost_mid(b, inputs[i]) if widen else b.mid)

        return with_blocks(spec, replace)

    return change


ARMS = {
    "attention": Arm("attendnet_b as it is", reuse="presets/crop035", seed0_run=KAIMING_COMPARISON_RUN),
    "no-attention": Arm("condensers without attention, V'' = V' * S", spec=without_attention("none", False)),
    "no-attention-wider": Arm("no attention, down-mixing widened to the condensers' multiply-adds",
                              spec=without_attention("none", True)),
    "squeeze-excite": Arm("squeeze-excite instead of attention, down-mixing widened as above",
                          spec=without_attention("se", True)),
    "mobilenet_v1": Arm("MobileNet-V1", models=("mobilenet_v1",), reuse="presets/crop035"),  # no residual blocks
}


def conclusion(rows: dict[str, dict[str, Any]]) -> str | None:
    """Whether the condensers' attention earns its multiply-adds, in words, from the 8-bit gaps at equal cost:
    against wider down-mixing without attention, against squeeze-excite attention, and whether squeeze-excite
    itself beats that widening; ``None`` until the first two have a seed in common with attendnet_b."""
    wider, se = gap(rows, "attention", "no-attention-wider"), gap(rows, "attention", "squeeze-excite")
    if wider is None or se is None:
        return None
    if wider.clear and wider.mean > 0:
        first = (f"**Attention earns its cost.** Spending the attention branches' multiply-adds on wider "
                 f"down-mixing instead loses {wider.mean:.2f} points at 8-bit weights")
    elif wider.clear:
        first = (f"**Attention does not earn its cost.** Spending the attention branches' multiply-adds on wider "
                 f"down-mixing instead gains {-wider.mean:.2f} points at 8-bit weights")
    else:
        first = (f"**Attention does not clearly earn its cost.** Without it, with the multiply-adds spent on wider "
                 f"down-mixing, attendnet_b is {-wider.mean:+.2f} points at 8-bit weights, within the seed spread")
    sentences = [f"{first} (attendnet_b's margin {wider.details()})."]
    if se.clear and se.mean > 0:
        second = "The condensers' spatial attention also beats timm's squeeze-excite (channel attention) of equal cost"
    elif se.clear:
        second = f"timm's squeeze-excite (channel attention) of equal cost beats it by {-se.mean:.2f} points"
    else:
        second = "timm's squeeze-excite (channel attention) of equal cost is not told apart from it"
    sentences.append(f"{second} (attendnet_b's margin {se.details()}).")
    channel = gap(rows, "squeeze-excite", "no-attention-wider")
    if channel is not None:
        if channel.clear:
            third = (f"Squeeze-excite {'beats' if channel.mean > 0 else 'loses to'} the same widened down-mixing "
                     f"without attention by {abs(channel.mean):.2f} points")
        else:
            third = "Squeeze-excite is not told apart from the same widened down-mixing without attention"
        sentences.append(f"{third} (its margin {channel.details()}).")
    return " ".join(sentences)


def verdict(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Whether attention earns its cost, then attendnet_b as it is against each other arm, and squeeze-excite
    against the widening without attention, seed by seed."""
    lines = [compare(rows, "attention", arm, base_model="mobilenet_v1" if arm == "mobilenet_v1" else None)
             for arm in ("no-attention", "no-attention-wider", "squeeze-excite", "mobilenet_v1")]
    lines.append(compare(rows, "squeeze-excite", "no-attention-wider"))
    summary = conclusion(rows)
    return ["## Verdict", "", *([summary, ""] if summary else []), *(f"- {line}." for line in lines if line)]


def main() -> int:
    return run_study(__doc__, ARMS, "ablation", "Does attention earn its cost? The attention ablation on Imagenette",
                     f"{EPOCHS} epochs at 128 px, the comparison recipe (crops keeping 35-100% of the image area, "
                     "the residual condensers' last BN zero-initialised); "
                     "val top-1 (3,925 images) of the best checkpoint in float and with post-training 8-bit weights "
                     "(`attendnets quantize`). Mean over seeds, in brackets the spread (max - min). Parameters and "
                     "multiply-adds at the paper's 224 px and 50 classes.", verdict)


if __name__ == "__main__":
    sys.exit(run_main(main))
