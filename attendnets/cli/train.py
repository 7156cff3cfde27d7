"""``attendnets train``: train a model on an image folder, resumable, on one process or many.

Building ``--help`` imports this module, so it imports nothing heavy: torch, timm and the training code are
imported when the verb runs, and the defaults shown are restated here (a test holds them equal to
:class:`~attendnets.training.TrainConfig`'s)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from attendnets.cli.options import NON_NEGATIVE, POSITIVE, integer, number
from attendnets.env import DATA_ENV
from attendnets.errors import AttendNetsError

if TYPE_CHECKING:
    from attendnets.training import TrainConfig

# TrainConfig's defaults of the options below.
DEFAULTS = {"img_size": 128, "epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1,
            "label_smoothing": 0.1, "crop_scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.0,
            "auto_augment": None, "random_erase": 0.0, "mixup": 0.0, "cutmix": 0.0, "ema": True, "workers": 2,
            "seed": 0, "weight_init": "torch", "zero_init_last": True}
WEIGHT_INITS = ("torch", "kaiming")  # attendnets.model.WEIGHT_INITS
DEMO_IMG_SIZE, DEMO_EPOCHS = 64, 8
# The smallest crop every model trains at: the MobileNets and the presets reduce it 32x to a 1x1 map (batch
# norm then needs a batch of 2 or more, which training says in one line).
MIN_IMG_SIZE = 16
IMG_SIZE = integer(MIN_IMG_SIZE)
SEED = integer(0, 2**31 - 1)  # numpy's seeds end at 2**32 - 1, and each process adds its rank
AREA_SHARE = number(0, 1, low_open=True)
PROBABILITY = number(0, 1)
# attendnets.augment.POLICY_EXAMPLES (that module imports timm; --help must not).
POLICY_EXAMPLES = "rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2 (AugMix), v0 or original (AutoAugment)"


HELP = "train a model on an image folder (DATA/train, DATA/val)"
DESCRIPTION = f"""\
Train any model (preset, baseline, timm model name or spec file) from scratch on an ImageFolder
dataset: DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg, with the same class folders. DATA is
--data, else the {DATA_ENV} environment variable. Images are checked before training: unreadable
ones are skipped with a warning (--strict: an error); grayscale and RGBA images are converted to RGB.

Recipe: random-resized crop keeping 35-100% of the image area + flip, AdamW, cosine schedule with
warm-up (stepped every batch), label smoothing 0.1, an EMA of the weights (--no-ema to disable),
channels_last. timm's other augmentations are options, off by default: --color-jitter, --auto-augment
(RandAugment, AugMix, AutoAugment), --random-erase, --mixup, --cutmix. The crop default is not timm's
8-100%: on Imagenette at 128 px, 35-100% gave AttendNet-B and MobileNet-V1 about 2 points more
(benchmarks/presets.py). Every epoch the raw and EMA weights are evaluated on val/; OUTPUT gets last.*
and best.* checkpoints (safetensors + JSON sidecar), metrics.jsonl, train_state.pt (for --resume) and,
at the end, curves.png. A NaN/inf loss stops the run and keeps the checkpoint of the last good epoch.
OUTPUT must be new or empty: a folder holding checkpoints or another run is refused, except the run's
own with --resume, which must be resumed with the same options, classes and spec (an AttendNet resumes
from the spec the run saved).

8 bits: --qat trains with int8 fake-quantized conv/linear weights (per output channel, straight-through
gradients), --qat-activations also with 8-bit fake-quantized conv/linear inputs (moving-average
ranges). The checkpoints then hold int8-representable weights under the usual names, so eval and
export read them unchanged. --init CKPT starts from a trained checkpoint (same model and classes);
'attendnets quantize --qat-epochs N' is the short way to fine-tune a checkpoint to 8 bits.

glibc's malloc is tuned at start (the effect of MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1e9, set
with mallopt; up to 2x faster CPU training), so no environment variables are needed.

examples:
  attendnets train --demo --output runs/demo        # synthetic shapes, 64 px, a few minutes on a CPU
  attendnets train --data ~/imagenette2-224 --model attendnet_b --epochs 15 --output runs/b
  attendnets train --data DATA --spec my_design.json --img-size 96 --output runs/mine
  attendnets train --data DATA --model attendnet_a --epochs 60 --auto-augment rand-m9-mstd0.5-inc1 --mixup 0.2 --output runs/a
  attendnets train --data DATA --model mobilenet_v2 --output runs/mnv2 --resume   # continue a killed run
  attendnets train --data DATA --model attendnet_b --init runs/b --qat --epochs 3 --lr 2e-4 --warmup-epochs 0 --output runs/b8
  torchrun --nproc_per_node=2 -m attendnets train --data DATA --model attendnet_a --output runs/a
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", help="preset, baseline (mobilenet_v1/v2), timm model name or spec file")
    what.add_argument("--spec", metavar="FILE", help="a .json/.yaml spec file")
    parser.add_argument("--data", metavar="DIR", help=f"dataset root with train/ and val/ (default: ${DATA_ENV})")
    parser.add_argument("--demo", action="store_true",
                        help="train on a generated dataset of 8 shape classes (written to OUTPUT/synthetic-data)")
    parser.add_argument("--output", metavar="DIR", required=True,
                        help="run folder for checkpoints and metrics: new or empty, or the run's own with --resume")
    parser.add_argument("--img-size", type=IMG_SIZE, help=f"training crop and val size in pixels, >= {MIN_IMG_SIZE} "
                        f"(default {d['img_size']}; demo {DEMO_IMG_SIZE})")
    parser.add_argument("--epochs", type=POSITIVE, help=f"epochs (default {d['epochs']}; demo {DEMO_EPOCHS})")
    parser.add_argument("--batch-size", type=POSITIVE, default=d["batch_size"],
                        help=f"per process (default {d['batch_size']})")
    parser.add_argument("--lr", type=number(0, low_open=True), default=d["lr"],
                        help=f"peak learning rate (default {d['lr']})")
    parser.add_argument("--weight-decay", type=number(0), default=d["weight_decay"],
                        help=f"AdamW (default {d['weight_decay']})")
    parser.add_argument("--warmup-epochs", type=NON_NEGATIVE, default=d["warmup_epochs"],
                        help=f"default {d['warmup_epochs']}")
    parser.add_argument("--label-smoothing", type=number(0, 1, high_open=True), default=d["label_smoothing"],
                        help=f"in [0, 1) (default {d['label_smoothing']})")
    parser.add_argument("--crop-scale", type=AREA_SHARE, nargs=2, default=d["crop_scale"], metavar=("LOW", "HIGH"),
                        help="random-resized crop: the share of the image area a training crop keeps, in (0, 1] "
                        f"(default {d['crop_scale'][0]:g} {d['crop_scale'][1]:g}; timm's is 0.08 1)")
    parser.add_argument("--hflip", type=PROBABILITY, default=d["hflip"], metavar="P",
                        help=f"probability of a horizontal flip (default {d['hflip']:g})")
    parser.add_argument("--color-jitter", type=number(0), default=d["color_jitter"], metavar="X",
                        help="brightness, contrast and saturation jitter strength, e.g. 0.4 (default 0: off; "
                        "ignored under --auto-augment, as in timm)")
    parser.add_argument("--auto-augment", metavar="POLICY", default=d["auto_augment"],
                        help=f"a timm augmentation policy: {POLICY_EXAMPLES} (default off)")
    parser.add_argument("--random-erase", type=PROBABILITY, default=d["random_erase"], metavar="P",
                        help="probability of erasing a random patch with noise, e.g. 0.25 (default 0: off)")
    parser.add_argument("--mixup", type=number(0), default=d["mixup"], metavar="ALPHA",
                        help="mixup's Beta(alpha, alpha), e.g. 0.2 (default 0: off); with --cutmix, each batch "
                        "takes one of the two at random")
    parser.add_argument("--cutmix", type=number(0), default=d["cutmix"], metavar="ALPHA",
                        help="cutmix's Beta(alpha, alpha), e.g. 1.0 (default 0: off)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=d["ema"],
                        help="keep and evaluate an EMA of the weights (default on)")
    parser.add_argument("--workers", type=NON_NEGATIVE, default=d["workers"],
                        help=f"data loader processes (default {d['workers']})")
    parser.add_argument("--cache-images", action="store_true",
                        help="decode every image once into memory (width x height x 3 bytes each; Imagenette at 224 "
                        "px: 2 GiB): faster epochs where decoding JPEGs holds training back (small models on a CPU), "
                        "the same results")
    parser.add_argument("--seed", type=SEED, default=d["seed"], help=f"default {d['seed']}")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUTPUT after its last complete epoch")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    parser.add_argument("--subset", type=POSITIVE, metavar="N", help="use at most N images of each split (smoke runs)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT/tensorboard (needs tensorboard)")
    parser.add_argument("--init", metavar="CKPT",
                        help="start from this checkpoint's weights (same architecture; for other classes all but the "
                        "classifier, which starts anew: fine-tuning, e.g. from attendnets/weights/attendnet_b.imagenette)")
    parser.add_argument("--weight-init", choices=WEIGHT_INITS, default=d["weight_init"],
                        help="AttendNets' initial weights: torch (each layer's PyTorch default; default: attendnet_b "
                        "trained 1.5 points better with it on Imagenette, docs/results/weight_init.md) or kaiming "
                        "(convs Kaiming-normal fan-out, fully-connected N(0, 0.01), as torchvision's MobileNets)")
    parser.add_argument("--zero-init-last", action=argparse.BooleanOptionalAction, default=d["zero_init_last"],
                        help="AttendNets: zero the last BN of each residual condenser (and of each PEPE whose last BN "
                        "no ReLU follows), so that they start as the identity (default: on; attendnet_b trained "
                        "2.9 points better with it on Imagenette, docs/results/zero_init.md)")
    parser.add_argument("--qat", action="store_true", help="quantization-aware training with int8 fake-quantized weights")
    parser.add_argument("--qat-activations", action="store_true",
                        help="also fake-quantize conv/linear inputs to 8 bits (implies --qat)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run the options describe (``--demo``: its generated data under OUTPUT, not yet written)."""
    from attendnets.training import TrainConfig

    model = args.model or args.spec
    data = args.data
    if args.demo:
        if data:
            raise AttendNetsError("--demo generates its own data; drop --data")
        data = str(Path(args.output) / "synthetic-data")
        model = model or "attendnet_b"
    if not model:
        raise AttendNetsError("give --model NAME or --spec FILE")
    low, high = args.crop_scale
    if low > high:
        raise AttendNetsError(f"--crop-scale LOW HIGH needs LOW <= HIGH, got {low:g} {high:g}")
    return TrainConfig(
        model=model,
        output=args.output,
        data=data,
        img_size=_given(args.img_size, DEMO_IMG_SIZE if args.demo else DEFAULTS["img_size"]),
        epochs=_given(args.epochs, DEMO_EPOCHS if args.demo else DEFAULTS["epochs"]),
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        crop_scale=(low, high),
        hflip=args.hflip,
        color_jitter=args.color_jitter,
        auto_augment=args.auto_augment,
        random_erase=args.random_erase,
        mixup=args.mixup,
        cutmix=args.cutmix,
        ema=args.ema,
        workers=args.workers,
        cache_images=args.cache_images,
        seed=args.seed,
        resume=args.resume,
        strict=args.strict,
        tensorboard=args.tensorboard,
        subset=args.subset,
        init=args.init,
        qat=args.qat or args.qat_activations,
        qat_activations=args.qat_activations,
        weight_init=args.weight_init,
        zero_init_last=args.zero_init_last,
    )


def _given(value: int | None, default: int) -> int:
    """An option's value, or ``default`` when it was not given (a given 0 is a value, refused while parsing)."""
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    from attendnets.data import make_synthetic_dataset
    from attendnets.training import check_output, train

    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s")
    config = config_from_args(args)
    if args.demo and not Path(config.data, "val").is_dir():
        check_output(config.output, config.resume)  # refused before the data is written into it
        make_synthetic_dataset(config.data, classes=8, per_class=200, size=64)
    result = train(config)
    if main_process:
        print(f"best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}: {result.output / 'best'}")
    return 0
