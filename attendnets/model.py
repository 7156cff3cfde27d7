"""The one builder that turns an :class:`~attendnets.spec.ArchSpec` into an :class:`AttendNet`.

Presets, search results and user designs all come through :func:`build_model`, which checks every
block before building it so that a bad spec fails with a message naming the block, never deep in torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attendnets.blocks import ACTIVATIONS, PEPE, ConvNormAct, VisualAttentionCondenser, make_activation
from attendnets.errors import AttendNetsError
from attendnets.spec import ArchSpec, BlockSpec, ConvSpec, PEPESpec, SpecError, VACSpec, block_out_chs


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise SpecError(f"{where}: {message}")


def _check_positive(where: str, **values: int) -> None:
    for name, value in values.items():
        _check(isinstance(value, int) and value > 0, where, f"{name} must be a positive integer, got {value!r}")


def _check_act(where: str, act: str) -> None:
    _check(act in ACTIVATIONS or act == "none", where, f"unknown activation {act!r}")


def _build_block(block: BlockSpec, in_chs: int, where: str) -> nn.Module:
    """Validate one block against its input channels and build it."""
    _check_act(where, block.act)
    if isinstance(block, ConvSpec):
        _check_positive(where, out=block.out, kernel=block.kernel, stride=block.stride, groups=block.groups)
        _check(block.kernel % 2 == 1, where, f"kernel must be odd, got {block.kernel}")
        _check(
            in_chs % block.groups == 0 and block.out % block.groups == 0,
            where,
            f"groups={block.groups} must divide both input channels {in_chs} and out={block.out}",
        )
        return ConvNormAct(in_chs, block.out, block.kernel, block.stride, block.groups, block.act)
    if isinstance(block, VACSpec):
        _check_positive(
            where, mid=block.mid, pool=block.pool, embed_kernel=block.embed_kernel, embed_groups=block.embed_groups
        )
        _check(block.embed_kernel % 2 == 1, where, f"embed_kernel must be odd, got {block.embed_kernel}")
        _check(
            block.mid % block.embed_groups == 0,
            where,
            f"mid={block.mid} is not divisible by embed_groups={block.embed_groups}",
        )
        _check(block.scale in ("channel", "scalar"), where, f"scale must be 'channel' or 'scalar', got {block.scale!r}")
        return VisualAttentionCondenser(
            in_chs,
            block.mid,
            pool_size=block.pool,
            embed_kernel=block.embed_kernel,
            embed_groups=block.embed_groups,
            scale=block.scale,
            act=block.act,
            residual=block.residual,
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
        return PEPE(in_chs, block.proj, block.mult, block.proj2, block.out, block.kernel, block.stride, block.act)
    raise SpecError(f"{where}: unknown block spec {type(block).__name__}")


class AttendNet(nn.Module):
    """A network built from an :class:`ArchSpec`, with timm's model API.

    ``forward_features``: ``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)`` (for the presets);
    ``forward_head``: global average pool, hidden fully-connected layers, classifier.
    ``forward``: ``(N, in_chans, H, W) -> (N, num_classes)`` logits.

    Args:
        spec: the architecture; its blocks are checked and built in order (a bad one raises
            :class:`~attendnets.spec.SpecError` naming it).
        num_classes: classifier outputs; ``None`` keeps ``spec.num_classes``.
        in_chans: input image channels; ``None`` keeps ``spec.in_chans``.
        drop_rate: dropout after each hidden fully-connected layer; ``None`` keeps ``spec.head.dropout``.
    """

    def __init__(
        self,
        spec: ArchSpec,
        num_classes: int | None = None,
        in_chans: int | None = None,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes if num_classes is None else num_classes
        self.in_chans = spec.in_chans if in_chans is None else in_chans
        _check_positive("model", num_classes=self.num_classes, in_chans=self.in_chans)
        _check(spec.img_size > 0, "spec", f"img_size must be positive, got {spec.img_size}")

        blocks: list[nn.Module] = []
        stages: list[tuple[int, int]] = []  # (channels, reduction) after each block
        chs, reduction, size = self.in_chans, 1, spec.img_size
        for i, block in enumerate(spec.blocks):
            where = f"block {i} ({block.type})"
            blocks.append(_build_block(block, chs, where))
            stride = getattr(block, "stride", 1)
            size, reduction, chs = math.ceil(size / stride), reduction * stride, block_out_chs(block, chs)
            pool = getattr(block, "pool", 1)
            _check(size >= pool, where, f"spatial size {size} at {spec.img_size}px input is below its pool size {pool}")
            stages.append((chs, reduction))
        # One feature map per resolution: the last block before each downsampling, and the last block.
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f"blocks.{i}")
            for i, (c, r) in enumerate(stages)
            if i == len(stages) - 1 or stages[i + 1][1] != r
        ]
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chs

        head = spec.head
        _check_act("head", head.act)
        _check(0.0 <= head.dropout < 1.0, "head", f"dropout must be in [0, 1), got {head.dropout}")
        self.drop_rate = head.dropout if drop_rate is None else drop_rate
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        hidden: list[nn.Module] = []
        width = chs
        for j, units in enumerate(head.hidden):
            _check_positive(f"head hidden layer {j}", units=units)
            hidden += [nn.Linear(width, units), make_activation(head.act), nn.Dropout(self.drop_rate)]
            width = units
        self.pre_logits = nn.Sequential(*hidden)
        self.head_hidden_size = width
        self.classifier = nn.Linear(width, self.num_classes)
        self._init_weights()

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

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 gives an identity)."""
        if global_pool not in (None, "avg"):
            raise AttendNetsError(f"AttendNet only supports average pooling, got {global_pool!r}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(
    spec: ArchSpec | dict | str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    drop_rate: float | None = None,
) -> AttendNet:
    """Build an :class:`AttendNet` from a spec object, a spec dict, or a JSON/YAML file path."""
    return AttendNet(ArchSpec.coerce(spec), num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
