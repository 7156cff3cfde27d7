"""Training augmentation, all timm's: what a recipe turns on, as the transform of one image and the loss of a batch.

Per image (timm's ``create_transform``): random-resized crop keeping ``crop_scale`` of the area, horizontal
flip, colour jitter, an AutoAugment / RandAugment / AugMix policy given by timm's policy string, and random
erasing. Per batch (timm's ``Mixup``): mixup and cutmix, whose soft targets carry the label smoothing.

The comparison recipe keeps only the crop (35-100% of the area) and the flip: on Imagenette at 128 px that
crop gave about 2 points over timm's 8-100% (AttendNet-B 75.1% and 75.5% at seeds 0 and 1 against 73.1% at
seed 0, MobileNet-V1 64.6% against 62.5% at seed 0; benchmarks/presets.py); the rest are for users' own data
and longer schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from attendnets.errors import AttendNetsError

# Policy strings timm reads (its train.py's --aa), as the help shows them.
POLICY_EXAMPLES = "rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2 (AugMix), v0 or original (AutoAugment)"


class Recipe(Protocol):
    """The options of a training recipe read here (:class:`attendnets.training.TrainConfig` has them all)."""

    img_size: int
    batch_size: int
    label_smoothing: float
    crop_scale: Sequence[float]
    hflip: float
    color_jitter: float
    auto_augment: str | None
    random_erase: float
    mixup: float
    cutmix: float
    interpolation: str
    mean: Sequence[float]
    std: Sequence[float]


def train_transform(config: Recipe) -> Callable[[Any], torch.Tensor]:
    """A training image's transform (PIL image -> normalised (3, img_size, img_size) tensor)."""
    try:
        return create_transform(
            config.img_size,
            is_training=True,
            scale=tuple(config.crop_scale),
            hflip=config.hflip,
            color_jitter=config.color_jitter or None,  # timm adds ColorJitter(0, 0, 0) for 0: a no-op that costs time
            auto_augment=config.auto_augment,
            re_prob=config.random_erase,
            re_mode="pixel",  # erased patches get per-pixel normal noise, as timm's train.py
            interpolation=config.interpolation,
            mean=config.mean,
            std=config.std,
        )
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        if config.auto_augment:
            raise AttendNetsError(
                f"--auto-augment {config.auto_augment!r} is not a timm policy ({err or type(err).__name__}); "
                f"e.g. {POLICY_EXAMPLES}"
            ) from None
        raise AttendNetsError(f"cannot build the training transform: {err}") from None


def check_augmentation(config: Recipe) -> None:
    """Refuse augmentation options that cannot run, in one line, before a run starts."""
    for name, value in (("hflip", config.hflip), ("random_erase", config.random_erase)):
        if not 0 <= value <= 1:
            raise AttendNetsError(f"{name} is a probability in [0, 1], got {value:g}")
    for name, value in (("color_jitter", config.color_jitter), ("mixup", config.mixup), ("cutmix", config.cutmix)):
        if value < 0:
            raise AttendNetsError(f"{name} must be >= 0, got {value:g}")
    train_transform(config)
    TrainingLoss(config, num_classes=2)


class TrainingLoss:
    """The loss of a training batch: label-smoothed cross-entropy, on a mixup/cutmix-mixed batch when the
    recipe asks for either (timm's ``Mixup`` then smooths the soft targets itself)."""

    def __init__(self, config: Recipe, num_classes: int) -> None:
        self.mixer = None
        if config.mixup or config.cutmix:
            if config.batch_size % 2:
                raise AttendNetsError(f"--mixup/--cutmix mix each batch with itself reversed: --batch-size must be "
                                      f"even, got {config.batch_size}")
            self.mixer = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
                               label_smoothing=config.label_smoothing, num_classes=num_classes)
        self.criterion = SoftTargetCrossEntropy() if self.mixer else LabelSmoothingCrossEntropy(config.label_smoothing)

    def __call__(self, net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``inputs`` (N, 3, H, W), ``targets`` (N,) class indices -> the mean loss (a scalar)."""
        if self.mixer is not None:
            inputs, targets = self.mixer(inputs, targets)
        return self.criterion(net(inputs), targets)
