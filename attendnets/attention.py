"""What the visual attention condensers attend to: the attention values of every condenser of a model.

A condenser multiplies its down-mixed features ``V'`` by ``sigmoid(A)`` after expansion (see
:class:`~attendnets.blocks.VisualAttentionCondenser`): one value in ``(0, 1)`` per channel of ``V'`` and
pixel of the condenser's resolution. :func:`condenser_attention` records those values with forward hooks
on each condenser's expansion while the model classifies the images, so they are exactly the values the
model used. A map is their mean over the channels (or over one channel group of the embedding's grouped
conv), still in ``(0, 1)``: near 1 the features pass, near 0 they are suppressed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attendnets.blocks import VisualAttentionCondenser
from attendnets.errors import AttendNetsError


@dataclass
class CondenserAttention:
    """The attention values of one condenser for a batch of images."""

    block: int  # index of the condenser in ``model.blocks``
    groups: int  # channel groups of its embedding (1: all channels form one group)
    values: torch.Tensor  # (N, mid_chs, H, W): sigmoid(A) after expansion

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.values.shape[-2:])

    def mean_map(self) -> torch.Tensor:
        """``(N, H, W)``: the mean over all channels."""
        return self.values.mean(1)

    def group_maps(self) -> torch.Tensor:
        """``(N, groups, H, W)``: the mean over the channels of each group of the embedding's grouped conv."""
        n, c, h, w = self.values.shape
        return self.values.reshape(n, self.groups, c // self.groups, h, w).mean(2)


def _condensers(model: nn.Module) -> list[tuple[int, VisualAttentionCondenser]]:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise AttendNetsError(f"{type(model).__name__} is not an AttendNet: it has no blocks to look into")
    found = [(i, b) for i, b in enumerate(blocks) if isinstance(b, VisualAttentionCondenser) and b.attention == "condenser"]
    if not found:
        raise AttendNetsError("this model has no visual attention condenser with spatial attention")
    return found


@contextmanager
def _recording(model: nn.Module) -> Iterator[tuple[list[tuple[int, VisualAttentionCondenser]], dict[int, torch.Tensor]]]:
    """Inside the block, every forward of ``model`` stores each condenser's attention values (its expansion's
    output) under the condenser's block index; the hooks are removed on leaving."""
    condensers = _condensers(model)
    recorded: dict[int, torch.Tensor] = {}
    hooks = [
        condenser.expand.register_forward_hook(
            lambda module, inputs, output, index=index: recorded.__setitem__(index, output)
        )
        for index, condenser in condensers
    ]
    try:
        yield condensers, recorded
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def condenser_attention(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[CondenserAttention]]:
    """Classify ``images`` ``(N, C, H, W)`` (preprocessed) with ``model`` in eval mode and record every
    condenser's attention values: ``(logits (N, classes), one CondenserAttention per condenser in order)``."""
    was_training = model.training
    try:
        with _recording(model) as (condensers, recorded):
            logits = model.eval()(images)
    finally:
        model.train(was_training)
    maps = [CondenserAttention(i, c.embed_grouped.conv.groups, recorded[i].float().cpu()) for i, c in condensers]
    return logits, maps


class WithAttentionOutputs(nn.Module):
    """``model`` whose forward also returns every condenser's attention values: ``images -> (logits,
    attention of the 1st condenser (N, mid, H, W), ...)``, for an exported graph with them as extra outputs.
    ``blocks``: the condensers' block indices, in output order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.blocks = [index for index, _ in _condensers(model)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with _recording(self.model) as (_, recorded):
            logits = self.model(images)
        return (logits, *(recorded[index] for index in self.blocks))


def map_statistics(values: torch.Tensor) -> dict[str, float]:
    """Mean, spread (standard deviation) and share of pixels above 0.5 of one attention map ``(H, W)``."""
    values = values.double()
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False)),
            "share_above_half": float((values > 0.5).double().mean())}


def attention_summary(maps: list[CondenserAttention], image: int) -> list[dict[str, Any]]:
    """JSON-ready statistics of image ``image``'s maps: per condenser, its mean map and each group's map."""
    return [
        {
            "block": m.block,
            "resolution": list(m.resolution),
            "channels": m.values.shape[1],
            "groups": m.groups,
            "mean_map": map_statistics(m.mean_map()[image]),
            "group_maps": [map_statistics(g) for g in m.group_maps()[image]],
        }
        for m in maps
    ]
