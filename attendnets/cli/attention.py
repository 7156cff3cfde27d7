"""``attendnets attention``: what each visual attention condenser of a model attends to in images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "what each attention condenser attends to in images: a PNG grid of its attention maps, and statistics"
DESCRIPTION = """\
Classify each IMAGE (preprocessed as the model says) and record, for every visual attention condenser,
its attention values: sigmoid(A) after expansion, one value in (0, 1) per channel and pixel of the
condenser's resolution, the factor by which the condenser passes (near 1) or suppresses (near 0) its
features. Each map is the mean over the channels.

OUTPUT (default attention.png, never overwritten) gets one row per image: the image as the model sees it
(resized and centre-cropped), then each condenser's map over it, titled with its block index and
resolution. --groups also writes OUTPUT-groups-K.png per image: one row per condenser, one map per
channel group of its embedding's grouped conv. --json prints per image the top class and, per condenser,
the mean, spread and share of pixels above 0.5 of each map.

Give the model as --checkpoint CKPT (a trained checkpoint or run folder) or --model NAME (a preset or
spec file; untrained weights unless --pretrained: the Imagenette-trained weights shipped with attendnets).

examples:
  attendnets attention photo.jpg --checkpoint runs/b
  attendnets attention a.jpg b.jpg --checkpoint runs/b --output maps.png --groups
  attendnets attention photo.jpg --checkpoint runs/b --json
  attendnets attention photo.jpg --model attendnet_b --pretrained
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="checkpoint or run folder")
    model.add_argument("--model", metavar="NAME", help="preset name or spec file (see --pretrained)")
    parser.add_argument("--pretrained", action="store_true", help="with --model: its weights shipped with attendnets")
    parser.add_argument("--output", metavar="PNG", default="attention.png", help="the grid (default attention.png)")
    parser.add_argument("--groups", action="store_true", help="also write one PNG per image with each group's map")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")


def run(args: argparse.Namespace) -> int:
    from attendnets.errors import AttendNetsError

    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise AttendNetsError(f"--output must be a .png file, got {output}")
    written = [output] + ([_groups_path(output, i) for i in range(len(args.images))] if args.groups else [])
    existing = [p for p in written if p.exists()]
    if existing:
        raise AttendNetsError(f"{existing[0]} already exists; choose another --output or remove it")
    if args.pretrained and not args.model:
        raise AttendNetsError("--pretrained goes with --model NAME")
    if not output.parent.is_dir():
        raise AttendNetsError(f"no folder {output.parent} for --output")
    report = _attention(args, written)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for record in report["images"]:
            means = ", ".join(f"block {c['block']} {c['mean_map']['mean']:.2f}" for c in record["condensers"])
            print(f"{record['image']}: {record['top_class']} ({100 * record['probability']:.1f}%); mean attention {means}")
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _groups_path(output: Path, image: int) -> Path:
    return output.with_name(f"{output.stem}-groups-{image}.png")


def _attention(args: argparse.Namespace, written: list[Path]) -> dict:
    """Load the model and images, record the maps, draw them; returns the JSON report."""
    import torch

    from attendnets.attention import attention_summary, condenser_attention
    from attendnets.checkpoint import load_checkpoint
    from attendnets.data import default_preprocessing, eval_transform, load_rgb
    from attendnets.errors import AttendNetsError
    from attendnets.files import atomic_write
    from attendnets.plots import plot_attention
    from attendnets.pretrained import class_labels, shipped_checkpoint
    from attendnets.registry import create_model

    if args.checkpoint or args.pretrained:
        model, meta = load_checkpoint(args.checkpoint or shipped_checkpoint(args.model))
    else:
        model = create_model(args.model)
        meta = {**default_preprocessing(model.spec.img_size),
                "class_names": [f"class{i}" for i in range(model.num_classes)]}
    transform = eval_transform(meta)
    try:
        batch = torch.stack([transform(load_rgb(path)) for path in args.images])
    except OSError as err:
        raise AttendNetsError(f"cannot read image: {err}") from None
    logits, maps = condenser_attention(model, batch)
    probabilities = logits.softmax(1)
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    shown = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
    titles = [f"block {m.block}, {m.resolution[0]}x{m.resolution[1]}" for m in maps]
    images = list(shown)
    atomic_write(written[0], lambda tmp: plot_attention(
        images, [[m.mean_map()[i] for m in maps] for i in range(len(images))], [titles] * len(images), tmp,
        [Path(p).name for p in args.images]))
    for i, path in enumerate(written[1:]):  # --groups: per image, a row per condenser with its groups' maps
        atomic_write(path, lambda tmp, i=i: plot_attention(
            [images[i]] * len(maps), [list(m.group_maps()[i]) for m in maps],
            [[f"group {g}" for g in range(m.groups)] for m in maps], tmp, titles))
    return {
        "model": args.checkpoint or args.model,
        "trained": bool(args.checkpoint or args.pretrained),
        "class_names": meta["class_names"],
        "images": [
            {"image": str(path), "top_class": meta["class_names"][int(probabilities[i].argmax())],
             "top_label": class_labels(meta)[int(probabilities[i].argmax())],
             "probability": float(probabilities[i].max()), "condensers": attention_summary(maps, i)}
            for i, path in enumerate(args.images)
        ],
        "files": [str(p) for p in written],
    }

