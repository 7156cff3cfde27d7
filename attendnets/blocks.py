"""Building blocks of AttendNets: the visual attention condenser, the PEPE module and plain conv layers.

Every block takes an ``NCHW`` tensor and returns one. Choices that the paper leaves open are constructor
arguments with documented defaults (see ``shared/paper/notes.md`` in the project for their provenance):
they are plausible reconstructions, not the authors' published design.

Each block also knows its *deployment forms* (as timm's reparameterizable blocks do): ``runtime_form(target)``
returns a copy that computes the same function written the way a runtime's kernels are fast at, and
``permute_input(order)`` makes a block read its input channels in another order (so that a form whose
output channels come out permuted needs no layout op). :func:`attendnets.export.forms.for_runtime` walks a
model and applies them; the measurements behind each choice are in ``docs/results/deploy.md``.

Annotations are evaluated here (no ``from __future__ import annotations``): ``torch.fx`` copies a traced
forward's annotations into the code it generates, and TorchScript cannot compile them as strings.
"""

import copy
import enum

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SqueezeExcite
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
}

# What a condenser multiplies V' by: its condensed spatial attention (the paper's), nothing (the ablation
# V'' = V' * S), or squeeze-excite channel attention (timm's block, reducing to a quarter of V''s channels).
ATTENTIONS = ("condenser", "none", "se")

# A grouped conv made dense does ``groups`` times its multiply-adds: a win in ONNX Runtime int8 measured at 4.
MAX_DENSE_GROUPS = 4


class Target(str, enum.Enum):
    """The runtime a deployment form is written for."""

    ORT = "onnxruntime"  # x86 int8 kernels: channels-last, fast plain depthwise and dense convs
    XNNPACK = "xnnpack"  # LiteRT and ExecuTorch on CPUs: delegates convs, not nearest resizing
    MICRO = "tflite-micro"  # reference kernels on a microcontroller: multiply-adds and arena bytes are time


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name; ``None`` or ``"none"`` gives the identity."""
    if name is None or name == "none":
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)} or 'none'")
    return ACTIVATIONS[name](inplace=True)


def dense_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A grouped conv as a dense one whose weight is block-diagonal (zero across groups): the same result."""
    dense = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    with torch.no_grad():
        dense.weight.zero_()
        for g in range(conv.groups):
            rows, cols = slice(g * per_out, (g + 1) * per_out), slice(g * per_in, (g + 1) * per_in)
            dense.weight[rows, cols] = conv.weight[rows]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
    return dense


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; padding keeps ``ceil(H / stride)``.

    Covers the plain layers of the AttendNets: spatial convs (``kernel_size`` > 1), pointwise convs
    (``kernel_size`` = 1) and depthwise convs (``groups`` = ``in_chs``; ``out_chs`` a multiple of it
    for a depthwise *expansion*). Shapes: ``(N, in_chs, H, W) -> (N, out_chs, ceil(H/s), ceil(W/s))``.
    ``device``/``dtype``: where and how its tensors are created (torch's factory arguments).
    """

    __jit_unused_properties__ = ["conv", "norm", "multiplier"]  # Python-side accessors, not compiled

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        norm: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd = dict(device=device, dtype=dtype)
        conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=not norm, **dd
        )
        super().__init__(conv, nn.BatchNorm2d(out_chs, **dd) if norm else nn.Identity(), make_activation(act))

    # The layers keep their positions (state-dict keys ``0.weight``, ``1.running_mean``, ...); these names are
    # the only code that knows them.
    @property
    def conv(self) -> nn.Conv2d:
        """The conv layer."""
        return self[0]

    @property
    def norm(self) -> nn.Module:
        """The ``BatchNorm2d`` after the conv (``nn.Identity`` when built with ``norm=False``)."""
        return self[1]

    def replace_conv(self, conv: nn.Conv2d) -> None:
        """Put ``conv`` in place of the conv layer (same state-dict keys). A method, not a property setter:
        ``nn.Module.__setattr__`` would register an assigned module as a new child ``conv``."""
        self[0] = conv

    @property
    def multiplier(self) -> int:
        """Output channels per input channel of a depthwise conv (> 1: a depthwise expansion); 0 otherwise."""
        conv = self.conv
        return conv.out_channels // conv.in_channels if conv.groups == conv.in_channels > 1 else 0

    def permute_output(self, order: torch.Tensor) -> None:
        """Output channel ``k`` becomes the former channel ``order[k]`` (conv rows, bias and BN together)."""
        conv, norm = self.conv, self.norm
        with torch.no_grad():
            conv.weight.copy_(conv.weight[order])
            if conv.bias is not None:
                conv.bias.copy_(conv.bias[order])
            if isinstance(norm, nn.BatchNorm2d):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, name).copy_(getattr(norm, name)[order])

    def permute_input(self, order: torch.Tensor) -> torch.Tensor | None:
        """Read input channel ``k`` as the former channel ``order[k]``. A dense conv absorbs the permutation
        (returns ``None``); a depthwise conv passes it on to its output channels (returns their order); a
        grouped conv is made dense first (exact, ``groups`` times its multiply-adds)."""
        conv = self.conv
        if 1 < conv.groups < conv.in_channels:
            conv = dense_conv(conv)
            self.replace_conv(conv)
        if conv.groups == 1:
            with torch.no_grad():
                conv.weight.copy_(conv.weight[:, order])
            return None
        mult = conv.out_channels // conv.in_channels  # depthwise: output i*m+t reads input i
        out_order = (order[:, None] * mult + torch.arange(mult)).reshape(-1)
        self.permute_output(out_order)
        return out_order

    def runtime_form(self, target: Target) -> tuple[nn.Module, torch.Tensor | None]:
        """``(form, order)``: in ONNX Runtime a depthwise expansion becomes :class:`TiledDepthwise` (its
        output channels in ``order``, which the next block must absorb); otherwise the layer itself."""
        if target is Target.ORT and self.multiplier > 1:
            tiled = TiledDepthwise(self)
            return tiled, tiled.order
        return self, None


class TiledDepthwise(nn.Module):
    """A depthwise expansion ``(c -> m*c, groups=c)`` as its input tiled ``m`` times (``cat([x] * m)``, one
    Concat) and a plain depthwise conv: a conv with a channel multiplier falls off ONNX Runtime's fast int8
    depthwise kernel (a 6.4x slower network), repeating each channel in place costs layout ops. Output
    channel ``t*c + i`` is the expansion's channel ``order[t*c + i] = i*m + t``."""

    def __init__(self, layer: ConvNormAct) -> None:
        super().__init__()
        conv = layer.conv
        channels, self.mult = conv.in_channels, layer.multiplier
        self.order = torch.arange(conv.out_channels).reshape(channels, self.mult).t().reshape(-1)
        self.layer = copy.deepcopy(layer)
        self.layer.replace_conv(nn.Conv2d(
            conv.out_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            groups=conv.out_channels, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        ))
        self.layer.conv.load_state_dict(conv.state_dict())
        self.layer.permute_output(self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.cat([x] * self.mult, dim=1))


def _crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` cut to the spatial size of ``like`` (pooling rounded up, so unpooling may overshoot). A leaf for
    ``torch.fx`` symbolic tracing (it branches on shapes), as timm's ``register_notrace_function`` does."""
    height, width = like.shape[-2:]
    if x.shape[-2] != height or x.shape[-1] != width:
        x = x[..., :height, :width]
    return x


torch.fx.wrap("_crop")


class NearestExpand(nn.Module):
    """The condenser's expansion ``X``: nearest unpooling by ``factor``, cropped to the size of ``like``.
    ``(N, C, ceil(H/p), ceil(W/p)) -> (N, C, H, W)``."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _crop(F.interpolate(x, scale_factor=float(self.factor), mode="nearest"), like)


class TransposedConvExpand(nn.Module):
    """:class:`NearestExpand` as a transposed conv with stride ``p`` and a fixed ``p x p`` identity kernel
    (``kernel[i, o] = 1`` where ``i == o``): the same values, but XNNPACK delegates it, where nearest resizing
    stays outside and splits the graph. Dense, not depthwise: TFLite's transposed conv has no groups (a
    grouped one is split into a slice and a conv per channel). It costs ``C`` multiply-adds per output
    value. The kernel is a buffer, so exporters see a constant."""

    def __init__(self, chs: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        kernel = torch.eye(chs).reshape(chs, chs, 1, 1).expand(chs, chs, factor, factor)
        self.register_buffer("kernel", kernel.contiguous())

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _crop(F.conv_transpose2d(x, self.kernel, stride=self.factor), like)


class VisualAttentionCondenser(nn.Module):
    """Visual attention condenser (VAC): condensed spatial-channel self-attention with channel mixing.

    With ``V`` of shape ``(N, C, H, W)`` and ``p = pool_size``::

        V'   = M(V)            down-mixing: 1x1 conv C -> mid_chs, BN, act      (N, mid, H, W)
        Q    = C(V')           condensation: max pool p x p, stride p (ceil)  (N, mid, H/p, W/p)
        K    = E(Q)            embedding: k x k grouped conv, BN, act, then 1x1 conv
        A    = X(K)            expansion: nearest unpooling back to (H, W)      (N, mid, H, W)
        V''  = V' * sigmoid(A) * S                 selective attention, S learned
        V''' = M'(V'')         up-mixing: 1x1 conv mid_chs -> C, BN           (N, C, H, W)
        out  = V + D(V''')     when ``residual`` (AttendNet starts it as the identity), D: stochastic depth

    ``attention`` other than ``"condenser"`` replaces the attention values ``sigmoid(A)`` for ablations:
    ``"none"`` drops them (``V'' = V' * S``: no condensation, embedding or expansion), ``"se"`` takes them
    from timm's squeeze-excite block on ``V'`` (global average pool, 1x1 conv to ``mid_chs // 4``, ReLU, 1x1
    conv, sigmoid): channel attention in place of spatial attention.

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
        drop_path: stochastic depth rate of the residual branch (timm's ``DropPath``; unused without residual).
        attention: one of :data:`ATTENTIONS` (above); the embedding arguments matter only for ``"condenser"``.
        device, dtype: where and how its tensors are created.
    """

    __jit_unused_properties__ = ["embed_grouped"]

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
        drop_path: float = 0.0,
        attention: str = "condenser",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if scale not in ("channel", "scalar"):
            raise ValueError(f"scale must be 'channel' or 'scalar', got {scale!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        dd = dict(device=device, dtype=dtype)
        self.pool_size = pool_size
        self.residual = residual
        self.attention = attention
        self.down_mix = ConvNormAct(chs, mid_chs, 1, act=act, **dd)
        # Unused parts are None (not absent), so that TorchScript drops the branches that would call them.
        self.condense: nn.Module | None = None
        self.embed: nn.Module | None = None
        self.expand: nn.Module | None = None
        self.se: nn.Module | None = None
        if attention == "condenser":
            self.condense = nn.MaxPool2d(pool_size, pool_size, ceil_mode=True)
            self.embed = nn.Sequential(
                ConvNormAct(mid_chs, mid_chs, embed_kernel, groups=embed_groups, act=act, **dd),
                nn.Conv2d(mid_chs, mid_chs, 1, **dd),
            )
            self.expand = NearestExpand(pool_size)
        elif attention == "se":
            self.se = SqueezeExcite(mid_chs, rd_channels=max(1, mid_chs // 4), **dd)
        self.scale: nn.Parameter | None = nn.Parameter(
            torch.ones(1, mid_chs if scale == "channel" else 1, 1, 1, **dd)
        )
        self.up_mix = ConvNormAct(mid_chs, chs, 1, act=None, **dd)
        self.drop_path = DropPath(drop_path) if residual and drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the up-mixing BN's weight of a residual condenser, so that it starts as the identity (timm's
        ``zero_init_last``); a condenser without residual is left as it is (it would output zeros)."""
        if self.residual:
            nn.init.zeros_(self.up_mix.norm.weight)

    @property
    def embed_grouped(self) -> ConvNormAct:
        """The embedding's ``k x k`` grouped conv layer (its first, state-dict key ``embed.0``)."""
        if self.embed is None:
            raise AttributeError(f"a condenser with attention={self.attention!r} has no embedding")
        return self.embed[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.down_mix(x)
        if self.embed is not None and self.condense is not None and self.expand is not None:
            selected = v * self.expand(torch.sigmoid(self.embed(self.condense(v))), v)
        elif self.se is not None:
            selected = self.se(v)
        else:
            selected = v
        if self.scale is not None:  # None once folded into the up-mixing conv (a deployment form)
            selected = selected * self.scale
        out = self.up_mix(selected)
        return x + self.drop_path(out) if self.residual else out

    def permute_input(self, order: torch.Tensor) -> torch.Tensor | None:
        """Read input channel ``k`` as the former channel ``order[k]``; with the residual the output keeps
        that order (returned), without it the up-mixing conv writes the original order (``None``)."""
        self.down_mix.permute_input(order)
        if not self.residual:
            return None
        self.up_mix.permute_output(order)
        return order

    def runtime_form(self, target: Target) -> "VisualAttentionCondenser":
        """A copy with the same math for ``target``: ``S`` folded into the up-mixing conv's input columns
        (``M'(V * S) = M'_S(V)``; a broadcast per-channel multiply is slow in int8) everywhere; in ONNX
        Runtime an embedding conv of at most :data:`MAX_DENSE_GROUPS` groups made dense (tiny groups are
        slow in its int8 kernels); for XNNPACK the expansion as :class:`TransposedConvExpand`."""
        form = copy.deepcopy(self)
        if form.scale is not None:
            with torch.no_grad():
                form.up_mix.conv.weight.mul_(form.scale.reshape(1, -1, 1, 1))
            form.scale = None
        if self.attention != "condenser":
            return form
        grouped = form.embed_grouped.conv
        if target is Target.ORT and 1 < grouped.groups <= MAX_DENSE_GROUPS and grouped.groups < grouped.in_channels:
            form.embed_grouped.replace_conv(dense_conv(grouped))
        if target is Target.XNNPACK:
            form.expand = TransposedConvExpand(grouped.out_channels, self.pool_size)
        return form


class PEPE(nn.Module):
    """Projection-expansion-projection-expansion module.

    ``(N, in_chs, H, W) -> (N, out_chs, ceil(H/s), ceil(W/s))``::

        1x1 conv in_chs -> proj_chs, BN, act                          pointwise projection
        k x k depthwise conv proj_chs -> proj_chs * mult, stride s, BN, act   depthwise expansion
        1x1 conv -> proj2_chs, BN                                     pointwise projection (linear)
        1x1 conv -> out_chs, BN, act                                  pointwise expansion

    The input is added to the output when ``stride == 1`` and ``in_chs == out_chs`` (through stochastic depth
    when ``drop_path`` > 0).

    Args:
        in_chs: input channels.
        proj_chs: channels after the first pointwise projection.
        mult: channel multiplier of the depthwise expansion (``proj_chs * mult`` channels after it).
        proj2_chs: channels after the second, linear projection.
        out_chs: output channels, after the pointwise expansion.
        kernel_size: kernel of the depthwise conv (odd).
        stride: stride of the depthwise conv; the output is ``(ceil(H/s), ceil(W/s))``.
        act: activation after every layer but the second projection (``None`` or ``"none"``: identity).
        drop_path: stochastic depth rate of the residual branch (timm's ``DropPath``; unused without residual).
        device, dtype: where and how its tensors are created.
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
        drop_path: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.project = ConvNormAct(in_chs, proj_chs, 1, act=act, **dd)
        self.expand_dw = ConvNormAct(
            proj_chs, proj_chs * mult, kernel_size, stride, groups=proj_chs, act=act, **dd
        )
        self.project2 = ConvNormAct(proj_chs * mult, proj2_chs, 1, act=None, **dd)
        self.expand_pw = ConvNormAct(proj2_chs, out_chs, 1, act=act, **dd)
        self.residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.residual and drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the last BN's weight of a residual PEPE, so that it starts as the identity (timm's
        ``zero_init_last``). Not when a ReLU or ReLU6 follows that BN: the branch would then output exactly 0,
        where their gradient is 0, and never train; nor without residual."""
        if self.residual and not isinstance(self.expand_pw[2], (nn.ReLU, nn.ReLU6)):
            nn.init.zeros_(self.expand_pw.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_pw(self.project2(self.expand_dw(self.project(x))))
        return x + self.drop_path(out) if self.residual else out

    def permute_input(self, order: torch.Tensor) -> torch.Tensor | None:
        """Read input channel ``k`` as the former channel ``order[k]``; the output keeps that order with the
        residual (returned), else the original one (``None``)."""
        self.project.permute_input(order)
        if not self.residual:
            return None
        self.expand_pw.permute_output(order)
        return order

    def runtime_form(self, target: Target) -> "PEPE":
        """A copy with the same math for ``target``: in ONNX Runtime the depthwise expansion as
        :class:`TiledDepthwise`, whose channel order the second projection absorbs; elsewhere unchanged
        (LiteRT's and ExecuTorch's depthwise kernels take a channel multiplier)."""
        form = copy.deepcopy(self)
        layer, order = form.expand_dw.runtime_form(target)
        if order is not None:
            form.expand_dw = layer
            form.project2.permute_input(order)
        return form
