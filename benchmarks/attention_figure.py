"""What a trained condenser attends to, on photos we may show: docs/results/attention.{png,md,json} (issue 18).

The photos are scikit-image's sample images ``chelsea`` (a cat) and ``coffee`` (a cup), both CC0 (no
copyright restrictions; by Stefan van der Walt and Rachel Michetti, as scikit-image's ``skimage.data``
documents them). Neither shows one of Imagenette's 10 classes, so the shipped model's top class for them
means nothing; the maps show where each condenser passes or suppresses its features on a natural image.

The figure is ``attendnets attention`` with a shipped model (``--model NAME --pretrained``); its statistics
(``--json``) go to attention.json and a table in attention.md.

    pip install scikit-image
    python benchmarks/attention_figure.py            # attendnet_b's shipped weights
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, provenance, run_context, run_main  # noqa: E402

from attendnets.files import atomic_write_json, atomic_write_text  # noqa: E402

SAMPLES = {"chelsea": "a cat, CC0 by Stefan van der Walt", "coffee": "a cup of coffee, CC0 by Rachel Michetti"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="attendnet_b", help="a shipped model (default attendnet_b)")
    args = parser.parse_args()
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        raise SystemExit("this figure needs scikit-image's sample photos: pip install scikit-image") from None
    context = run_context()  # before the figure is rewritten: a committed tree is then not "uncommitted"
    figure = RESULTS / "attention.png"
    figure.unlink(missing_ok=True)  # attendnets attention never overwrites: this script owns the figure
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for name in SAMPLES:
            images.append(Path(tmp) / f"{name}.png")
            Image.fromarray(getattr(data, name)()).save(images[-1])
        command = [sys.executable, "-m", "attendnets", "attention", *map(str, images), "--model", args.model,
                   "--pretrained", "--output", str(figure), "--json"]
        stats = json.loads(subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True).stdout)
    shown = shlex.join(["python", "-m", "attendnets", "attention", *(f"{n}.png" for n in SAMPLES), "--model", args.model,
                        "--pretrained", "--output", "docs/results/attention.png", "--json"])
    means = [c["mean_map"] for image in stats["images"] for c in image["condensers"]]
    lines = ["# What the condensers of a trained AttendNet attend to", "",
             "![attention maps](attention.png)", "",
             f"{args.model} with its shipped Imagenette weights, on two photos of scikit-image's sample data "
             f"({'; '.join(f'`{n}`: {d}' for n, d in SAMPLES.items())}). Each map is a condenser's attention values "
             "(sigmoid of A after expansion, mean over channels): near 1 it passes its features, near 0 it "
             "suppresses them. Neither photo shows an Imagenette class, so the top class is not a verdict.", "",
             f"Over these {len(means)} maps the mean value is {min(m['mean'] for m in means):.2f} to "
             f"{max(m['mean'] for m in means):.2f} and the spread (std over pixels) {min(m['std'] for m in means):.3f} "
             f"to {max(m['std'] for m in means):.3f}: how strongly the condensers modulate space, averaged over their "
             "channels (the per-group maps, `--groups`, show more).", "",
             "| image | top class (meaningless here) | condenser | resolution | mean | spread (std) | share above 0.5 |",
             "|---|---|---|---|---|---|---|"]
    for image in stats["images"]:
        for c in image["condensers"]:
            lines.append(f"| {Path(image['image']).stem} | {image['top_label']} ({100 * image['probability']:.0f}%) | "
                         f"block {c['block']} | {c['resolution'][0]}x{c['resolution'][1]} | {c['mean_map']['mean']:.3f} | "
                         f"{c['mean_map']['std']:.3f} | {100 * c['mean_map']['share_above_half']:.1f}% |")
    lines += ["", "## How it was run", "", *provenance(context), "", f"Figure command: `{shown}`"]
    atomic_write_text(RESULTS / "attention.md", "\n".join(lines) + "\n")
    atomic_write_json(RESULTS / "attention.json", {**context, "figure_command": shown, **stats})
    print(f"wrote {figure} and {RESULTS / 'attention.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
