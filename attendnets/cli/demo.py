"""``attendnets demo``: the main job on an embedded default: the Table 1 comparison, then a short training.

Building ``--help`` imports this module, so torch, timm and the training code are imported when it runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from attendnets.cli.options import POSITIVE
from attendnets.cli.train import DEMO_EPOCHS, DEMO_IMG_SIZE, IMG_SIZE, MIN_IMG_SIZE
from attendnets.env import DATA_ENV
from attendnets.errors import AttendNetsError

DEMO_SUBSET = 2000

HELP = "show the Table 1 comparison, then train a model briefly and print its accuracy"
DESCRIPTION = f"""\
The quickest look at what the library does. First the complexity table of the paper's Table 1
(AttendNet-A/B against the MobileNets), then a short training run from scratch:

- on real images when ${DATA_ENV} names an ImageFolder dataset (train/ and val/): at most --subset
  images of each split, at 64 px;
- otherwise on a dataset of 8 classes of shapes and textures that the library generates (chance: 12.5%).

It ends with the validation top-1 against chance. A few minutes on two CPU cores.

examples:
  attendnets demo
  {DATA_ENV}=~/imagenette2-224 attendnets demo --epochs 4
  attendnets demo --model mobilenet_v2 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="attendnet_b", help="model to train (default attendnet_b)")
    parser.add_argument("--epochs", type=POSITIVE, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--img-size", type=IMG_SIZE, default=DEMO_IMG_SIZE,
                        help=f"training resolution, >= {MIN_IMG_SIZE} (default {DEMO_IMG_SIZE})")
    parser.add_argument("--subset", type=POSITIVE, default=DEMO_SUBSET,
                        help=f"images per split of real data (default {DEMO_SUBSET})")
    parser.add_argument("--output", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--json", action="store_true", help="print one JSON record instead of tables")


def run(args: argparse.Namespace) -> int:
    from attendnets.cli import profile
    from attendnets.data import make_synthetic_dataset
    from attendnets.training import TooFewImages, TrainConfig, check_output, train

    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    output = Path(args.output)
    run_dir = output / Path(args.model).stem  # a spec file's run is named after the file
    resume = (run_dir / "config.json").is_file()  # a demo run already started here continues
    check_output(run_dir, resume)
    if not args.json:
        profile.report(list(profile.DEFAULT_MODELS), img_size=224, num_classes=50)
    data = os.environ.get(DATA_ENV)
    if data:
        source, subset = f"{data} ({DATA_ENV}), at most {args.subset} images a split", args.subset
    else:
        data = str(output / "synthetic-data")
        if not Path(data, "val").is_dir():
            make_synthetic_dataset(data, classes=8, per_class=200, size=64)
        source, subset = "generated shapes and textures (8 classes)", None
    start = time.monotonic()
    config = TrainConfig(model=args.model, output=str(run_dir), data=data, img_size=args.img_size,
                         epochs=args.epochs, subset=subset, resume=resume)
    try:
        result = train(config)
    except TooFewImages as err:
        fix = (f"raise --subset to {err.batch_size} or more" if subset and subset < err.batch_size
               else f"use a dataset with at least {err.batch_size} training images")
        raise AttendNetsError(
            f"{DATA_ENV} gives {err.images} training images, fewer than the demo's batch of {err.batch_size}; {fix}"
        ) from None
    classes = len(json.loads((result.output / "best.json").read_text())["class_names"])
    record = {
        "model": args.model, "data": source, "epochs": result.epochs_run, "img_size": args.img_size,
        "val_top1": result.best_top1, "chance": 100 / classes, "seconds": round(time.monotonic() - start, 1),
        "checkpoint": str(result.output / "best"),
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(
            f"\n{args.model} trained from scratch on {source}: val top-1 {record['val_top1']:.1f}% "
            f"(chance {record['chance']:.1f}%) after {record['epochs']} epochs at {args.img_size} px, "
            f"{record['seconds']:.0f} s. Checkpoint: {record['checkpoint']}"
        )
    return 0
