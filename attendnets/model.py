"""The one builder that turns an :class:`~attendnets.spec.ArchSpec` into an :class:`AttendNet`.

Presets, search results and user designs all come through :func:`build_model`, which checks every
block before building it so that a bad spec fails with a message naming the block, never deep in torch.

Annotations are evaluated here (no ``from __future__ import annotations``): ``torch.fx`` copies a traced
forward's annotations into the code it generates, and TorchScript cannot compile them as strings.
"""

import math
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d, calculate_drop_path_rates, get_device_dtype
from timm.models import checkpoint, checkpoint_seq
from timm.models._features import feature_take_indices  # timm's own models import it from there
from torch import nn

from attendnets.blocks import ACTIVATIONS, ATTENTIONS, PEPE, ConvNormAct, VisualAttentionCondenser, make_activation
from attendnets.errors import AttendNetsError
from attendnets.spec import ArchSpec, BlockSpec, ConvSpec, HeadSpec, PEPESpec, SpecError, VACSpec, block_out_chs


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise SpecError(f"{where}: {message}")


def _check_positive(where: str, **values: int) -> None:
    for name, value in values.items():
        _check(isinstance(value, int) and value > 0, where, f"{name} must be a positive integer, got {value!r}")


def _check_act(where: str, act: str) -> None:
    _check(act in ACTIVATIONS or act == "none", where, f"unknown activation {act!r}")


def _build_block(block: BlockSpec, in_chs: int, where: str, drop_path: float, dd: dict[str, Any]) -> nn.Module:
    """Validate one block against its input channels and build it (``drop_path``: its stochastic depth rate,
    used by residual blocks; ``dd``: the tensors' device and dtype)."""
    _check_act(where, block.act)
    if isinstance(block, ConvSpec):
        _check_positive(where, out=block.out, kernel=block.kernel, stride=block.stride, groups=block.groups)
        _check(block.kernel % 2 == 1, where, f"kernel must be odd, got {block.kernel}")
        _check(
            in_chs % block.groups == 0 and block.out % block.groups == 0,
            where,
            f"groups={block.groups} must divide both input channels {in_chs} and out={block.out}",
        )
        return ConvNormAct(in_chs, block.out, block.kernel, block.stride, block.groups, block.act, **dd)
    if isinstance(block, VACSpec):
        _check_positive(
            where, mid=block.mid, pool=block.pool, embed_kernel=block.embed_kernel, embed_groups=block.embed_groups
        )
        _check(block.embed_kernel % 2 == 1, where, f"embed_kernel must be odd, got {block.embed_kernel}")
        _check(
            block.attention != "condenser" or block.mid % block.embed_groups == 0,
            where,
            f"mid={block.mid} is not divisible by embed_groups={block.embed_groups}",
        )
        _check(block.scale in ("channel", "scalar"), where, f"scale must be 'channel' or 'scalar', got {block.scale!r}")
        _check(block.attention in ATTENTIONS, where, f"attention must be one of {ATTENTIONS}, got {block.attention!r}")
        return VisualAttentionCondenser(
            in_chs,
            block.mid,
            pool_size=block.pool,
            embed_kernel=block.embed_kernel,
            embed_groups=block.embed_groups,
            scale=block.scale,
            act=block.act,
            residual=block.residual,
            drop_path=drop_path,
            attention=block.attention,
            **dd,
        )
    if isinstance(block, PEPESpec):
        _check_positive(
            where,
            proj=block.proj,
            mult=block.mult,
            proj2=block.proj2,
            out=block.out,
            kernel=block.kernel,
            stride=block.stride,
        )
        _check(block.kernel % 2 == 1, where, f"kernel must be odd, got {block.kernel}")
        return PEPE(
            in_chs, block.proj, block.mult, block.proj2, block.out, block.kernel, block.stride, block.act,
            drop_path=drop_path, **dd,
        )
    raise SpecError(f"{where}: unknown block spec {type(block).__name__}")


POOL_TYPES = ("avg", "max", "")
WEIGHT_INITS = ("torch", "kaiming")


def _check_pool(global_pool: str) -> None:
    if global_pool not in POOL_TYPES:
        raise AttendNetsError(f"global_pool must be 'avg', 'max' or '' (no pooling), got {global_pool!r}")


class AttendNet(nn.Module):
    """A network built from an :class:`ArchSpec`, with timm's model API.

    ``forward_features``: ``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)`` (for the presets);
    ``forward_head``: global pooling, hidden fully-connected layers, classifier.
    ``forward``: ``(N, in_chans, H, W) -> (N, num_classes)`` logits.

    Args:
        spec: the architecture; its blocks are checked and built in order (a bad one raises
            :class:`~attendnets.spec.SpecError` naming it).
        num_classes: classifier outputs; ``None`` keeps ``spec.num_classes``, 0 leaves the classifier out.
        in_chans: input image channels; ``None`` keeps ``spec.in_chans``.
        drop_rate: dropout before the classifier (and after each hidden fully-connected layer); ``None``
            keeps ``spec.head.dropout``.
        drop_path_rate: stochastic depth of the residual condensers and PEPEs, rising linearly over the
            blocks from 0 at the first to ``drop_path_rate`` at the last (timm's schedule).
        global_pool: ``"avg"``, ``"max"``, or ``""`` for none: the head then runs at every position of the
            feature map, ``(N, C, H, W) -> (N, num_classes, H, W)``.
        zero_init_last: zero the last BN of each residual branch at initialisation (see the blocks'
            ``zero_init_last``), so that those blocks start as the identity. On by default: attendnet_b
            trained 2.9 points better with it on Imagenette (docs/results/zero_init.md).
        weight_init: ``"torch"`` (default) keeps each layer's own PyTorch default (Kaiming uniform with
            a=sqrt(5), fan-in); ``"kaiming"`` draws conv weights from Kaiming's normal (fan-out) and
            fully-connected ones from N(0, 0.01), as torchvision's MobileNets do. attendnet_b trained 1.5
            points better at 8 bits with PyTorch's default on Imagenette (2 seeds, docs/results/weight_init.md).
        device, dtype: where and how the tensors are created.
    """

    def __init__(
        self,
        spec: ArchSpec,
        num_classes: int | None = None,
        in_chans: int | None = None,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        zero_init_last: bool = True,
        weight_init: str = "torch",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check(weight_init in WEIGHT_INITS, "model", f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        dd = dict(device=device, dtype=dtype)
        self.spec = spec
        self.num_classes = spec.num_classes if num_classes is None else num_classes
        self.in_chans = spec.in_chans if in_chans is None else in_chans
        _check_positive("model", in_chans=self.in_chans)
        _check(
            isinstance(self.num_classes, int) and self.num_classes >= 0,
            "model",
            f"num_classes must be a non-negative integer, got {self.num_classes!r}",
        )
        _check(spec.img_size > 0, "spec", f"img_size must be positive, got {spec.img_size}")
        _check(0.0 <= drop_path_rate < 1.0, "model", f"drop_path_rate must be in [0, 1), got {drop_path_rate}")

        blocks: list[nn.Module] = []
        stages: list[tuple[int, int]] = []  # (channels, reduction) after each block
        chs, reduction, size = self.in_chans, 1, spec.img_size
        drop_path_rates = calculate_drop_path_rates(drop_path_rate, len(spec.blocks))
        for i, block in enumerate(spec.blocks):
            where = f"block {i} ({block.type})"
            blocks.append(_build_block(block, chs, where, drop_path_rates[i], dd))
            stride = getattr(block, "stride", 1)
            size, reduction, chs = math.ceil(size / stride), reduction * stride, block_out_chs(block, chs)
            pool = getattr(block, "pool", 1)
            _check(size >= pool, where, f"spatial size {size} at {spec.img_size}px input is below its pool size {pool}")
            stages.append((chs, reduction))
        # One feature map per resolution: the last block before each downsampling, and the last block.
        self.stage_ends = [i for i, (_, r) in enumerate(stages) if i == len(stages) - 1 or stages[i + 1][1] != r]
        self.feature_info = [
            dict(num_chs=stages[i][0], reduction=stages[i][1], module=f"blocks.{i}") for i in self.stage_ends
        ]
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chs
        self.grad_checkpointing = False
        self._build_head(spec.head, drop_rate, global_pool, dd)
        if weight_init == "kaiming":
            self._init_weights()
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (VisualAttentionCondenser, PEPE)):
                    m.zero_init_last()

    def _build_head(self, head: HeadSpec, drop_rate: float | None, global_pool: str, dd: dict[str, Any]) -> None:
        _check_act("head", head.act)
        _check(0.0 <= head.dropout < 1.0, "head", f"dropout must be in [0, 1), got {head.dropout}")
        self.drop_rate = head.dropout if drop_rate is None else drop_rate
        _check(0.0 <= self.drop_rate < 1.0, "model", f"drop_rate must be in [0, 1), got {self.drop_rate}")
        _check_pool(global_pool)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        hidden: list[nn.Module] = []
        width = self.num_features
        for j, units in enumerate(head.hidden):
            _check_positive(f"head hidden layer {j}", units=units)
            hidden += [nn.Linear(width, units, **dd), make_activation(head.act), nn.Dropout(self.drop_rate)]
            width = units
        if not hidden and self.drop_rate > 0:  # the dropout before the classifier, without hidden layers
            hidden.append(nn.Dropout(self.drop_rate))
        self.pre_logits = nn.Sequential(*hidden)
        self.head_hidden_size = width
        self.classifier = nn.Linear(width, self.num_classes, **dd) if self.num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups in timm's format (layer-wise learning rates): the first block as the stem, then
        one group per block, or per resolution (``coarse``); the head comes last."""
        if not coarse:
            return dict(stem=r"^blocks\.0\.", blocks=r"^blocks\.(\d+)\.")
        starts = [1] + [end + 1 for end in self.stage_ends[:-1]]
        stages = [
            (rf"^blocks\.(?:{'|'.join(map(str, range(start, end + 1)))})\.", (k,))
            for k, (start, end) in enumerate(zip(starts, self.stage_ends))
            if start <= end
        ]
        return dict(stem=r"^blocks\.0\.", blocks=stages)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The condensers' learned scales S, which timm's optimizer factory then leaves undecayed."""
        return {
            f"{name}.scale"
            for name, m in self.named_modules()
            if isinstance(m, VisualAttentionCondenser) and m.scale is not None
        }

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none), on the old one's device and dtype; ``global_pool``
        (``"avg"``, ``"max"``, ``""``) replaces the pooling, ``None`` keeps it."""
        dd = get_device_dtype(self.classifier if isinstance(self.classifier, nn.Linear) else self)
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            self.global_pool.train(self.training)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.classifier.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate features: the outputs of the ``feature_info`` blocks (one per resolution)
        that ``indices`` selects (``None``: all, ``n``: the last ``n``, a list: those, negative from the end),
        in block order, after the final features unless ``intermediates_only``. ``stop_early`` (with
        ``intermediates_only``) runs no block after the last selected one. ``norm`` is accepted and does
        nothing: an AttendNet has no final norm. Only ``output_fmt="NCHW"``."""
        if output_fmt != "NCHW":
            raise AttendNetsError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        if stop_early and not intermediates_only:
            raise AttendNetsError("stop_early needs intermediates_only=True")
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_blocks = {self.stage_ends[i] for i in take_indices}
        blocks = self.blocks[: self.stage_ends[max_index] + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if i in take_blocks:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last ``feature_info`` block that ``indices`` selects (as in
        :meth:`forward_intermediates`) and return the selected indices. With ``prune_head``, or when blocks
        were dropped (the head is sized for the last features), the head goes too: the model then outputs
        the unpooled map of its last block. ``prune_norm`` is accepted: there is no final norm."""
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        end = self.stage_ends[max_index] + 1
        if end < len(self.blocks) or prune_head:
            self.blocks = self.blocks[:end]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.pre_logits = nn.Sequential()
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        per_position = self.global_pool.is_identity()
        if per_position:  # no pooling: the fully-connected layers act on the channels at every position
            x = x.movedim(1, -1)
        x = self.pre_logits(x)
        if not pre_logits:
            x = self.classifier(x)
        return x.movedim(-1, 1) if per_position else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def spec_geometry(spec: ArchSpec, in_chans: int) -> tuple[str, int]:
    """``(first_conv, size)`` of a spec's network without building it: the name of its first conv module and
    the side of its final feature map at ``spec.img_size``."""
    first = _build_block(spec.blocks[0], in_chans, f"block 0 ({spec.blocks[0].type})", 0.0, dict(device="meta"))
    name = next(name for name, m in first.named_modules() if isinstance(m, nn.Conv2d))
    size = spec.img_size
    for block in spec.blocks:  # a stride below 1 is left to the builder to report, naming its block
        size = math.ceil(size / max(getattr(block, "stride", 1), 1))
    return f"blocks.0.{name}", size


def build_model(
    spec: ArchSpec | dict | str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    drop_rate: float | None = None,
    **kwargs: Any,
) -> AttendNet:
    """Build an :class:`AttendNet` from a spec object, a spec dict, or a JSON/YAML file path; ``kwargs`` are
    the other arguments of :class:`AttendNet` (``drop_path_rate``, ``zero_init_last``, ...)."""
    return AttendNet(ArchSpec.coerce(spec), num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs)
