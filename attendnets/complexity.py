"""Complexity of any PyTorch image model: what Table 1 counts, and what it leaves out.

The model is traced once with :func:`torch.export.export` at batch 1 and its ATen graph is walked:

* **MACs** (multiply-adds) of convolutions and fully-connected layers, Table 1's convention:
  ``output elements x (in_channels / groups) x kernel area`` for a conv, ``out x in`` for a linear layer;
  biases are not counted.
* **Other operations**, by kind, so that nothing is hidden: pooling (one op per window element),
  resampling (one per output element), normalisation (one per element; a deployment runtime folds it
  into the conv), element-wise arithmetic and activations (one per output element), and data movement
  (elements copied by concatenation, padding or layout changes). Ops of no known kind are listed in
  ``unclassified`` rather than dropped.
* **Weight memory**: parameters (BN's scale and shift included, as in Table 1) at 4 bytes and at
  1 byte (the paper's 8-bit convention).
* **Peak activation memory** at batch 1: the largest total of activation tensors alive at once when the
  graph runs in order, each tensor freed after its last use. Views and in-place ops share their input's
  buffer, and an element-wise op (normalisation, activation, add, multiply) writes over an input of its
  own shape that dies there, as deployment runtimes do when they fold BN and fuse activations. The input
  image counts; weights do not (they live in flash).
* **TFLite Micro arena** of the int8 model, as that runtime lays it out: its activations (only BN and
  fused activations write in place; a conv whose zero padding is not TFLite's SAME padding reads an
  explicit padded copy of its input) placed by TFLite Micro's greedy memory planner, which leaves gaps
  that the peak above does not have, plus its persistent bookkeeping per tensor, op and output channel.

KB in this module means 1024 bytes, as microcontroller datasheets count flash and SRAM.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

POOLING = {"max_pool2d", "avg_pool2d", "max_pool2d_with_indices", "max_pool1d", "avg_pool1d"}
GLOBAL_POOLING = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "amax", "sum"}
RESAMPLING = {"upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
              "grid_sampler_2d", "max_unpool2d"}
NORMALIZATION = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "layer_norm",
                 "group_norm", "native_layer_norm", "native_group_norm"}
ELEMENTWISE = {"add", "sub", "mul", "div", "relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid",
               "silu", "gelu", "tanh", "clamp", "clamp_min", "clamp_max", "leaky_relu", "elu", "exp", "log",
               "sqrt", "rsqrt", "neg", "abs", "pow", "softmax", "_softmax", "log_softmax", "where", "maximum",
               "minimum", "erf", "mish", "addcmul"}
MOVEMENT = {"cat", "constant_pad_nd", "pad", "clone", "contiguous", "_to_copy", "copy", "repeat",
            "repeat_interleave", "stack", "roll", "index_select", "channel_shuffle", "pixel_shuffle"}
# Ops that return a view of their first argument (no new memory, no arithmetic).
VIEWS = {"view", "_unsafe_view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "t",
         "expand", "slice", "select", "narrow", "alias", "detach", "dropout", "feature_dropout", "identity",
         "unflatten", "split", "chunk", "split_with_sizes", "getitem", "_assert_tensor_metadata", "lift_fresh_copy"}
CONV = {"conv2d", "convolution", "conv1d", "_convolution", "conv_transpose2d"}
MATMUL = {"linear", "addmm", "mm", "matmul", "bmm", "baddbmm"}
OTHER_KINDS = ("pooling", "resampling", "normalization", "elementwise", "data_movement")


@dataclass
class Complexity:
    """Complexity figures of one model at one input size (batch 1)."""

    params: int
    macs: int
    other_ops: dict[str, int]
    weight_bytes_fp32: int
    weight_bytes_int8: int
    peak_activation_elements: int
    input_size: tuple[int, int, int]
    micro_arena_planned_bytes: int = 0
    micro_arena_persistent_bytes: int = 0
    per_block: dict[str, dict[str, int]] = field(default_factory=dict)
    unclassified: list[str] = field(default_factory=list)

    @property
    def peak_activation_bytes_fp32(self) -> int:
        return 4 * self.peak_activation_elements

    @property
    def peak_activation_bytes_int8(self) -> int:
        return self.peak_activation_elements

    @property
    def micro_arena_bytes(self) -> int:
        """TFLite Micro's tensor arena for the int8 model: planned activations plus persistent bookkeeping."""
        return self.micro_arena_planned_bytes + self.micro_arena_persistent_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["other_ops_total"] = sum(self.other_ops.values())
        out["peak_activation_bytes_fp32"] = self.peak_activation_bytes_fp32
        out["peak_activation_bytes_int8"] = self.peak_activation_bytes_int8
        out["micro_arena_bytes"] = self.micro_arena_bytes
        return out


def _op_name(target) -> str:
    """``aten.relu_.default`` -> ``relu_``; ``operator.getitem`` -> ``getitem``."""
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


def _numel(value) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 0


def _tensor_val(node):
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _count(name: str, node: torch.fx.Node) -> tuple[str, int] | None:
    """(kind, count) for one op: kind is ``"macs"`` or one of :data:`OTHER_KINDS`; ``None`` if unknown."""
    out = _tensor_val(node)
    out_elems = _numel(out) if out is not None else 0
    args = node.args
    if name in CONV:
        weight = _tensor_val(args[1])
        return "macs", out_elems * math.prod(weight.shape[1:])
    if name in MATMUL:
        first = _tensor_val(args[1] if name in ("addmm", "baddbmm") else args[0])
        return "macs", out_elems * first.shape[-1]
    if name in POOLING:
        kernel = args[1] if len(args) > 1 else node.kwargs["kernel_size"]
        kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
        return "pooling", out_elems * math.prod(kernel * (2 // len(kernel)))
    if name in GLOBAL_POOLING:
        return "pooling", _numel(_tensor_val(args[0]))
    if name in RESAMPLING:
        return "resampling", out_elems
    if name in NORMALIZATION:
        return "normalization", out_elems
    if name in ELEMENTWISE:
        return "elementwise", out_elems
    if name in MOVEMENT:
        return "data_movement", out_elems
    return None


def _block_of(node: torch.fx.Node, depth: int) -> str:
    """The module path (cut to ``depth`` levels) that issued the node, e.g. ``blocks.3``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "(top)"
    path = list(stack.values())[-1][0]
    path = path.replace("L['self'].", "").replace("L__self___", "")
    return ".".join(path.split(".")[:depth]) or "(top)"


def _base_name(name: str) -> str:
    """``relu_`` -> ``relu``: the out-of-place name of an in-place op."""
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


# Ops a converter folds or fuses into the conv before them (TFLite folds BN and fuses these activations).
FUSED_INTO_CONV = NORMALIZATION | {"relu", "relu6", "hardtanh", "clamp", "clamp_min", "clamp_max"}


def _same_padding_copy(node: torch.fx.Node) -> int:
    """Elements of the padded copy of a conv's input that TFLite inserts as an explicit PAD: when the conv's
    zero padding is not TFLite's SAME padding for its stride (stride 2 on an even size pads 0 before and 1
    after; PyTorch pads 1 on both sides). 0 when no copy is needed."""
    x, weight = _tensor_val(node.args[0]), _tensor_val(node.args[1])
    stride, padding = node.args[3] if len(node.args) > 3 else 1, node.args[4] if len(node.args) > 4 else 0
    if x is None or weight is None or x.dim() != 4 or isinstance(padding, str):
        return 0
    stride = list(stride) if isinstance(stride, (list, tuple)) else [stride] * 2
    padding = list(padding) if isinstance(padding, (list, tuple)) else [padding] * 2
    if not any(padding):
        return 0
    for size, k, s, p in zip(x.shape[-2:], weight.shape[-2:], stride, padding):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        if (total // 2, total - total // 2) != (p, p):
            return x.shape[1] * math.prod(n + 2 * q for n, q in zip(x.shape[-2:], padding))
    return 0


@dataclass
class _Buffer:
    """One activation tensor's memory: ``elements``, written at step ``first``, last read at step ``last``."""

    elements: int
    first: int
    last: int


@dataclass
class _Timeline:
    """The activation buffers of a graph run in order, and what TFLite Micro keeps per op and tensor."""

    buffers: list[_Buffer]
    ops: int  # steps that write a tensor of their own (TFLite ops, explicit PADs included)
    constants: int  # weight, bias and parameter tensors of those ops
    conv_channels: int  # output channels of convs and linear layers (per-channel requantization data)

    def peak_live(self) -> int:
        """Largest total of elements alive at one step."""
        steps = sorted({b.first for b in self.buffers})
        return max((sum(b.elements for b in self.buffers if b.first <= t <= b.last) for t in steps), default=0)


def _timeline(graph: torch.fx.Graph, user_inputs: set[str], micro: bool = False) -> _Timeline:
    """Walk ``graph`` in order; see the module docstring for which ops share a buffer.

    ``micro``: as TFLite Micro runs a converted model: only normalisation and the activations fused into convs
    share their input's buffer (every other element-wise op writes a tensor of its own), and a conv whose padding
    differs from TFLite's SAME padding first copies its input padded (an explicit PAD, one step before the conv).
    Node ``i`` runs at step ``2 i``, its PAD at ``2 i - 1``; graph outputs live to the end."""
    nodes = list(graph.nodes)
    buffer_of: dict[torch.fx.Node, torch.fx.Node] = {}  # tensor node -> node that owns its buffer
    aliases: dict[torch.fx.Node, list[torch.fx.Node]] = defaultdict(list)  # buffer -> tensors sharing it
    size: dict[torch.fx.Node, int] = {}
    pad_copy: dict[torch.fx.Node, int] = {}
    step = {n: 2 * i for i, n in enumerate(nodes)}
    constants = conv_channels = 0

    def assign(n: torch.fx.Node, buf: torch.fx.Node) -> None:
        buffer_of[n] = buf
        aliases[buf].append(n)

    def read_at(reader: torch.fx.Node) -> int:
        return step[reader] - 1 if pad_copy.get(reader) else step[reader]

    def last_read(buf: torch.fx.Node) -> int:
        return max((read_at(u) for a in aliases[buf] for u in a.users), default=step[buf])

    for n in nodes:
        val = _tensor_val(n)
        if n.op == "placeholder":
            if n.name in user_inputs and val is not None:
                assign(n, n)
                size[n] = val.numel()
            continue
        if n.op != "call_function" or val is None:
            continue
        srcs = [a for a in n.all_input_nodes if a in buffer_of]
        name = _op_name(n.target)
        base = _base_name(name)
        if micro and base in CONV and base != "conv_transpose2d":
            pad_copy[n] = _same_padding_copy(n)
        if srcs and (name in VIEWS or (base != name and (not micro or base in FUSED_INTO_CONV))):
            assign(n, buffer_of[srcs[0]])  # a view or an in-place op: shares its input's buffer
            continue
        if base in (FUSED_INTO_CONV if micro else ELEMENTWISE | NORMALIZATION):  # may overwrite an input dying here
            dying = [s for s in srcs if s.meta["val"].numel() == val.numel() and last_read(buffer_of[s]) == step[n]]
            if dying:
                assign(n, buffer_of[dying[0]])
                continue
        assign(n, n)
        size[n] = val.numel()
        constants += len(n.all_input_nodes) - len(srcs) + bool(pad_copy.get(n))
        if base in CONV or base in MATMUL:
            conv_channels += val.shape[1] if base in CONV else val.shape[-1]

    end = 2 * len(nodes)
    graph_outputs = {buffer_of[a] for n in nodes if n.op == "output" for a in n.all_input_nodes if a in buffer_of}
    buffers = []
    for buf, elements in size.items():  # in graph order, as a converter numbers tensors
        if pad_copy.get(buf):
            buffers.append(_Buffer(pad_copy[buf], step[buf] - 1, step[buf]))
        buffers.append(_Buffer(elements, step[buf], end if buf in graph_outputs else last_read(buf)))
    ops = len(size) - sum(n.op == "placeholder" for n in size) + sum(map(bool, pad_copy.values()))
    return _Timeline(buffers, ops, constants, conv_channels)


def _greedy_plan(buffers: list[_Buffer], align: int = 16) -> int:
    """Arena bytes of TFLite Micro's default (greedy) memory planner for int8 ``buffers``: each size rounded up to
    ``align``; largest first (equal sizes: the last added first); each at the lowest offset that no buffer alive at
    an overlapping step holds. The result can exceed the peak of live bytes: the planner leaves gaps."""
    sizes = [-(-b.elements // align) * align for b in buffers]
    order = sorted(reversed(range(len(buffers))), key=lambda i: -sizes[i])
    placed: list[tuple[int, int, _Buffer]] = []  # (offset, bytes, buffer)
    for i in order:
        buf, offset = buffers[i], 0
        for other_offset, other_size, other in sorted(placed, key=lambda p: p[0]):
            if other.first > buf.last or buf.first > other.last:
                continue
            if other_offset - offset >= sizes[i]:
                break
            offset = max(offset, other_offset + other_size)
        placed.append((offset, sizes[i], buf))
    return max((offset + size for offset, size, _ in placed), default=0)


def _trace(model: nn.Module, chans: int, height: int, width: int) -> tuple[torch.fx.Graph, set[str]]:
    """``model``'s ATen graph in eval mode at batch 1, and the names of its user inputs."""
    was_training = model.training
    model.eval()
    try:
        exported = torch.export.export(model, (torch.zeros(1, chans, height, width),))
    except Exception as err:  # export raises many types; the user needs one line
        raise RuntimeError(f"cannot trace {type(model).__name__} for profiling: {err}".splitlines()[0]) from err
    finally:
        model.train(was_training)
    return exported.graph_module.graph, set(exported.graph_signature.user_inputs)


# TFLite Micro's persistent arena (its tail), per item, as its recording allocator reports it for our exports:
# an eval tensor per tensor; per op its node and registration (64 B), kernel data and bookkeeping; per output
# channel of a conv or linear layer an int32 multiplier and shift; the input and output tensor structs.
MICRO_BYTES_PER_TENSOR = 24
MICRO_BYTES_PER_OP = 160
MICRO_BYTES_PER_CONV_CHANNEL = 8
MICRO_FIXED_BYTES = 192


def _micro_persistent(timeline: _Timeline) -> int:
    tensors = len(timeline.buffers) + timeline.constants
    return (MICRO_BYTES_PER_TENSOR * tensors + MICRO_BYTES_PER_OP * timeline.ops
            + MICRO_BYTES_PER_CONV_CHANNEL * timeline.conv_channels + MICRO_FIXED_BYTES)


def profile_model(
    model: nn.Module,
    img_size: int | tuple[int, int] = 224,
    in_chans: int | None = None,
    block_depth: int = 2,
    micro_form: nn.Module | None = None,
) -> Complexity:
    """Count parameters, MACs, other ops, weight and peak activation memory of ``model`` at batch 1.

    ``in_chans`` defaults to the model's own ``in_chans`` attribute, else 3. ``block_depth`` sets how
    many levels of the module path name a row of ``per_block`` (``blocks.3`` at depth 2). ``micro_form``: the
    model as it is exported for TFLite Micro (for ours, ``attendnets.export.for_runtime(model, "tflite-micro")``,
    which folds the condensers' scale), whose graph gives the arena figures; default ``model`` itself.
    """
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    chans = in_chans or getattr(model, "in_chans", 3)
    graph, user_inputs = _trace(model, chans, height, width)
    micro_graph, micro_inputs = (graph, user_inputs) if micro_form is None else _trace(micro_form, chans, height, width)
    micro = _timeline(micro_graph, micro_inputs, micro=True)
    macs = 0
    other = dict.fromkeys(OTHER_KINDS, 0)
    per_block: dict[str, dict[str, int]] = defaultdict(lambda: {"macs": 0, "other_ops": 0})
    unclassified: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        base = _base_name(name)
        if name in VIEWS or base in VIEWS:
            continue
        counted = _count(base, node)
        if counted is None:
            unclassified.add(name)
            continue
        kind, n = counted
        block = per_block[_block_of(node, block_depth)]
        if kind == "macs":
            macs += n
            block["macs"] += n
        else:
            other[kind] += n
            block["other_ops"] += n

    params = sum(p.numel() for p in model.parameters())
    return Complexity(
        params=params,
        macs=macs,
        other_ops=other,
        weight_bytes_fp32=4 * params,
        weight_bytes_int8=params,
        peak_activation_elements=_timeline(graph, user_inputs).peak_live(),
        input_size=(chans, height, width),
        micro_arena_planned_bytes=_greedy_plan(micro.buffers),
        micro_arena_persistent_bytes=_micro_persistent(micro),
        per_block=dict(per_block),
        unclassified=sorted(unclassified),
    )
