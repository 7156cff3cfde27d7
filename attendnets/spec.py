"""Architectures as plain data: block specs, a whole-network spec, and JSON/YAML round-trips.

A spec is what a person reads and what a search writes; :func:`attendnets.model.build_model` is the one
path from a spec to modules. Channel counts are absolute (no width multipliers hidden in code)::

    {"name": "tiny", "num_classes": 10,
     "blocks": [{"type": "conv", "out": 16, "kernel": 3, "stride": 2},
                {"type": "vac", "mid": 8},
                {"type": "pepe", "proj": 16, "mult": 2, "proj2": 16, "out": 32, "stride": 2}],
     "head": {"hidden": [64]}}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml

from attendnets.errors import AttendNetsError


class SpecError(AttendNetsError):
    """A spec that cannot describe a network; the message names the offending block."""


@dataclass
class ConvSpec:
    """Conv -> BN -> act. ``kernel`` 3 is a spatial conv, 1 a pointwise conv; ``groups`` equal to the
    input channels makes it depthwise (``out`` a multiple of the input gives a depthwise expansion)."""

    out: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1
    act: str = "relu"
    type: ClassVar[str] = "conv"


@dataclass
class VACSpec:
    """Visual attention condenser on the current channels; see
    :class:`attendnets.blocks.VisualAttentionCondenser` for each field's meaning."""

    mid: int
    pool: int = 2
    embed_kernel: int = 3
    embed_groups: int = 4
    scale: str = "channel"
    act: str = "relu"
    residual: bool = True
    attention: str = "condenser"
    type: ClassVar[str] = "vac"


@dataclass
class PEPESpec:
    """Projection-expansion-projection-expansion module; see :class:`attendnets.blocks.PEPE`."""

    proj: int
    proj2: int
    out: int
    mult: int = 2
    kernel: int = 3
    stride: int = 1
    act: str = "relu"
    type: ClassVar[str] = "pepe"


BlockSpec = Union[ConvSpec, VACSpec, PEPESpec]
BLOCK_TYPES: dict[str, type] = {cls.type: cls for cls in (ConvSpec, VACSpec, PEPESpec)}


def block_out_chs(block: BlockSpec, in_chs: int) -> int:
    """The channels ``block`` outputs from ``in_chs`` input channels (a VAC keeps them)."""
    return in_chs if isinstance(block, VACSpec) else block.out


@dataclass
class HeadSpec:
    """Global average pooling, then fully-connected layers of ``hidden`` widths (each followed by
    ``act`` and dropout ``dropout``), then the classifier."""

    hidden: list[int] = field(default_factory=list)
    act: str = "relu"
    dropout: float = 0.0


@dataclass
class ArchSpec:
    """A whole network: feature blocks in order, then the head.

    ``num_classes``, ``in_chans`` and ``img_size`` are the defaults the network was designed for;
    the builder can override the first two.
    """

    name: str
    blocks: list[BlockSpec]
    head: HeadSpec = field(default_factory=HeadSpec)
    num_classes: int = 50
    in_chans: int = 3
    img_size: int = 224
    description: str = field(default="", compare=False)  # prose: two specs that differ only here are one design

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in which every block carries its ``type``."""
        out = dataclasses.asdict(self)
        out["blocks"] = [{"type": b.type, **dataclasses.asdict(b)} for b in self.blocks]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Parse a dict as written by :meth:`to_dict`; unknown keys are errors, not silently ignored."""
        if not isinstance(data, dict):
            raise SpecError(f"a spec must be a mapping, got {type(data).__name__}")
        data = dict(data)
        raw_blocks = data.pop("blocks", None)
        if not isinstance(raw_blocks, list) or not raw_blocks:
            raise SpecError("a spec needs a non-empty list 'blocks'")
        blocks = [_block_from_dict(i, b) for i, b in enumerate(raw_blocks)]
        head = dataclass_from_dict(HeadSpec, data.pop("head", {}) or {}, "head")
        if "name" not in data:
            raise SpecError("a spec needs a 'name'")
        return dataclass_from_dict(cls, {**data, "blocks": blocks, "head": head}, "spec")

    def to_json(self) -> str:
        """JSON with one block per line, so that a spec reads like the table of a paper's figure."""
        data = self.to_dict()
        blocks = ",\n".join("    " + json.dumps(b) for b in data.pop("blocks"))
        fields = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()]
        return "{\n" + ",\n".join(fields) + ',\n  "blocks": [\n' + blocks + "\n  ]\n}"

    def save(self, path: str | Path) -> None:
        """Write as YAML when the suffix is ``.yaml``/``.yml``, else JSON."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = self.to_json() + "\n"
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        """Read a JSON or YAML spec file."""
        return cls.from_dict(read_data_file(path, "spec file", SpecError))

    @classmethod
    def coerce(cls, spec: ArchSpec | dict[str, Any] | str | Path) -> ArchSpec:
        """``spec`` itself if it is an :class:`ArchSpec`, parsed if it is a dict, else read as a spec file path."""
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if isinstance(spec, ArchSpec):
            return spec
        return cls.load(spec)


def read_data_file(path: str | Path, what: str, error: type[AttendNetsError]) -> Any:
    """The data of a YAML (``.yaml``/``.yml``) or JSON file; an unreadable or malformed file raises
    ``error`` with a one-line message that names ``what`` it is."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{what} {path} is not valid {path.suffix[1:].upper() or 'JSON'}: {err}") from None


def dataclass_from_dict(cls: type, data: Any, where: str, error: type[AttendNetsError] = SpecError) -> Any:
    """``cls(**data)``, refusing anything but a mapping of its fields, each of its annotated type, with a
    one-line ``error`` naming ``where`` and the field. Types are strict, as a file spells them: ``true`` is not
    an integer, ``"64"`` not a number, ``"no"`` not a boolean; a list field needs a list of such values."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise error(f"{where}: unknown field(s) {unknown}; allowed: {sorted(hints)}")
    for name, value in data.items():
        if not _is_a(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise error(f"{where}: {name} must be {_describe(hints[name])}, got {shown}")
    try:
        return cls(**data)
    except TypeError as err:
        raise error(f"{where}: {err}") from None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_a(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (a class, ``list[...]`` or a union), a bool counting only as a bool
    and an int also as a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if hint is Any:
        return True
    if origin is list:
        return isinstance(value, list) and all(_is_a(v, args[0]) for v in value)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, origin or hint)


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: ``an integer``, ``a list of lists of integers`` (``plural``: ``integers``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args if a is not type(None))
    if origin is list:
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
    if hint in _NAMES:
        return _NAMES[hint][plural]
    name = getattr(hint, "__name__", str(hint))
    return f"{name}s" if plural else f"a {name}"


def _block_from_dict(index: int, data: Any) -> BlockSpec:
    if not isinstance(data, dict):
        raise SpecError(f"block {index}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in BLOCK_TYPES:
        raise SpecError(f"block {index}: unknown block type {kind!r}; known: {sorted(BLOCK_TYPES)}")
    return dataclass_from_dict(BLOCK_TYPES[kind], data, f"block {index} ({kind})")
