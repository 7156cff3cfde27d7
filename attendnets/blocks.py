"""Building blocks of AttendNets: the visual attention condenser, the PEPE module and plain conv layers.

Every block takes an ``NCHW`` tensor and returns one. Choices that the paper leaves open are constructor
arguments with documented defaults (see ``shared/paper/notes.md`` in the project for their provenance):
they are plausible reconstructions, not the authors' published design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
}


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name; ``None`` or ``"none"`` gives the identity."""
    if name is None or name == "none":
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)} or 'none'")
    return ACTIVATIONS[name](inplace=True)


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; padding keeps ``ceil(H / stride)``.

    Covers the plain layers of the AttendNets: spatial convs (``kernel_size`` > 1), pointwise convs
    (``kernel_size`` = 1) and depthwise convs (``groups`` = ``in_chs``; ``out_chs`` a multiple of it
    for a depthwise *expansion*). Shapes: ``(N, in_chs, H, W) -> (N, out_chs, ceil(H/s), ceil(W/s))``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        norm: bool = True,
    ) -> None:
        conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=not norm
        )
        super().__init__(conv, nn.BatchNorm2d(out_chs) if norm else nn.Identity(), make_activation(act))


class VisualAttentionCondenser(nn.Module):
    """Visual attention condenser (VAC): condensed spatial-channel self-attention with channel mixing.

    With ``V`` of shape ``(N, C, H, W)`` and ``p = pool_size``::

        V'   = M(V)            down-mixing: 1x1 conv C -> mid_chs, BN, act      (N, mid, H, W)
        Q    = C(V')           condensation: max pool p x p, stride p (ceil)  (N, mid, H/p, W/p)
        K    = E(Q)            embedding: k x k grouped conv, BN, act, then 1x1 conv
        A    = X(K)            expansion: nearest unpooling back to (H, W)      (N, mid, H, W)
        V''  = V' * sigmoid(A) * S                 selective attention, S learned
        V''' = M'(V'')         up-mixing: 1x1 conv mid_chs -> C, BN           (N, C, H, W)
        out  = V + V'''        when ``residual`` (so the block can start near identity)

    The sigmoid is applied before the expansion: nearest unpooling only copies values, so the result is
    identical while the sigmoid runs on ``p*p`` times fewer elements. Odd ``H``/``W`` work: pooling rounds
    up and the unpooled map is cropped back to ``(H, W)``.

    Args:
        chs: input and output channels ``C``.
        mid_chs: channels after down-mixing (``C'``); must be divisible by ``embed_groups``.
        pool_size: condensation window and stride ``p`` (2 in most attention-condenser ports).
        embed_kernel: kernel of the embedding's grouped conv (odd).
        embed_groups: groups of the embedding's grouped conv (``mid_chs`` gives a depthwise conv).
        scale: ``"channel"`` for one learned S per channel of ``V'``, ``"scalar"`` for a single S.
        act: activation after the down-mixing and the grouped embedding conv.
        residual: add the input to the output.
    """

    def __init__(
        self,
        chs: int,
        mid_chs: int,
        pool_size: int = 2,
        embed_kernel: int = 3,
        embed_groups: int = 4,
        scale: str = "channel",
        act: str | None = "relu",
        residual: bool = True,
    ) -> None:
        super().__init__()
        if scale not in ("channel", "scalar"):
            raise ValueError(f"scale must be 'channel' or 'scalar', got {scale!r}")
        self.pool_size = pool_size
        self.residual = residual
        self.down_mix = ConvNormAct(chs, mid_chs, 1, act=act)
        self.condense = nn.MaxPool2d(pool_size, pool_size, ceil_mode=True)
        self.embed = nn.Sequential(
            ConvNormAct(mid_chs, mid_chs, embed_kernel, groups=embed_groups, act=act),
            nn.Conv2d(mid_chs, mid_chs, 1),
        )
        self.scale = nn.Parameter(torch.ones(1, mid_chs if scale == "channel" else 1, 1, 1))
        self.up_mix = ConvNormAct(mid_chs, chs, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.down_mix(x)
        attention = torch.sigmoid(self.embed(self.condense(v)))
        attention = F.interpolate(attention, scale_factor=float(self.pool_size), mode="nearest")
        height, width = v.shape[-2:]
        if attention.shape[-2] != height or attention.shape[-1] != width:
            attention = attention[..., :height, :width]
        out = self.up_mix(v * attention * self.scale)
        return x + out if self.residual else out


class PEPE(nn.Module):
    """Projection-expansion-projection-expansion module.

    ``(N, in_chs, H, W) -> (N, out_chs, ceil(H/s), ceil(W/s))``::

        1x1 conv in_chs -> proj_chs, BN, act                          pointwise projection
        k x k depthwise conv proj_chs -> proj_chs * mult, stride s, BN, act   depthwise expansion
        1x1 conv -> proj2_chs, BN                                     pointwise projection (linear)
        1x1 conv -> out_chs, BN, act                                  pointwise expansion

    The input is added to the output when ``stride == 1`` and ``in_chs == out_chs``.
    """

    def __init__(
        self,
        in_chs: int,
        proj_chs: int,
        mult: int,
        proj2_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__()
        self.project = ConvNormAct(in_chs, proj_chs, 1, act=act)
        self.expand_dw = ConvNormAct(
            proj_chs, proj_chs * mult, kernel_size, stride, groups=proj_chs, act=act
        )
        self.project2 = ConvNormAct(proj_chs * mult, proj2_chs, 1, act=None)
        self.expand_pw = ConvNormAct(proj2_chs, out_chs, 1, act=act)
        self.residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_pw(self.project2(self.expand_dw(self.project(x))))
        return x + out if self.residual else out
