"""A model rewritten for a runtime with the same math: the walker over the blocks' deployment forms.

Each block owns its forms (:meth:`~attendnets.blocks.VisualAttentionCondenser.runtime_form` and the like, see
:mod:`attendnets.blocks`); :func:`for_runtime` only walks. Along an :class:`~attendnets.model.AttendNet`'s
block sequence it also carries channel orders: a form whose output channels come out permuted (a tiled
depthwise expansion) hands the order to the next blocks, which read their input in it, until one absorbs it
(a dense conv, a block without residual, or the head's first fully-connected layer). So no runtime ever sees
a layout op for it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from attendnets.blocks import PEPE, ConvNormAct, Target, VisualAttentionCondenser
from attendnets.complexity import Complexity, profile_model
from attendnets.model import AttendNet

__all__ = ["Target", "for_runtime", "RepeatedDepthwise", "profile_for_micro"]


class RepeatedDepthwise(nn.Module):
    """A bare ``Conv2d(c, m*c, groups=c)`` outside an AttendNet's block sequence (a user's own network), for
    ONNX Runtime: each input channel repeated ``m`` times in place, then a plain depthwise conv with the same
    weight. Exact, but it costs layout ops; inside an AttendNet :class:`~attendnets.blocks.TiledDepthwise`
    is used instead."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.mult = conv.out_channels // conv.in_channels
        self.conv = nn.Conv2d(
            conv.out_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            groups=conv.out_channels, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x.unsqueeze(2).expand(n, c, self.mult, h, w).reshape(n, c * self.mult, h, w))


class ChannelGather(nn.Module):
    """Puts permuted channels back in order (``x[:, inverse]``): the last resort when nothing after a
    permuting form can absorb its order (a features-only model)."""

    def __init__(self, order: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inverse", torch.argsort(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.inverse)


def _block_form(block: nn.Module, target: Target) -> tuple[nn.Module, torch.Tensor | None]:
    if isinstance(block, (VisualAttentionCondenser, PEPE)):
        return block.runtime_form(target), None
    if isinstance(block, ConvNormAct):
        return block.runtime_form(target)
    return block, None


def _rewrite_sequence(blocks: nn.Sequential, target: Target) -> torch.Tensor | None:
    """Replace each block of ``blocks`` by its form, in place; returns the channel order left at the end."""
    order = None
    for index, block in enumerate(blocks):
        if order is not None:
            order = block.permute_input(order)
        form, form_order = _block_form(block, target)
        if form_order is not None:  # channel k of the form is channel form_order[k] of the block
            order = form_order if order is None else order[form_order]
        blocks[index] = form
    return order


def _absorb_in_head(model: AttendNet, order: torch.Tensor) -> None:
    """Let the head's first fully-connected layer read the pooled features in ``order`` (global pooling keeps
    channels apart), or restore the order after the features when there is none."""
    first = next((m for m in (*model.pre_logits, model.classifier) if isinstance(m, nn.Linear)), None)
    if first is None:
        model.blocks.append(ChannelGather(order))
        return
    with torch.no_grad():
        first.weight.copy_(first.weight[:, order])


def for_runtime(model: nn.Module, target: Target | str = Target.ORT) -> nn.Module:
    """A copy of ``model`` with every block in its form for ``target`` (the same function; ``model`` is not
    changed). Works on a single block, an :class:`~attendnets.model.AttendNet` and any network that contains
    our blocks; other modules are kept, except that for ONNX Runtime a bare depthwise conv with a channel
    multiplier becomes :class:`RepeatedDepthwise`."""
    target = Target(target)
    form, order = _block_form(model, target)
    if form is not model:
        if order is not None:
            form = nn.Sequential(form, ChannelGather(order))
        return form
    model = copy.deepcopy(model)
    done: list[str] = []  # modules already in their form: not walked into again
    if isinstance(model, AttendNet):
        order = _rewrite_sequence(model.blocks, target)
        if order is not None:
            _absorb_in_head(model, order)
        done.append("blocks")
    for name, module in list(model.named_modules()):
        if not name or any(name == d or name.startswith(d + ".") for d in done):
            continue
        form, order = _block_form(module, target)
        if form is not module:
            model.set_submodule(name, form if order is None else nn.Sequential(form, ChannelGather(order)))
            done.append(name)
        elif target is Target.ORT and isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1 \
                and module.out_channels > module.in_channels:
            model.set_submodule(name, RepeatedDepthwise(module))
    return model


def profile_for_micro(model: nn.Module, img_size: int | tuple[int, int]) -> Complexity:
    """:func:`~attendnets.complexity.profile_model` of ``model`` with its TFLite Micro arena figures, taken
    from the form it is exported in for that runtime."""
    return profile_model(model, img_size, micro_form=for_runtime(model, Target.MICRO))
