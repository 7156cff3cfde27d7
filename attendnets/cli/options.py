"""argparse types for numeric options: a value out of range is refused while parsing, with a message that
names the option and the range (``argument --epochs: must be an integer >= 1, got 0``), before any work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (either bound may be open)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer{_range(low, high)}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer{_range(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """A finite float in ``[low, high]``; ``low_open``/``high_open`` exclude the bound itself."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be a number{_range(low, high, low_open, high_open)}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _range(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    def show(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {show(low)}"
    return f" {'<' if high_open else '<='} {show(high)}" if high is not None else ""


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
