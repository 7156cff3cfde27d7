"""Training any model (preset, baseline, timm name or spec file) on an image folder, on CPU or GPU, in one
process or several (``torchrun``).

The recipe, with defaults chosen for small datasets on a CPU: random-resized crop and horizontal flip,
AdamW without weight decay on biases and norms, a cosine schedule stepped every batch after a linear
warm-up, label smoothing, an exponential moving average (EMA) of the weights, and channels_last memory
layout. Every epoch both the raw and the EMA weights are evaluated on ``val/``; the better of the two is
saved as the ``last`` checkpoint, and as ``best`` when it beats every earlier epoch.

``qat`` trains with int8 fake-quantized weights (and, with ``qat_activations``, 8-bit fake-quantized
conv/linear inputs; see :mod:`attendnets.quantize`), usually from a trained checkpoint given as ``init``.
The EMA averages the float weights behind the fake quantization and uses the trained model's activation
ranges. The checkpoints hold the quantized weights in the plain layout (every conv/linear weight exactly
int8-representable, the usual state-dict keys), so evaluation and export load them like any other; their
sidecars say ``"weight_bits": 8`` and ``"qat": {...}``. ``train_state.pt`` keeps the prepared model.

The output folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), the ``last`` and ``best``
checkpoints (see :mod:`attendnets.checkpoint`), ``train_state.pt`` (for ``resume``) and ``curves.png``.

``resume`` continues from the end of the last completed epoch and reproduces the uninterrupted run:
the shuffling is seeded by ``(seed, epoch)``, the random states of every process are saved, and data
loader workers are re-seeded from them each epoch (bit-exact in tests with ``workers=0``).

Under ``torchrun`` (environment ``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on GPU), each process reads its own shard of the data, evaluation counts are summed
across processes, and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from attendnets.checkpoint import (
    atomic_write,
    atomic_write_text,
    load_train_state,
    load_weights,
    model_meta,
    save_checkpoint,
    save_train_state,
)
from attendnets.data import ImageList, open_image_folders, short_list
from attendnets.errors import AttendNetsError
from attendnets.evaluate import Tally, evaluate_model
from attendnets.quantize import copy_activation_ranges, finish_qat, plain_copy, prepare_qat
from attendnets.registry import create_model
from attendnets.runtime import tune_malloc

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the output folder."""

    model: str
    output: str
    data: str | None = None  # None: the ATTENDNETS_DATA environment variable
    img_size: int = 128
    epochs: int = 30
    batch_size: int = 64  # per process
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    ema: bool = True
    ema_decay: float = 0.9998  # the ceiling; the EMA warms up from 0 (timm's ModelEmaV3 warm-up)
    workers: int = 2
    seed: int = 0
    resume: bool = False
    strict: bool = False
    tensorboard: bool = False
    subset: int | None = None  # at most this many images of each split (smoke runs)
    init: str | None = None  # start from this checkpoint's weights (same architecture and classes)
    qat: bool = False  # quantization-aware training: int8 fake-quantized conv/linear weights
    qat_activations: bool = False  # and 8-bit fake-quantized conv/linear inputs (needs qat)
    # Preprocessing, identical for every model so that a comparison compares models, not pipelines.
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD


# A resumed run must be the run that was started: these fields may not change.
RECIPE_FIELDS = ("model", "img_size", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                 "label_smoothing", "ema", "ema_decay", "seed", "subset", "interpolation", "crop_pct", "init",
                 "qat", "qat_activations")


class TrainingDiverged(AttendNetsError):
    """The loss became NaN or infinite; the checkpoints of earlier epochs are kept."""


@dataclass
class Process:
    """This process's place in a (possibly one-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    output: Path
    best_top1: float
    best_epoch: int
    epochs_run: int
    model: nn.Module  # the raw (not EMA) weights after the last epoch (QAT: quantized, plain layout)
    history: list[dict[str, Any]]


def init_process() -> Process:
    """Join the process group when started by ``torchrun``; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world == 1:
        return Process(device=device)
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), device)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; see the module docstring."""
    tune_malloc()
    proc = init_process()
    try:
        return _train(config, proc)
    finally:
        if proc.world > 1:
            dist.destroy_process_group()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(obj: Any, proc: Process) -> list[Any]:
    """``obj`` of every process, by rank (on every process)."""
    if proc.world == 1:
        return [obj]
    out: list[Any] = [None] * proc.world
    dist.all_gather_object(out, obj)
    return out


def _loaders(config: TrainConfig, proc: Process) -> tuple[DataLoader, DataLoader, DistributedSampler, list[str]]:
    folders = open_image_folders(config.data, config.strict, config.subset)
    steps = len(folders.train) // (config.batch_size * proc.world)
    if steps == 0:
        raise AttendNetsError(
            f"train/ has {len(folders.train)} images, fewer than one batch of {config.batch_size} "
            f"per process ({proc.world} process(es)); lower --batch-size"
        )
    common = dict(interpolation=config.interpolation, mean=config.mean, std=config.std)
    train_tf = create_transform(config.img_size, is_training=True, hflip=0.5, color_jitter=None, **common)
    val_tf = create_transform(config.img_size, is_training=False, crop_pct=config.crop_pct, **common)
    train_set = ImageList(folders.train, folders.classes, train_tf)
    # Each process evaluates its own slice of val/; the counts are summed, so no image is counted twice.
    val_set = ImageList(folders.val[proc.rank :: proc.world], folders.classes, val_tf)
    sampler = DistributedSampler(train_set, proc.world, proc.rank, shuffle=True, seed=config.seed, drop_last=True)
    pin = proc.device.type == "cuda"
    train_loader = DataLoader(
        train_set, config.batch_size, sampler=sampler, num_workers=config.workers, drop_last=True, pin_memory=pin
    )
    val_loader = DataLoader(val_set, config.batch_size, num_workers=config.workers, pin_memory=pin)
    return train_loader, val_loader, sampler, folders.classes


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    now = _jsonable(dataclasses.asdict(config))
    # Fields added since the run started take their defaults (the behaviour the run had).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [f for f in RECIPE_FIELDS if saved.get(f, defaults[f]) != now[f]]
    if changed:
        f = changed[0]
        raise AttendNetsError(
            f"cannot resume: the run was started with {f}={saved.get(f)!r}, now {getattr(config, f)!r}; "
            "resume with the original options or start a new --output"
        )


def _load_init(model: nn.Module, path: str, classes: list[str]) -> None:
    """Load the weights of the checkpoint a run starts from; it must be for the same model and classes."""
    try:
        meta = load_weights(model, path)
    except AttendNetsError as err:
        raise AttendNetsError(f"cannot start from {path}: {err}") from None
    if meta.get("class_names") != classes:
        raise AttendNetsError(
            f"cannot start from {path}: it was trained on the classes {short_list(meta.get('class_names') or [])}, "
            f"the data has {short_list(classes)}"
        )


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _train(config: TrainConfig, proc: Process) -> TrainResult:
    if config.qat_activations and not config.qat:
        raise AttendNetsError("fake-quantized activations (qat_activations) need quantization-aware training (qat)")
    out = Path(config.output)
    state_path = out / STATE_FILE
    resuming = config.resume and state_path.is_file()
    if state_path.is_file() and not config.resume:
        raise AttendNetsError(f"{out} already holds a training run; pass --resume to continue it, or another --output")
    if config.tensorboard and proc.main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AttendNetsError("--tensorboard needs the tensorboard package: pip install tensorboard") from None

    _seed_everything(config.seed)  # the same initial weights in every process
    train_loader, val_loader, sampler, classes = _loaders(config, proc)
    model = create_model(config.model, num_classes=len(classes))
    if config.init and not resuming:
        _load_init(model, config.init, classes)
    meta = {
        **model_meta(model, config.model),
        "class_names": classes,
        "img_size": config.img_size,
        "mean": list(config.mean),
        "std": list(config.std),
        "interpolation": config.interpolation,
        "crop_pct": config.crop_pct,
        **({"init": config.init} if config.init else {}),
        **({"weight_bits": 8, "qat": {"activations": config.qat_activations}} if config.qat else {}),
    }
    model = model.to(proc.device, memory_format=torch.channels_last)
    if config.qat:
        prepare_qat(model, activations=config.qat_activations)  # before the optimizer: it holds the originals
    optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.lr * 1e-2,
        min_lr=config.lr * 1e-3,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    criterion = LabelSmoothingCrossEntropy(config.label_smoothing)

    start_epoch, best_top1, best_epoch, state = 0, -1.0, 0, None
    if resuming:
        state = load_train_state(state_path)
        _check_resumable(state["config"], config)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise AttendNetsError(f"cannot resume: {state_path} holds another architecture than {config.model}") from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_top1, best_epoch = state["epoch"], state["best_top1"], state["best_epoch"]
        if proc.main:
            log.info(f"resuming {out} after epoch {start_epoch} (best val top-1 so far {best_top1:.2f}%)")
    else:
        # Seed this process's augmentation stream (the weights above are already identical everywhere).
        _seed_everything(config.seed + proc.rank)
    scheduler.step_update(start_epoch * steps_per_epoch)

    net: nn.Module = model
    if proc.world > 1:
        net = DistributedDataParallel(model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
        # (1, C, 1, 1) parameters (a VAC's scale) in channels_last have strides that DDP calls mismatched
        # although the memory layout is the same; the warning would repeat every epoch.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema else None
    if state is not None:
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        rng = state["rng"]
        _set_rng_state(rng[proc.rank] if proc.rank < len(rng) else rng[0])

    writer = None
    if proc.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(_jsonable(dataclasses.asdict(config)), indent=2) + "\n")
        history = _read_history(out, upto=start_epoch)
        _write_history(out, history)
        if config.tensorboard:
            writer = SummaryWriter(str(out / "tensorboard"))
        log.info(
            f"training {config.model} on {len(train_loader.dataset)} images ({len(classes)} classes) for "
            f"{config.epochs} epochs at {config.img_size}px, batch {config.batch_size} x {proc.world} process(es), "
            f"{sum(p.numel() for p in model.parameters()):,} parameters"
            f"{' from ' + config.init if config.init else ''}{_qat_note(config)} -> {out}"
        )
    else:
        history = []

    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            epoch_start = time.perf_counter()
            stats = _train_epoch(net, model, ema, train_loader, criterion, optimizer, scheduler, epoch, config, proc)
            _sync_buffers(proc, model, ema.module if ema else None)
            if ema is not None and config.qat_activations:
                copy_activation_ranges(model, ema.module)
            raw = evaluate_model(model, val_loader, len(classes), proc.device).summary(classes)
            ema_eval = evaluate_model(ema.module, val_loader, len(classes), proc.device).summary(classes) if ema else None
            pick, picked = ("ema", ema_eval) if ema_eval and ema_eval["top1"] > raw["top1"] else ("raw", raw)
            record = {
                "epoch": epoch + 1,
                **stats,
                "val_images": raw["images"],
                "val_loss": raw["loss"],
                "val_top1": raw["top1"],
                "val_top5": raw["top5"],
                **({"ema_val_loss": ema_eval["loss"], "ema_val_top1": ema_eval["top1"], "ema_val_top5": ema_eval["top5"]}
                   if ema_eval else {}),
            }
            improved = picked["top1"] > best_top1
            if improved:
                best_top1, best_epoch = picked["top1"], epoch + 1
            record.update(best_top1=best_top1, best_epoch=best_epoch, epoch_seconds=time.perf_counter() - epoch_start)
            rng = _gather(_rng_state(), proc)
            if proc.main:
                weights = ema.module if pick == "ema" else model
                if config.qat:
                    weights = plain_copy(weights)  # int8-representable weights under the usual keys
                ckpt_meta = {
                    **meta,
                    "epoch": epoch + 1,
                    "weights": pick,
                    "metrics": {"val_top1": picked["top1"], "val_top5": picked["top5"], "val_loss": picked["loss"],
                                "raw_val_top1": raw["top1"], **({"ema_val_top1": ema_eval["top1"]} if ema_eval else {})},
                }
                save_checkpoint(out / "last", weights, ckpt_meta)
                if improved:
                    save_checkpoint(out / "best", weights, ckpt_meta)
                history.append(record)
                _write_history(out, history)
                save_train_state(
                    state_path,
                    {
                        "config": _jsonable(dataclasses.asdict(config)),
                        "epoch": epoch + 1,  # also the sampler's next epoch
                        "best_top1": best_top1,
                        "best_epoch": best_epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "ema": ema.module.state_dict() if ema else None,
                        "rng": rng,
                    },
                )
                if writer:
                    for key, value in record.items():
                        if key != "epoch":
                            writer.add_scalar(key, value, epoch + 1)
                    writer.flush()
                log.info(_summary_line(record, config.epochs, pick))
    finally:
        if proc.main and history:
            atomic_write(out / "curves.png", lambda tmp: plot_curves(history, tmp))
        if writer:
            writer.close()
    if config.qat:
        finish_qat(model)
    return TrainResult(out, best_top1, best_epoch, config.epochs - start_epoch, model, history)


def _qat_note(config: TrainConfig) -> str:
    if not config.qat:
        return ""
    return ", quantization-aware (int8 weights" + (", 8-bit activations)" if config.qat_activations else ")")


def _sync_buffers(proc: Process, *modules: nn.Module | None) -> None:
    """Give every process rank 0's BatchNorm statistics: DDP syncs them before each forward, but the last
    forward (and the EMA of them) leaves each process with its own."""
    if proc.world == 1:
        return
    for module in modules:
        if module is not None:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)


def _train_epoch(
    net: nn.Module,
    model: nn.Module,
    ema: ModelEmaV3 | None,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    epoch: int,
    config: TrainConfig,
    proc: Process,
) -> dict[str, float]:
    """One pass over the training data; returns the mean loss, throughput and time of the epoch."""
    net.train()
    steps = len(loader)
    step = epoch * steps
    loss_sum, images, start = 0.0, 0, time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        disable=not proc.main or not sys.stderr.isatty(),
    )
    for inputs, targets in bar:
        inputs = inputs.to(proc.device, non_blocking=True, memory_format=torch.channels_last)
        targets = targets.to(proc.device, non_blocking=True)
        loss = criterion(net(inputs), targets)
        mean_loss = loss.detach().clone()
        if proc.world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= proc.world
        if not math.isfinite(mean_loss.item()):
            lr = optimizer.param_groups[0]["lr"]
            last = Path(config.output) / "last"
            kept = f"the last good checkpoint is {last} (epoch {epoch})" if epoch else "no checkpoint was written"
            raise TrainingDiverged(
                f"loss became {mean_loss.item()} at epoch {epoch + 1}, step {step - epoch * steps + 1} "
                f"(lr {lr:.2e}); stopped, {kept}; try a lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        scheduler.step_update(step)
        if ema is not None:
            ema.update(model, step=step)
        loss_sum += mean_loss.item()
        images += inputs.shape[0] * proc.world
        bar.set_postfix(loss=f"{mean_loss.item():.3f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum / steps,
        "lr": optimizer.param_groups[0]["lr"],
        "train_images_per_s": images / seconds,
        "train_seconds": seconds,
    }


def _summary_line(record: dict[str, Any], epochs: int, pick: str) -> str:
    ema = f" (EMA {record['ema_val_top1']:.2f}%)" if "ema_val_top1" in record else ""
    return (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.3f}, val top-1 {record['val_top1']:.2f}%"
        f"{ema}, top-5 {record['val_top5']:.2f}%, best {record['best_top1']:.2f}% (epoch {record['best_epoch']}), "
        f"{record['train_images_per_s']:.0f} img/s, {record['train_seconds']:.0f} s; saved {pick} weights"
    )


def _read_history(out: Path, upto: int) -> list[dict[str, Any]]:
    """The metrics of epochs ``1..upto`` already in ``metrics.jsonl`` (lines of later, lost epochs dropped)."""
    path = out / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= upto]


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def plot_curves(history: list[dict[str, Any]], path: str) -> None:
    """Loss (train and val) and val top-1 (raw and EMA) against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], label="train (label-smoothed)")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], label="val")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.plot(epochs, [r["val_top1"] for r in history], label="val top-1")
    if "ema_val_top1" in history[0]:
        acc_ax.plot(epochs, [r["ema_val_top1"] for r in history], label="val top-1, EMA")
    acc_ax.set(xlabel="epoch", ylabel="%", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
