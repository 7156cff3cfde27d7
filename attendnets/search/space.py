"""Search spaces as data: a prototype architecture and what a design search may change in it.

A space file (JSON or YAML) names a prototype spec and, per *stage* (a run of the prototype's blocks),
the choices a sampler may make::

    name: attendnet_b
    prototype: attendnet_b            # a preset, a spec file (relative to this file) or an inline spec
    round_to: 8                       # every sampled channel count is a multiple of this
    stages:
      - {name: "1/2", blocks: [0, 2], width: [0.75, 1.0, 1.25], depth: [-1, 0, 1], kinds: [vac, pepe, conv]}
      - ...
    vac:  {mid_scale: [0.5, 1.0, 1.5], pool: [2, 4]}
    pepe: {proj_scale: [0.75, 1.0, 1.25], mult: [2, 3], kernel: [3, 5]}
    conv: {kernel: [1, 3]}
    head: {hidden: [[], [128], [256], [512]]}

How a choice changes the prototype:

- ``width``: every output width of the stage is multiplied (depthwise convs keep their channel
  multiplier and follow their input).
- A stage's *free positions* are its blocks that keep both channels and resolution (VACs, stride-1
  PEPEs and convs with as many outputs as inputs); the others (downsampling, widening) stay in place.
  ``depth`` drops free positions from the end of the stage or repeats the last one.
- ``stride``: the stride of the stage's first block (which must have one); a larger stride than the
  prototype's moves the rest of the network to a lower resolution (a stem at stride 4 is an early
  downsampling stem), and the block's kernel grows to the smallest odd size above the stride, so that no
  pixel is skipped.
- ``kinds``: each free position may become a VAC, a PEPE or a conv. A block of the prototype's kind keeps
  its own inner widths; a new one gets half its width inside (``mid``, ``proj``) before scaling.
- ``vac.mid_scale`` / ``pepe.proj_scale`` scale those inner widths; ``pool`` is the condensation size,
  ``mult`` the depthwise expansion, ``kernel`` the depthwise kernel, ``conv.kernel`` the kernel of a conv
  placed at a free position; ``head.hidden`` the fully-connected widths.

Every list must hold the prototype's own value (width and scales 1.0, depth 0, ...), so the prototype is a
point of its space (:meth:`SearchSpace.prototype_params`). A sampled point is an ordinary
:class:`~attendnets.spec.ArchSpec`; whether it builds is the builder's verdict, as for any spec.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from attendnets.errors import AttendNetsError
from attendnets.spec import (
    ArchSpec, BlockSpec, ConvSpec, PEPESpec, VACSpec, block_out_chs, dataclass_from_dict, read_data_file,
)

SPACE_DIR = Path(__file__).parent / "spaces"  # the default space of each preset, as shipped
KINDS = ("vac", "pepe", "conv")
NEW_BLOCK_RATIO = 0.5  # inner width of a block the prototype did not have there, as a fraction of its width


class SpaceError(AttendNetsError):
    """A search space file that cannot describe a search; the message names the offending entry."""


class Suggester(Protocol):
    """What sampling needs of a trial: :class:`optuna.trial.Trial` and :class:`optuna.trial.FixedTrial` fit."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass
class StageSpace:
    """Choices for the prototype blocks ``blocks[0]..blocks[1]`` (inclusive)."""

    name: str
    blocks: list[int]
    width: list[float] = field(default_factory=lambda: [1.0])
    depth: list[int] = field(default_factory=lambda: [0])
    kinds: list[str] = field(default_factory=list)  # empty: free positions keep the prototype's kind
    stride: list[int] = field(default_factory=list)  # empty: the first block keeps its stride


@dataclass
class VACSpace:
    mid_scale: list[float] = field(default_factory=lambda: [1.0])
    pool: list[int] = field(default_factory=lambda: [2])


@dataclass
class PEPESpace:
    proj_scale: list[float] = field(default_factory=lambda: [1.0])
    mult: list[int] = field(default_factory=lambda: [2])
    kernel: list[int] = field(default_factory=lambda: [3])


@dataclass
class ConvSpace:
    kernel: list[int] = field(default_factory=lambda: [1, 3])


@dataclass
class HeadSpace:
    hidden: list[list[int]] = field(default_factory=list)  # empty: the prototype's head


@dataclass
class SearchSpace:
    """A prototype and the choices around it; :meth:`sample` turns a trial's choices into a spec."""

    name: str
    prototype: ArchSpec
    stages: list[StageSpace]
    round_to: int = 8
    vac: VACSpace = field(default_factory=VACSpace)
    pepe: PEPESpace = field(default_factory=PEPESpace)
    conv: ConvSpace = field(default_factory=ConvSpace)
    head: HeadSpace = field(default_factory=HeadSpace)

    def __post_init__(self) -> None:
        self.check()

    # -- reading and writing -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["prototype"] = self.prototype.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> SearchSpace:
        """Parse a space; ``prototype`` may be a preset name, a spec file (relative to ``base``) or a spec."""
        if not isinstance(data, dict):
            raise SpaceError(f"a search space must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if "prototype" not in data or "name" not in data:
            raise SpaceError("a search space needs a 'name' and a 'prototype'")
        data["prototype"] = _load_prototype(data["prototype"], base)
        data["stages"] = [_parse(StageSpace, s, f"stage {i}") for i, s in enumerate(data.get("stages") or [])]
        for key, kind in (("vac", VACSpace), ("pepe", PEPESpace), ("conv", ConvSpace), ("head", HeadSpace)):
            data[key] = _parse(kind, data.get(key) or {}, key)
        return _parse(cls, data, "space")

    def save(self, path: str | Path) -> None:
        """Write as YAML when the suffix is ``.yaml``/``.yml``, else JSON."""
        path = Path(path)
        data = self.to_dict()
        text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
        path.write_text(text + ("" if text.endswith("\n") else "\n"))

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(read_data_file(path, "search space", SpaceError), Path(path).parent)

    # -- checking ------------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse a space that is not a search around its prototype: stages must cover the prototype's
        blocks in order, and every list must be non-empty, hold valid values and the prototype's own."""
        blocks = self.prototype.blocks
        _need(isinstance(self.round_to, int) and self.round_to > 0, "round_to", f"must be a positive integer, got {self.round_to!r}")
        _need(bool(self.stages), "stages", "at least one stage is needed")
        expected = 0
        for i, stage in enumerate(self.stages):
            where = f"stage {i} ({stage.name})"
            _need(len(stage.blocks) == 2 and all(isinstance(b, int) for b in stage.blocks), where,
                  f"blocks must be [first, last] block indices, got {stage.blocks!r}")
            first, last = stage.blocks
            _need(first == expected and first <= last < len(blocks), where,
                  f"blocks {stage.blocks} must start at block {expected} and end before block {len(blocks)}")
            expected = last + 1
            _values(where, "width", stage.width, float, lambda v: v > 0, 1.0)
            free = len(_free_positions(self.prototype, first, last))
            _values(where, "depth", stage.depth, int, lambda v: v >= -free and (v <= 0 or free > 0), 0,
                    rule="0: the stage has no free position" if free == 0 else f">= -{free}")
            unknown = sorted(set(stage.kinds) - set(KINDS))
            _need(not unknown, where, f"unknown block kind(s) {unknown}; known: {list(KINDS)}")
            for j in _free_positions(self.prototype, first, last):
                _need(not stage.kinds or blocks[j].type in stage.kinds, where,
                      f"kinds {stage.kinds} must include {blocks[j].type!r}, the kind of block {j}")
            if stage.stride:
                _need(hasattr(blocks[first], "stride") and not _is_free(self.prototype, first), where,
                      f"stride: block {first} must downsample or widen (a free block may be dropped or replaced)")
                _values(where, "stride", stage.stride, int, lambda v: v >= 1, blocks[first].stride)
        _need(expected == len(blocks), "stages", f"cover blocks 0..{expected - 1} of the prototype's {len(blocks)}")
        vacs = [b for b in blocks if isinstance(b, VACSpec)]
        pepes = [b for b in blocks if isinstance(b, PEPESpec)]
        _values("vac", "mid_scale", self.vac.mid_scale, float, lambda v: v > 0, 1.0)
        _values("vac", "pool", self.vac.pool, int, lambda v: v >= 1, *{b.pool for b in vacs})
        _values("pepe", "proj_scale", self.pepe.proj_scale, float, lambda v: v > 0, 1.0)
        _values("pepe", "mult", self.pepe.mult, int, lambda v: v >= 1, *{b.mult for b in pepes})
        _values("pepe", "kernel", self.pepe.kernel, int, lambda v: v % 2 == 1, *{b.kernel for b in pepes}, rule="odd")
        _values("conv", "kernel", self.conv.kernel, int, lambda v: v % 2 == 1, rule="odd")
        for h in self.head.hidden:
            _need(isinstance(h, list) and all(isinstance(u, int) and u > 0 for u in h), "head",
                  f"hidden choices must be lists of positive widths, got {h!r}")
        _need(not self.head.hidden or self.prototype.head.hidden in self.head.hidden, "head",
              f"hidden {self.head.hidden} must include the prototype's {self.prototype.head.hidden}")
        for b in vacs:
            _need(self.round_to % b.embed_groups == 0, "round_to",
                  f"{self.round_to} must be a multiple of the VACs' embed_groups={b.embed_groups}")

    # -- sampling ------------------------------------------------------------------------------------

    def sample(self, trial: Suggester) -> ArchSpec:
        """The spec of the trial's choices. Parameter names say where a choice acts (``s2.width``,
        ``s2.p1.kind``, ``s2.p1.pepe.mult``, ``s2.b7.pepe.kernel``); choices that do not apply are not
        asked for, and a choice with one option is not asked either."""
        proto = self.prototype
        blocks: list[BlockSpec] = []
        chs = proto.in_chans
        for s, stage in enumerate(self.stages):
            width = _choose(trial, f"s{s}.width", stage.width)
            depth = _choose(trial, f"s{s}.depth", stage.depth)
            position = 0
            stride = _choose(trial, f"s{s}.stride", stage.stride) if stage.stride else None
            for j, template in _stage_layout(proto, *stage.blocks, depth):
                if template is None:  # a block that stays in place, its widths scaled
                    block = self._scaled_block(trial, f"s{s}.b{j}", proto.blocks[j], _in_chs(proto, j), chs, width)
                    if stride is not None and j == stage.blocks[0]:
                        block = _with_stride(block, stride, proto.blocks[j].stride)
                else:
                    base = proto.blocks[template]
                    name = f"s{s}.p{position}"
                    kind = _choose(trial, f"{name}.kind", stage.kinds or [base.type])
                    block = self._free_block(trial, name, kind, base if kind == base.type else None, chs, width)
                    position += 1
                blocks.append(block)
                chs = block_out_chs(block, chs)
        head = copy.deepcopy(proto.head)
        if self.head.hidden:
            labels = {_hidden_label(h): h for h in self.head.hidden}
            head.hidden = list(labels[_choose(trial, "head.hidden", list(labels))])
        return dataclasses.replace(proto, blocks=blocks, head=head, name=f"{self.name}-sample", description="")

    def prototype_params(self) -> dict[str, Any]:
        """The choices that give back the prototype (for :class:`optuna.trial.FixedTrial` or
        ``study.enqueue_trial``)."""
        recorder = _PrototypeChoices(self)
        self.sample(recorder)
        return recorder.params

    def _rnd(self, value: float) -> int:
        return max(self.round_to, int(round(value / self.round_to)) * self.round_to)

    def _scaled_block(
        self, trial: Suggester, name: str, block: BlockSpec, proto_in: int, chs: int, width: float
    ) -> BlockSpec:
        if isinstance(block, ConvSpec):
            if block.groups == proto_in > 1:  # depthwise: keep the channel multiplier, follow the input
                return dataclasses.replace(block, groups=chs, out=chs * (block.out // block.groups))
            return dataclasses.replace(block, out=self._rnd(block.out * width))
        if isinstance(block, PEPESpec):
            return self._pepe(trial, name, block, block.proj * width, block.proj2 * width, self._rnd(block.out * width))
        return self._vac(trial, name, block, block.mid * width)

    def _free_block(
        self, trial: Suggester, name: str, kind: str, base: BlockSpec | None, chs: int, width: float
    ) -> BlockSpec:
        """A block at a free position (``chs`` in, ``chs`` out, stride 1): ``base`` is the prototype's
        block of that kind there, whose inner widths are kept, or None for a new block."""
        if kind == "vac":
            vac = base if isinstance(base, VACSpec) else VACSpec(mid=chs)
            return self._vac(trial, name, vac, vac.mid * width if base else chs * NEW_BLOCK_RATIO)
        if kind == "pepe":
            if isinstance(base, PEPESpec):
                return self._pepe(trial, name, base, base.proj * width, base.proj2 * width, chs)
            inner = chs * NEW_BLOCK_RATIO
            return self._pepe(trial, name, PEPESpec(proj=chs, proj2=chs, out=chs), inner, inner, chs)
        return ConvSpec(out=chs, kernel=_choose(trial, f"{name}.conv.kernel", self.conv.kernel), stride=1)

    def _vac(self, trial: Suggester, name: str, block: VACSpec, mid: float) -> VACSpec:
        scale = _choose(trial, f"{name}.vac.mid_scale", self.vac.mid_scale)
        return dataclasses.replace(
            block, mid=self._rnd(mid * scale), pool=_choose(trial, f"{name}.vac.pool", self.vac.pool)
        )

    def _pepe(self, trial: Suggester, name: str, block: PEPESpec, proj: float, proj2: float, out: int) -> PEPESpec:
        scale = _choose(trial, f"{name}.pepe.proj_scale", self.pepe.proj_scale)
        return dataclasses.replace(
            block,
            proj=self._rnd(proj * scale),
            proj2=self._rnd(proj2 * scale),
            out=out,
            mult=_choose(trial, f"{name}.pepe.mult", self.pepe.mult),
            kernel=_choose(trial, f"{name}.pepe.kernel", self.pepe.kernel),
        )


class _PrototypeChoices:
    """A stand-in trial that answers every question with the prototype's own value."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.params[name] = value = self._value(name)
        return value

    def _value(self, name: str) -> Any:
        leaf = name.rsplit(".", 1)[-1]
        if name.count(".") == 1 and leaf == "stride":
            return self.space.prototype.blocks[self.space.stages[int(name[1:].split(".")[0])].blocks[0]].stride
        if leaf in ("width", "mid_scale", "proj_scale"):
            return 1.0
        if leaf == "depth":
            return 0
        if name == "head.hidden":
            return _hidden_label(self.space.prototype.head.hidden)
        stage, where = name.split(".")[:2]
        if where.startswith("b"):
            block = self.space.prototype.blocks[int(where[1:])]
        else:
            free = _free_positions(self.space.prototype, *self.space.stages[int(stage[1:])].blocks)
            block = self.space.prototype.blocks[free[int(where[1:])]]
        return block.type if leaf == "kind" else getattr(block, leaf)


def default_space(prototype: ArchSpec, name: str | None = None) -> SearchSpace:
    """The space shipped with a preset: one stage per resolution (a new stage at every stride), widths
    x0.75-1.25, one block more or less per stage, any kind at a free position, inner widths x0.5-1.5."""
    starts = [i for i, b in enumerate(prototype.blocks) if i == 0 or getattr(b, "stride", 1) > 1]
    ends = [s - 1 for s in starts[1:]] + [len(prototype.blocks) - 1]
    stages = []
    reduction = 1
    for first, last in zip(starts, ends):
        reduction *= getattr(prototype.blocks[first], "stride", 1)
        free = len(_free_positions(prototype, first, last))
        stages.append(StageSpace(
            name=f"1/{reduction}",
            blocks=[first, last],
            width=[0.75, 1.0, 1.25],
            depth=[-1, 0, 1] if free else [0],
            kinds=list(KINDS) if free else [],
        ))
    hidden = sorted({(), (128,), (256,), (512,), tuple(prototype.head.hidden)}, key=lambda h: (len(h), h))
    return SearchSpace(
        name=name or prototype.name,
        prototype=prototype,
        stages=stages,
        vac=VACSpace(mid_scale=[0.5, 1.0, 1.5], pool=sorted({2, 4, *(b.pool for b in prototype.blocks if isinstance(b, VACSpec))})),
        pepe=PEPESpace(proj_scale=[0.75, 1.0, 1.25],
                       mult=sorted({2, 3, *(b.mult for b in prototype.blocks if isinstance(b, PEPESpec))}),
                       kernel=sorted({3, 5, *(b.kernel for b in prototype.blocks if isinstance(b, PEPESpec))})),
        conv=ConvSpace(kernel=[1, 3]),
        head=HeadSpace(hidden=[list(h) for h in hidden]),
    )


def load_space(name: str | Path) -> SearchSpace:
    """A shipped space by its preset's name (``attendnet_b``), or a space file."""
    shipped = SPACE_DIR / f"{name}.yaml"
    return SearchSpace.load(shipped if shipped.is_file() else name)


# -- helpers ---------------------------------------------------------------------------------------------


def _in_chs(spec: ArchSpec, j: int) -> int:
    chs = spec.in_chans
    for block in spec.blocks[:j]:
        chs = block_out_chs(block, chs)
    return chs


def _is_free(spec: ArchSpec, j: int) -> bool:
    """Whether block ``j`` keeps both the channels and the resolution of its input."""
    block = spec.blocks[j]
    if isinstance(block, VACSpec):
        return True
    in_chs = _in_chs(spec, j)
    return block.stride == 1 and block.out == in_chs and (not isinstance(block, ConvSpec) or block.groups in (1, in_chs))


def _free_positions(spec: ArchSpec, first: int, last: int) -> list[int]:
    return [j for j in range(first, last + 1) if _is_free(spec, j)]


def _stage_layout(spec: ArchSpec, first: int, last: int, depth: int) -> list[tuple[int | None, int | None]]:
    """The stage's blocks after the depth choice, as ``(prototype index, template)`` pairs: a block that
    stays in place is ``(j, None)``, a free one kept ``(j, j)``, a repeat of the last free one ``(None, t)``."""
    free = _free_positions(spec, first, last)
    dropped = set(free[len(free) + depth :]) if depth < 0 else set()
    layout: list[tuple[int | None, int | None]] = []
    for j in range(first, last + 1):
        if j in dropped:
            continue
        layout.append((j, j if j in free else None))
        if depth > 0 and j == free[-1]:
            layout += [(None, j)] * depth
    return layout


def _with_stride(block: BlockSpec, stride: int, proto_stride: int) -> BlockSpec:
    """``block`` at ``stride``; above the prototype's stride its kernel grows to cover every pixel."""
    if stride == proto_stride:
        return block
    kernel = max(block.kernel, stride + 1 + stride % 2) if stride > proto_stride else block.kernel
    return dataclasses.replace(block, stride=stride, kernel=kernel)


def _choose(trial: Suggester, name: str, choices: list[Any]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def _hidden_label(hidden: list[int]) -> str:
    return "-".join(map(str, hidden)) or "none"


def _need(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise SpaceError(f"{where}: {message}")


def _values(where: str, key: str, values: Any, kind: type, valid, *required: Any, rule: str = "") -> None:
    _need(isinstance(values, list) and bool(values), where, f"{key} must be a non-empty list, got {values!r}")
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else isinstance(v, int) and not isinstance(v, bool)
        _need(ok and valid(v), where, f"{key} value {v!r} is not valid{f' (must be {rule})' if rule else ''}")
    missing = [r for r in required if r not in values]
    _need(not missing, where, f"{key} {values} must include the prototype's {missing[0]!r}" if missing else "")


def _parse(cls: type, data: Any, where: str) -> Any:
    return dataclass_from_dict(cls, data, where, SpaceError)


def _load_prototype(value: Any, base: Path | None) -> ArchSpec:
    from attendnets.registry import PRESETS, load_preset

    if isinstance(value, dict):
        return ArchSpec.from_dict(value)
    if not isinstance(value, str):
        raise SpaceError(f"prototype must be a preset name, a spec file or a spec, got {type(value).__name__}")
    path = Path(value) if base is None else base / value
    if path.suffix in (".json", ".yaml", ".yml"):
        return ArchSpec.load(path)
    if value not in PRESETS:
        raise SpaceError(f"prototype {value!r} is neither a preset ({', '.join(PRESETS)}) nor a .json/.yaml spec file")
    return load_preset(value)
