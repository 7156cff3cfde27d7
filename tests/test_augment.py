"""Training augmentation: each option reaches timm's transform or batch mixer, bad ones are refused in one
line, a run with all of them trains, and a run saved before an option existed resumes as it ran."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image
from timm.data.auto_augment import AugMixAugment, RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch import nn
from torchvision import transforms

from attendnets import augment
from attendnets.augment import TrainingLoss, check_augmentation, train_transform
from attendnets.cli import build_parser
from attendnets.cli import train as train_verb
from attendnets.errors import AttendNetsError
from attendnets.training import TrainConfig, _check_resumable, train
from tests.training_fixtures import small_config


def _steps(config: TrainConfig) -> list[object]:
    return list(train_transform(config).transforms)


def _of(steps: list[object], kind: type) -> list[object]:
    return [s for s in steps if isinstance(s, kind)]


def test_the_default_recipe_crops_and_flips_only() -> None:
    steps = _steps(TrainConfig(model="m", output="o"))
    (crop,) = _of(steps, RandomResizedCropAndInterpolation)
    assert crop.scale == (0.35, 1.0) and crop.size == (128, 128)
    (flip,) = _of(steps, transforms.RandomHorizontalFlip)
    assert flip.p == 0.5
    assert not _of(steps, transforms.ColorJitter) and not _of(steps, RandomErasing)
    assert not _of(steps, RandAugment) and not _of(steps, AugMixAugment)


def test_each_option_reaches_timms_transform() -> None:
    steps = _steps(TrainConfig(model="m", output="o", img_size=32, crop_scale=(0.08, 1.0), hflip=0.0,
                               color_jitter=0.4, random_erase=0.25))
    assert _of(steps, RandomResizedCropAndInterpolation)[0].scale == (0.08, 1.0)
    assert not _of(steps, transforms.RandomHorizontalFlip)
    (jitter,) = _of(steps, transforms.ColorJitter)
    assert jitter.brightness == (0.6, 1.4)
    (erase,) = _of(steps, RandomErasing)
    assert erase.probability == 0.25 and erase.mode == "pixel"
    assert _of(_steps(TrainConfig(model="m", output="o", auto_augment="rand-m9-mstd0.5")), RandAugment)
    assert _of(_steps(TrainConfig(model="m", output="o", auto_augment="augmix-m5-w4-d2")), AugMixAugment)
    image = Image.new("RGB", (40, 30), (120, 60, 200))
    out = train_transform(TrainConfig(model="m", output="o", img_size=32, auto_augment="rand-m9-mstd0.5",
                                      random_erase=1.0))(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


@pytest.mark.parametrize(("change", "message"), [
    ({"auto_augment": "sharpen-everything"}, r"--auto-augment 'sharpen-everything' is not a timm policy .*e\.g\. rand-m9"),
    ({"mixup": 0.2, "batch_size": 31}, "--batch-size must be even, got 31"),
    ({"hflip": 1.5}, r"hflip is a probability in \[0, 1\], got 1.5"),
    ({"cutmix": -1.0}, "cutmix must be >= 0, got -1"),
])
def test_impossible_options_are_one_line_errors(change, message) -> None:
    with pytest.raises(AttendNetsError, match=message) as err:
        check_augmentation(TrainConfig(model="m", output="o", **change))
    assert "\n" not in str(err.value)


def test_mixup_and_cutmix_mix_the_batch_and_smooth_soft_targets() -> None:
    torch.manual_seed(0)
    inputs = torch.rand(4, 3, 8, 8)
    targets = torch.tensor([0, 1, 2, 3])
    seen = {}

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x.clone()
            return torch.zeros(x.shape[0], 4, requires_grad=True)

    loss = TrainingLoss(TrainConfig(model="m", output="o", mixup=0.2, cutmix=1.0, batch_size=4), 4)
    value = loss(Record(), inputs.clone(), targets)
    assert loss.mixer is not None and not torch.equal(seen["x"], inputs)  # the network saw a mixed batch
    assert value.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-5)  # uniform logits
    plain = TrainingLoss(TrainConfig(model="m", output="o"), 4)
    assert plain.mixer is None
    plain(Record(), inputs, targets)
    assert torch.equal(seen["x"], inputs)


def test_a_run_with_every_augmentation_trains(tmp_path, synthetic_data, small_spec_file) -> None:
    result = train(small_config(synthetic_data, small_spec_file, tmp_path / "run", epochs=2, color_jitter=0.3,
                                auto_augment="rand-m5-mstd0.5", random_erase=0.25, mixup=0.2, cutmix=1.0))
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["auto_augment"], saved["mixup"], saved["crop_scale"]) == ("rand-m5-mstd0.5", 0.2, [0.35, 1.0])


def test_a_run_saved_before_the_options_existed_resumes_with_timms_crop() -> None:
    started = dataclasses.asdict(TrainConfig(model="m", output="o"))
    for name in ("crop_scale", "hflip", "color_jitter", "auto_augment", "random_erase", "mixup", "cutmix"):
        del started[name]
    _check_resumable(started, TrainConfig(model="m", output="o", crop_scale=(0.08, 1.0)))
    with pytest.raises(AttendNetsError, match=r"started with crop_scale=\[0\.08, 1\.0\], now \[0\.35, 1\.0\]"):
        _check_resumable(started, TrainConfig(model="m", output="o"))


def test_the_verb_passes_every_augmentation_option() -> None:
    args = build_parser().parse_args([
        "train", "--model", "m", "--output", "O", "--crop-scale", "0.08", "1", "--hflip", "0", "--color-jitter",
        "0.4", "--auto-augment", "rand-m9-mstd0.5", "--random-erase", "0.25", "--mixup", "0.2", "--cutmix", "1"])
    config = train_verb.config_from_args(args)
    assert (config.crop_scale, config.hflip, config.color_jitter, config.auto_augment, config.random_erase,
            config.mixup, config.cutmix) == ((0.08, 1.0), 0.0, 0.4, "rand-m9-mstd0.5", 0.25, 0.2, 1.0)
    assert train_verb.POLICY_EXAMPLES == augment.POLICY_EXAMPLES
