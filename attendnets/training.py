"""Training any model (preset, baseline, timm name or spec file) on an image folder, on CPU or GPU, in one
process or several (``torchrun``).

The recipe, with defaults chosen for small datasets on a CPU: random-resized crop (35-100% of the area)
and horizontal flip (more of timm's augmentations on request: :mod:`attendnets.augment`), AdamW without
weight decay on biases and norms, a cosine schedule stepped every batch after a linear warm-up, label
smoothing, an exponential moving average (EMA) of the weights, and channels_last memory layout. Every
epoch both the raw and the EMA weights are evaluated on ``val/``; the better of the two is saved as the
``last`` checkpoint, and as ``best`` when it beats every earlier epoch.

``qat`` trains with int8 fake-quantized weights (and, with ``qat_activations``, 8-bit fake-quantized
conv/linear inputs; see :mod:`attendnets.quantize`), usually from a trained checkpoint given as ``init``.
The EMA averages the float weights behind the fake quantization and uses the trained model's activation
ranges. The checkpoints hold the quantized weights in the plain layout (every conv/linear weight exactly
int8-representable, the usual state-dict keys), so evaluation and export load them like any other; their
sidecars say ``"weight_bits": 8`` and ``"qat": {...}``. ``train_state.pt`` keeps the prepared model.

The output folder holds ``config.json`` (with the dataset as an absolute path), ``metrics.jsonl`` (one line
per epoch), the ``last`` and ``best`` checkpoints (see :mod:`attendnets.checkpoint`), ``train_state.pt``
(for ``resume``; tensors and plain data only) and ``curves.png``. A new run needs a new or empty folder
(:func:`check_output`): it never overwrites or mixes with another run's or another verb's files.

``resume`` continues from the end of the last completed epoch and reproduces the uninterrupted run:
the shuffling is seeded by ``(seed, epoch)``, the random states of every process are saved, and data
loader workers are re-seeded from them each epoch (bit-exact in tests with ``workers=0``). The run must be
the one that was started: the same recipe, the same classes, and an AttendNet is rebuilt from the spec
the run saved (a spec file edited since is refused, saying what differs).

Under ``torchrun`` (environment ``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on GPU), each process reads its own shard of the data, evaluation counts are summed
across processes, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
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
from timm.data import create_transform
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from attendnets.augment import TrainingLoss, check_augmentation, train_transform
from attendnets.checkpoint import (
    build_from_meta,
    load_train_state,
    load_weights,
    model_meta,
    read_meta,
    save_checkpoint,
    save_train_state,
)
from attendnets.data import (
    CROP_PCT,
    INTERPOLATION,
    MEAN,
    STD,
    ImageFolders,
    ImageList,
    decode_images,
    open_image_folders,
    resolve_data_dir,
    short_list,
)
from attendnets.errors import AttendNetsError
from attendnets.evaluate import evaluate_model
from attendnets.files import (
    as_json_data,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    held_folder,
)
from attendnets.plots import plot_curves
from attendnets.quantize import copy_activation_ranges, finish_qat, plain_copy, prepare_qat
from attendnets.registry import PRESETS, create_model, is_attendnet, is_spec_path, load_preset
from attendnets.spec import ArchSpec

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
# What a started run writes before its first checkpoint.
RUN_RECORDS = (CONFIG_FILE, METRICS_FILE, "tensorboard")
# Checkpoints and reports of runs and other verbs that a new run would overwrite or mix with.
OUTPUT_FILES = ("best.json", "last.json", "curves.png", "quantize.json")
OUTPUT_SUFFIXES = (".safetensors", ".onnx", ".tflite", ".pte")
STATE_KEYS = ("config", "epoch", "best_top1", "best_epoch", "model", "optimizer", "scheduler", "ema", "rng",
              "spec", "class_names")


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
    # Augmentation (attendnets.augment): random-resized crop keeping this share of the image area, flip
    # probability, colour jitter strength, timm policy string, random-erasing probability, mixup/cutmix alphas.
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None
    random_erase: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: bool = True
    ema_decay: float = 0.9998  # the ceiling; the EMA warms up from 0 (timm's ModelEmaV3 warm-up)
    workers: int = 2
    cache_images: bool = False  # decode every image once into memory (the same pixels: results do not change)
    seed: int = 0
    resume: bool = False
    strict: bool = False
    tensorboard: bool = False
    subset: int | None = None  # at most this many images of each split (smoke runs)
    init: str | None = None  # start from this checkpoint's weights (same architecture; other classes: a new head)
    qat: bool = False  # quantization-aware training: int8 fake-quantized conv/linear weights
    qat_activations: bool = False  # and 8-bit fake-quantized conv/linear inputs (needs qat)
    weight_init: str = "torch"  # AttendNets: AttendNet's weight_init ("torch" or "kaiming")
    zero_init_last: bool = True  # AttendNets: start residual blocks as the identity (AttendNet's zero_init_last)
    # Preprocessing, identical for every model so that a comparison compares models, not pipelines.
    interpolation: str = INTERPOLATION
    crop_pct: float = CROP_PCT
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD


INIT_OPTIONS = ("weight_init", "zero_init_last")  # TrainConfig fields passed to an AttendNet's constructor

# A resumed run must be the run that was started: these fields may not change.
RECIPE_FIELDS = ("model", "img_size", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                 "label_smoothing", "ema", "ema_decay", "seed", "subset", "interpolation", "crop_pct", "init",
                 "qat", "qat_activations", "crop_scale", "weight_init", "zero_init_last", "hflip", "color_jitter",
                 "auto_augment", "random_erase", "mixup", "cutmix")
# What a run saved before a field existed did, where that differs from the field's default today.
BEFORE_FIELD = {"crop_scale": (0.08, 1.0), "zero_init_last": False, "weight_init": "kaiming"}


class TrainingDiverged(AttendNetsError):
    """The loss became NaN or infinite; the checkpoints of earlier epochs are kept."""


class TooFewImages(AttendNetsError):
    """``train/`` holds fewer images than one batch per process (a verb may reword it for its own options)."""

    def __init__(self, images: int, batch_size: int, processes: int) -> None:
        self.images, self.batch_size, self.processes = images, batch_size, processes
        super().__init__(
            f"train/ has {images} images, fewer than one batch of {batch_size} per process "
            f"({processes} process(es)); lower --batch-size"
        )


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
    """This process's random states as tensors and plain lists (a training state holds nothing else)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states that :func:`_rng_state` recorded."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
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


def _loaders(config: TrainConfig, folders: ImageFolders, proc: Process) -> tuple[DataLoader, DataLoader,
                                                                                   DistributedSampler]:
    steps = len(folders.train) // (config.batch_size * proc.world)
    if steps == 0:
        raise TooFewImages(len(folders.train), config.batch_size, proc.world)
    common = dict(interpolation=config.interpolation, mean=config.mean, std=config.std)
    train_tf = train_transform(config)
    val_tf = create_transform(config.img_size, is_training=False, crop_pct=config.crop_pct, **common)
    # Each process evaluates its own slice of val/; the counts are summed, so no image is counted twice.
    val = folders.val[proc.rank :: proc.world]
    train_set = ImageList(folders.train, folders.classes, train_tf,
                          decode_images(folders.train) if config.cache_images else None)
    val_set = ImageList(val, folders.classes, val_tf, decode_images(val) if config.cache_images else None)
    sampler = DistributedSampler(train_set, proc.world, proc.rank, shuffle=True, seed=config.seed, drop_last=True)
    pin = proc.device.type == "cuda"
    train_loader = DataLoader(
        train_set, config.batch_size, sampler=sampler, num_workers=config.workers, drop_last=True, pin_memory=pin
    )
    val_loader = DataLoader(val_set, config.batch_size, num_workers=config.workers, pin_memory=pin)
    return train_loader, val_loader, sampler


def recipe_changes(saved: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, value now)`` for each recipe field where ``config`` differs from a run's saved
    config (``config.json``); a field the run saved no value for had the behaviour it had before it existed.
    AttendNets' initialisation options do not count for other models, which ignore them."""
    now = as_json_data(dataclasses.asdict(config))
    fields = dataclasses.fields(TrainConfig)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    started = {**as_json_data({**defaults, **BEFORE_FIELD}), **saved}
    ignored = () if is_attendnet(config.model) else INIT_OPTIONS
    return [(f, started.get(f), now[f]) for f in RECIPE_FIELDS if f not in ignored and started.get(f) != now[f]]


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """The recipe of a resumed run must be the one it was started with (``saved``: its config)."""
    changed = recipe_changes(saved, config)
    if changed:
        f, was, now = changed[0]
        raise AttendNetsError(
            f"cannot resume: the run was started with {f}={was!r}, now {now!r}; "
            "resume with the original options or start a new --output"
        )


def _load_init(model: nn.Module, path: str, classes: list[str]) -> None:
    """Load the weights of the checkpoint a run starts from, which must be of the same architecture: all of
    them for the same classes; for other classes all but the classifier, which starts anew (fine-tuning)."""
    try:
        same_classes = read_meta(path).get("class_names") == classes
        load_weights(model, path, new_classifier=not same_classes)
    except AttendNetsError as err:
        raise AttendNetsError(f"cannot start from {path}: {err}") from None
    if not same_classes:
        log.info("starting from %s with a new classifier for the %d classes of the data", path, len(classes))


class _Run:
    """One training run as this process sees it: built (or restored for ``resume``) by the constructor, then
    advanced an epoch at a time by :meth:`epoch`. Only the main process writes files."""

    def __init__(self, config: TrainConfig, proc: Process) -> None:
        # Every process checks the folder before DDP's first broadcast, so before the main process writes to it.
        state = _check_start(config, proc)
        # Recorded as an absolute path, so that later verbs (export's calibration) find it from any folder.
        config = dataclasses.replace(config, data=str(resolve_data_dir(config.data).resolve()))
        self.config, self.proc = config, proc
        self.out = Path(config.output)
        self.state_path = self.out / STATE_FILE
        _seed_everything(config.seed)  # the same initial weights in every process
        folders = open_image_folders(config.data, config.strict, config.subset)
        self.classes = folders.classes
        if state is not None:
            _check_classes(state["class_names"], self.classes)
        self.history: list[dict[str, Any]] = _read_history(self.out, state["epoch"]) if state is not None else []
        self.model = _build_model(config, len(self.classes), state)  # a bad spec fails before any image is loaded
        if config.init and state is None:
            _load_init(self.model, config.init, self.classes)
        self.train_loader, self.val_loader, self.sampler = _loaders(config, folders, proc)
        self.meta = _checkpoint_meta(self.model, config, self.classes)
        self.model = self.model.to(proc.device, memory_format=torch.channels_last)
        if config.qat:
            prepare_qat(self.model, activations=config.qat_activations)  # before the optimizer: it holds the originals
        self.optimizer, self.scheduler = _optimizer_and_schedule(self.model, config, len(self.train_loader))
        self.loss = TrainingLoss(config, len(self.classes))
        self.start_epoch, self.best_top1, self.best_epoch = 0, -1.0, 0
        if state is not None:
            self._restore(state)
        else:
            _seed_everything(config.seed + proc.rank)  # this process's augmentation stream; weights already agree
        self.scheduler.step_update(self.start_epoch * len(self.train_loader))
        self.net: nn.Module = self.model
        if proc.world > 1:
            self.net = DistributedDataParallel(self.model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True) if config.ema else None
        if state is not None:
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
            rng = state["rng"]
            _set_rng_state(rng[proc.rank] if proc.rank < len(rng) else rng[0])
        self.writer = None

    def _restore(self, state: dict[str, Any]) -> None:
        """Load the training state of the interrupted run into the model, optimizer and schedule."""
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise AttendNetsError(
                f"cannot resume: {self.state_path} holds another architecture than {self.config.model}"
            ) from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # parameter groups of another size: the run started with another decay grouping
            raise AttendNetsError(
                f"cannot resume {self.out}: its optimizer groups the parameters differently from this version "
                "(runs started before 2026-11-30 weight-decayed the condensers' scale S); finish it with the version "
                "that started it, or start a new run"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.best_top1, self.best_epoch = state["epoch"], state["best_top1"], state["best_epoch"]
        if self.proc.main:
            log.info(f"resuming {self.out} after epoch {self.start_epoch} (best val top-1 so far {self.best_top1:.2f}%)")

    def open_records(self) -> None:
        """Main process: the output folder, ``config.json``, the metrics of the epochs already run, tensorboard."""
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / CONFIG_FILE, as_json_data(dataclasses.asdict(config)))
        _write_history(self.out, self.history)
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        log.info(
            f"training {config.model} on {len(self.train_loader.dataset)} images ({len(self.classes)} classes) for "
            f"{config.epochs} epochs at {config.img_size}px, batch {config.batch_size} x {self.proc.world} process(es), "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters"
            f"{' from ' + config.init if config.init else ''}{_qat_note(config)} -> {self.out}"
        )

    def close_records(self) -> None:
        if self.history:
            atomic_write(self.out / "curves.png", lambda tmp: plot_curves(self.history, tmp))
        if self.writer:
            self.writer.close()

    def epoch(self, epoch: int) -> None:
        """Train epoch ``epoch`` (0-based), evaluate the raw and EMA weights, and (main process) save."""
        config, proc, ema = self.config, self.proc, self.ema
        self.sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        stats = _train_epoch(self.net, self.model, ema, self.train_loader, self.loss, self.optimizer,
                             self.scheduler, epoch, config, proc)
        _sync_buffers(proc, self.model, ema.module if ema else None)
        if ema is not None and config.qat_activations:
            copy_activation_ranges(self.model, ema.module)
        classes = self.classes
        raw = evaluate_model(self.model, self.val_loader, len(classes), proc.device).summary(classes)
        ema_eval = evaluate_model(ema.module, self.val_loader, len(classes), proc.device).summary(classes) if ema else None
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
        improved = picked["top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = picked["top1"], epoch + 1
        record.update(best_top1=self.best_top1, best_epoch=self.best_epoch, epoch_seconds=time.perf_counter() - epoch_start)
        rng = _gather(_rng_state(), proc)
        if proc.main:
            metrics = {"val_top1": picked["top1"], "val_top5": picked["top5"], "val_loss": picked["loss"],
                       "raw_val_top1": raw["top1"], **({"ema_val_top1": ema_eval["top1"]} if ema_eval else {})}
            self._save(epoch + 1, pick, metrics, improved, rng)
            self.history.append(record)
            _write_history(self.out, self.history)
            if self.writer:
                for key, value in record.items():
                    if key != "epoch":
                        self.writer.add_scalar(key, value, epoch + 1)
                self.writer.flush()
            log.info(_summary_line(record, config.epochs, pick))

    def _save(self, epochs_done: int, pick: str, metrics: dict[str, float], improved: bool, rng: list[Any]) -> None:
        """The ``last`` (and, when ``improved``, ``best``) checkpoint of the picked weights, then the state
        that ``resume`` continues from."""
        weights = self.ema.module if pick == "ema" else self.model
        if self.config.qat:
            weights = plain_copy(weights)  # int8-representable weights under the usual keys
        ckpt_meta = {**self.meta, "epoch": epochs_done, "weights": pick, "metrics": metrics}
        save_checkpoint(self.out / "last", weights, ckpt_meta)
        if improved:
            save_checkpoint(self.out / "best", weights, ckpt_meta)
        save_train_state(self.state_path, {
            "config": as_json_data(dataclasses.asdict(self.config)),
            "epoch": epochs_done,  # also the sampler's next epoch
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "rng": rng,
            "spec": self.meta["spec"],
            "class_names": self.classes,
        })


def _train(config: TrainConfig, proc: Process) -> TrainResult:
    out = Path(config.output)
    early = proc.main and out.is_dir()  # an existing run is held before it is read: a second process stops here
    with contextlib.ExitStack() as held:
        if early:
            held.enter_context(held_folder(out, "a training"))
        run = _Run(config, proc)
        if proc.main and not early:  # a new run's folder, held once every check has passed
            held.enter_context(held_folder(out, "a training"))
        if proc.main:
            run.open_records()
        try:
            with warnings.catch_warnings():
                # (1, C, 1, 1) parameters (a VAC's scale) in channels_last have strides that DDP calls mismatched
                # although the memory layout is the same; the warning would repeat every epoch.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                for epoch in range(run.start_epoch, config.epochs):
                    run.epoch(epoch)
        except ValueError as err:
            if "more than 1 value per channel" not in str(err):
                raise
            raise AttendNetsError(
                f"a batch of {config.batch_size} at {config.img_size} px leaves batch norm one value per channel "
                "in a late layer, which it cannot train on; raise --batch-size or --img-size"
            ) from None
        finally:
            if proc.main:
                run.close_records()
    if config.qat:
        finish_qat(run.model)
    return TrainResult(run.out, run.best_top1, run.best_epoch, config.epochs - run.start_epoch, run.model, run.history)


def _check_start(config: TrainConfig, proc: Process) -> dict[str, Any] | None:
    """Refuse what cannot run before any work (nothing is written before this passes); returns the training
    state to continue from, checked to belong to this recipe, or ``None`` to start at epoch 1."""
    if config.qat_activations and not config.qat:
        raise AttendNetsError("fake-quantized activations (qat_activations) need quantization-aware training (qat)")
    _init_options(config)
    check_augmentation(config)
    has_state = check_output(config.output, config.resume)
    if config.tensorboard and proc.main:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise AttendNetsError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    if not config.resume:
        return None
    out = Path(config.output)
    if not has_state:  # a run that completed no epoch: started over with the same recipe
        _check_resumable(_read_config(out / CONFIG_FILE), config)
        return None
    state = load_train_state(out / STATE_FILE)
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise AttendNetsError(f"{out / STATE_FILE} is not a complete training state: no {', '.join(missing)}")
    _check_resumable(state["config"], config)
    return state


def check_output(output: str | os.PathLike, resume: bool) -> bool:
    """Refuse an output folder a run may not write into, before anything is written: a new run needs a new
    or empty folder (other files, such as a spec or generated data, are left alone), a resumed one a folder
    holding a run. Returns whether the folder holds a training state to continue from."""
    out = Path(output)
    check_writable(out, "--output")
    if resume and not out.is_dir():
        raise AttendNetsError(f"cannot resume: there is no run folder {out} (check --output)")
    has_state = (out / STATE_FILE).is_file()
    found = sorted(p.name for p in out.iterdir() if _is_output_file(p.name)) if out.is_dir() else []
    checkpoints = [name for name in found if name not in RUN_RECORDS]
    if has_state and not resume:
        raise AttendNetsError(f"{out} already holds a training run; pass --resume to continue it, or another --output")
    if has_state:
        return True
    if checkpoints:
        what = f"{short_list(found)} but no training state ({STATE_FILE})"
        if resume:
            raise AttendNetsError(f"cannot resume: {out} holds {what} to continue from")
        raise AttendNetsError(f"{out} already holds {what}: a new run would overwrite or mix with them; "
                              "choose a new or empty --output")
    if found and not resume:
        raise AttendNetsError(f"{out} already holds a training run that completed no epoch ({short_list(found)}); "
                              "pass --resume to start it over, or another --output")
    if resume and not found:
        raise AttendNetsError(f"cannot resume: {out} holds no training run (no {STATE_FILE})")
    return False


def _is_output_file(name: str) -> bool:
    return name in RUN_RECORDS or name in OUTPUT_FILES or name.endswith(OUTPUT_SUFFIXES)


def _read_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a run, as a dict."""
    try:
        config = json.loads(path.read_text(errors="replace"))
    except OSError as err:
        raise AttendNetsError(f"cannot resume: cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise AttendNetsError(f"cannot resume: {path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise AttendNetsError(f"cannot resume: {path} is not a training config")
    return config


def _check_classes(run: list[str], data: list[str]) -> None:
    """A resumed run must see the classes it was started on, in the same order (labels are indices)."""
    if run == data:
        return
    if len(run) != len(data):
        raise AttendNetsError(
            f"cannot resume: the data has {len(data)} classes ({short_list(data)}), the run was trained on "
            f"{len(run)} ({short_list(run)})"
        )
    raise AttendNetsError(
        "cannot resume: the data's class folders differ from the run's: only in the data: "
        f"{short_list(sorted(set(data) - set(run)))}; only in the run: {short_list(sorted(set(run) - set(data)))}"
    )


def _build_model(config: TrainConfig, num_classes: int, state: dict[str, Any] | None) -> nn.Module:
    """The run's model. A resumed AttendNet is rebuilt from the spec the run saved; the spec that its name
    gives now (a spec file, a preset) must equal it, and a spec file that has gone is not needed."""
    name = config.model
    saved = state["spec"] if state is not None else None
    if saved is None:
        return create_model(name, num_classes=num_classes, **_init_options(config))
    current = _named_spec(name)
    # Both read as specs first, so that a field added since the run started counts with its default; the
    # description is prose, not design.
    difference = None if current is None else _first_difference(
        *(as_json_data({**spec.to_dict(), "description": ""}) for spec in (ArchSpec.from_dict(saved), current)))
    if difference:
        raise AttendNetsError(
            f"cannot resume: the spec of {name} has changed since the run started ({difference}); "
            "restore it, or start a new --output"
        )
    return build_from_meta({"spec": saved, "num_classes": num_classes})


def _init_options(config: TrainConfig) -> dict[str, Any]:
    """AttendNet's initialisation options that differ from their defaults. Other models have no residual
    condensers to zero-initialise, so they ignore ``zero_init_last``, and refuse another ``weight_init``."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    given = {k: getattr(config, k) for k in INIT_OPTIONS if getattr(config, k) != defaults[k]}
    if is_attendnet(config.model):
        return given
    if "weight_init" in given:
        raise AttendNetsError(f"weight_init applies to AttendNets only, not to {config.model}")
    return {}


def _named_spec(name: str) -> ArchSpec | None:
    """The spec a model name gives now: a spec file's (``None`` if the file has gone) or a preset's."""
    if is_spec_path(name):
        return ArchSpec.load(name) if Path(name).is_file() else None
    return load_preset(name) if name in PRESETS else None


def _first_difference(run: Any, now: Any, where: str = "") -> str | None:
    """Where two JSON values first differ, as ``blocks[2].pool: 2 in the run, 4 now``; ``None`` if equal."""
    if isinstance(run, dict) and isinstance(now, dict):
        keys = [*run, *(k for k in now if k not in run)]
        found = (_first_difference(run.get(k), now.get(k), f"{where}.{k}" if where else k) for k in keys)
        return next((d for d in found if d), None)
    if isinstance(run, list) and isinstance(now, list) and len(run) == len(now):
        found = (_first_difference(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(run, now, strict=True)))
        return next((d for d in found if d), None)
    if isinstance(run, list) and isinstance(now, list):
        return f"{where}: {len(run)} entries in the run, {len(now)} now"
    return None if run == now else f"{where}: {json.dumps(run)} in the run, {json.dumps(now)} now"


def _checkpoint_meta(model: nn.Module, config: TrainConfig, classes: list[str]) -> dict[str, Any]:
    """What every checkpoint of the run records besides its epoch and metrics."""
    return {
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


def _optimizer_and_schedule(model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    """AdamW (timm's factory: no weight decay on biases and norms) and a cosine schedule stepped per batch."""
    optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
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
    return optimizer, scheduler


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
    loss_of: TrainingLoss,
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
        loss = loss_of(net, inputs, targets)
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
    """The metrics of epochs ``1..upto`` already in ``metrics.jsonl`` (lines of later, lost epochs dropped).
    A damaged line is refused rather than dropped: the checkpoints keep only two epochs' metrics, so the
    other records exist nowhere else."""
    path = out / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise AttendNetsError(
                f"cannot resume: {path} line {number} is not an epoch record (one JSON object with an \"epoch\"); "
                "repair the file to continue the run"
            )
        records.append(record)
    return [r for r in records if r["epoch"] <= upto]


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
