"""Do the presets and the recipe leave accuracy on the table? Recipe and preset arms on Imagenette (issue 17).

An independent trainer with nearly our recipe (128 px, 15 epochs, AdamW 2e-3, cosine, label smoothing 0.1,
batch 64) but random-resized crops keeping 35-100% of the image area (ours: timm's 8-100%), no EMA and the
last epoch's weights got about 4 points more on Imagenette for attendnet_b and MobileNet-V1; and a network of
attendnet_b's layout and cost that differs in three respects (below) got 1.8 points more with that trainer.
Each arm changes the comparison recipe (benchmarks/imagenette.py) or attendnet_b in one respect:

- ``crop035``: both models on the comparison recipe as this study found it: crops keeping 35-100% of the
  area (and attendnet_b's residual condensers' last BN zero-initialised: issue 16, docs/results/zero_init.md,
  where it gained 2.9 points over the BN at 1), AttendNets Kaiming-initialised. attendnet_b's seed 0 is
  benchmarks/imagenette.py's run of then (runs/imagenette-kaiming); MobileNet-V1's runs predate the ledger,
  and their records were migrated from docs/results/zero_init.json.
- ``crop008``: both models with timm's crop range, 8-100% of the area (the comparison recipe before this
  study). No EMA and the last epoch need no arm of their own: the EMA is a shadow copy that never feeds back
  into training, so a run's raw weights at its last epoch are what the same run without EMA would end with;
  the report shows them beside the EMA's.
- preset arms, attendnet_b on crop035's recipe: PyTorch's default initialisation (``init-torch``, which won:
  it is the comparison recipe's since, docs/results/weight_init.md, and its seed 0 is benchmarks/imagenette.py's
  attendnet_b run), wider second PEPE projections, a narrower condenser at 28 px; and ``all-three``, the three
  together, which is the configuration the issue compared (+4.0% parameters, +2.2% multiply-adds over
  attendnet_b; the wider projections alone are +6.5%, beyond Table 1's 3%, so a preset adopting them must
  narrow something else). ``all-three`` against ``init-torch`` is what the two channel changes add on the
  adopted start.

Runs are in ``runs/presets/<arm>/<model>-s<seed>`` (see benchmarks/arms.py). The report
(docs/results/presets.{md,json}) is written once every arm has both seeds; until then into the runs folder. Its
last section holds what the library uses now (the recipe, the train verb's defaults, the presets) against each
comparison that changes one thing, so a default that is not the better side found is named there.

    python benchmarks/presets.py --data ../shared/datasets/imagenette2-224
    python benchmarks/presets.py --arms init-torch --seeds 0   # one run
    python benchmarks/presets.py --report                      # what has finished so far
    python benchmarks/presets.py --arms crop008,crop035 --report --name crops   # one comparison alone
    python benchmarks/presets.py --latency                     # each architecture's int8 latency, on idle cores
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import TIMM_CROP, Arm, compare, gap, pepes, run_study, vacs, with_blocks  # noqa: E402
from common import run_main  # noqa: E402
from imagenette import EPOCHS, recipe  # noqa: E402

from attendnets.cli import build_parser  # noqa: E402
from attendnets.cli.train import config_from_args  # noqa: E402
from attendnets.files import as_json_data  # noqa: E402
from attendnets.registry import PRESETS, load_preset  # noqa: E402
from attendnets.spec import ArchSpec  # noqa: E402
from attendnets.training import TrainConfig, recipe_changes  # noqa: E402

BOTH = ("attendnet_b", "mobilenet_v1")
# The seed-0 runs of attendnet_b that are benchmarks/imagenette.py's (the same command): with Kaiming's start,
# its run from before PyTorch's default initialisation became the comparison recipe's; with PyTorch's, this
# study's init-torch run, recorded as imagenette.py's since (its record says ``moved_from``).
KAIMING_COMPARISON_RUN = "imagenette-kaiming/attendnet_b"
COMPARISON_RUN = "imagenette/attendnet_b"
# The second projections of the configuration in shared/paper/notes.md: 64 to 144 over seven PEPEs.
WIDE_PROJ2 = (64, 80, 88, 104, 120, 128, 144)


def wide_proj2(spec: ArchSpec) -> ArchSpec:
    widths = dict(zip(pepes(spec), WIDE_PROJ2, strict=True))
    return with_blocks(spec, lambda i, b: dataclasses.replace(b, proj2=widths[i]) if i in widths else b)


def narrow_vac28(spec: ArchSpec) -> ArchSpec:
    last = vacs(spec)[-1]  # the condenser at 28 px (224 px input), on 128 channels
    return with_blocks(spec, lambda i, b: dataclasses.replace(b, mid=32) if i == last else b)


ARMS = {
    "crop035": Arm("crops keep 35-100% of the area, Kaiming's initialisation (the comparison recipe before "
                   "init-torch won)", models=BOTH, seed0_run=KAIMING_COMPARISON_RUN),
    "crop008": Arm("crops keep 8-100% of the area (timm's; the recipe before this study)", TIMM_CROP, models=BOTH),
    "init-torch": Arm("crop035 with PyTorch's default initialisation (the comparison recipe since)",
                      weight_init="torch", seed0_run=COMPARISON_RUN),
    "pepe-wide-proj2": Arm(f"crop035's recipe, second PEPE projections {'-'.join(map(str, WIDE_PROJ2))}",
                           spec=wide_proj2),
    "vac28-narrow": Arm("crop035's recipe, the 28 px condenser down-mixes to 32 channels (not 64)",
                        spec=narrow_vac28),
    "all-three": Arm("crop035's recipe, the three preset changes above together", weight_init="torch",
                     spec=lambda spec: narrow_vac28(wide_proj2(spec))),
}
RECIPE_ARMS = ("crop035", "crop008")


# (arm, base, model) of each comparison of the verdict: the comparison recipe's crop range against timm's on
# both models, each preset arm against attendnet_b on crop035's recipe, and the two channel changes together
# against PyTorch's start alone (all-three against init-torch): what the channels add on the adopted start.
COMPARISONS = [*(("crop035", "crop008", model) for model in BOTH),
               *((arm, "crop035", "attendnet_b") for arm in ARMS if arm not in RECIPE_ARMS),
               ("all-three", "init-torch", "attendnet_b")]


def conclusion(rows: dict[str, dict[str, Any]]) -> str | None:
    """Which changes gain beyond the seed spread at 8-bit weights and which are not told apart from noise;
    ``None`` until a comparison has a seed in common."""
    found = [(f"{arm} vs {base} ({model})", g) for arm, base, model in COMPARISONS
             if (g := gap(rows, arm, base, model=model))]
    if not found:
        return None
    clear = [f"{name} {g.mean:+.2f}" for name, g in found if g.clear and g.mean > 0]
    worse = [f"{name} {g.mean:+.2f}" for name, g in found if g.clear and g.mean < 0]
    noise = [f"{name} {g.mean:+.2f} ({f'spread {g.spread:.2f}' if len(g.per_seed) > 1 else 'one seed'})"
             for name, g in found if not g.clear]
    parts = [f"**Gains beyond the seed spread** (8-bit weights, points): {', '.join(clear) or 'none'}."]
    parts += [f"**Losses beyond it**: {', '.join(worse)}."] if worse else []
    parts += [f"**Not told apart from noise**: {', '.join(noise)}."] if noise else []
    return " ".join(parts)


def trained_with(words: list[str]) -> TrainConfig:
    """The training config of an ``attendnets train`` command line (from ``train`` on)."""
    return config_from_args(build_parser().parse_args(words))


def settings(rows: dict[str, dict[str, Any]], arm: str, base: str, model: str) -> dict[str, tuple[Any, Any]]:
    """What ``arm``'s runs of ``model`` changed against ``base``'s, from their recorded train commands:
    ``{field: (arm's value, base's value)}`` (as JSON data) over the recipe's fields, as a resumed run's are checked
    (``model`` is the architecture: a preset's name or an arm's spec file), the seed aside."""
    def config(name: str) -> TrainConfig:
        words = shlex.split(next(iter(rows[name][model]["seeds"].values()))["train_command"])
        return trained_with(words[words.index("train"):])

    ours = as_json_data(dataclasses.asdict(config(arm)))
    return {f: (mine, other) for f, mine, other in recipe_changes(ours, config(base)) if f != "seed"}


def chosen_now(model: str, field: str, values: dict[str, Any]) -> str | None:
    """Which arm of ``values`` (``{arm: its value of field}``) the library takes now: for ``model`` (the
    architecture), the arm whose spec change the preset already is (an arm without one: the preset as it is);
    for a recipe field, the arm whose value both the comparison recipe (benchmarks/imagenette.py) and ``attendnets
    train``'s default have. ``None``: neither (or the recipe and the default disagree)."""
    if field == "model":
        preset = load_preset(model)
        changes = {arm: ARMS[arm].spec for arm in values}
        return next((arm for arm, change in changes.items() if change is None or change(preset) == preset), None)
    command = ["train", "--model", model, "--data", ".", "--output", "."]
    recipe_value, default = (as_json_data(getattr(trained_with(words), field))
                             for words in (command + recipe(0), command))
    return next((arm for arm, value in values.items() if value == recipe_value == default), None)


def setting(field: str) -> str:
    return "the architecture" if field == "model" else f"`{field}`"


def shown(field: str, value: Any) -> str:
    if field == "model":
        return "the preset" if value in PRESETS else "the arm's spec"
    return " ".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)


def library_now(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Whether what the library uses now (the comparison recipe, the train verb's defaults, the presets) is,
    for each comparison that changes one thing, the side that gained beyond the seed spread, or one not told
    apart from the other: the issue's "the presets and the recipe default are the better ones found", read off
    the code rather than stated. A comparison that changes several things at once decides none of them."""
    lines, wrong = [], []
    for arm, base, model in COMPARISONS:
        g = gap(rows, arm, base, model=model)
        if g is None:
            continue
        name, changed = f"{arm} vs {base} ({model})", settings(rows, arm, base, model)
        if len(changed) != 1:
            lines.append(f"- {name} changes {' and '.join(map(setting, changed))} at once: it decides none alone.")
            continue
        ((field, (ours, theirs)),) = changed.items()
        side = chosen_now(model, field, {arm: ours, base: theirs})
        now = f"{side}'s ({shown(field, ours if side == arm else theirs)})" if side else "neither side's"
        if g.clear:
            better = arm if g.mean > 0 else base
            judged = "the better one" if side == better else f"**not the better one** ({better}'s)"
            measured = f"{g.mean:+.2f} points at 8-bit weights, beyond the seed spread {g.spread:.2f}"
        else:
            judged = "one of two not told apart" if side else "**neither side**"
            measured = f"{g.mean:+.2f} points, {f'spread {g.spread:.2f}' if len(g.per_seed) > 1 else 'one seed'}"
        if judged.startswith("**"):
            wrong.append(name)
        lines.append(f"- {setting(field)}, {name}: now {now}, {judged} ({measured}).")
    if not lines:
        return []
    summary = (f"**Not the better one found**: {', '.join(wrong)}." if wrong else
               "**Every choice is the better one found, or one not told apart from the other.**")
    return ["## The library now", "",
            "What the library uses now (the comparison recipe of benchmarks/imagenette.py, which `attendnets train`'s "
            "defaults equal, and the presets), against each comparison that changes one thing: " + summary, "", *lines]


def verdict(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The conclusion, then each comparison of COMPARISONS seed by seed, then what the library uses now."""
    lines = [compare(rows, arm, base, model) for arm, base, model in COMPARISONS]
    summary = conclusion(rows)
    now = library_now(rows)
    return ["## Verdict", "", *([summary, ""] if summary else []), *(f"- {line}." for line in lines if line),
            *(["", *now] if now else [])]


def main() -> int:
    return run_study(__doc__, ARMS, "presets",
                     "Recipe and preset arms on Imagenette: do our recipe and presets leave accuracy on the table?",
                     f"{EPOCHS} epochs at 128 px, the comparison recipe of benchmarks/imagenette.py changed as each arm "
                     "says; val top-1 (3,925 images) of the best checkpoint in float and with post-training 8-bit weights "
                     "(`attendnets quantize`), and of the last epoch's raw and EMA weights (a run without EMA ends with "
                     "the raw ones). Mean over seeds, in brackets the spread (max - min).", verdict)


if __name__ == "__main__":
    sys.exit(run_main(main))
