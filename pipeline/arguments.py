"""argparse types for the commands' numbers: a count or a rate that makes no sense (``-3``,
``0`` items, ``nan``) is refused by the parser with one line naming the option, exit 2,
instead of a traceback deep in the work or a result built on it.

    p.add_argument("--top-k", type=at_least(1), default=10)
    p.add_argument("--rate", type=non_negative_float, default=0.0)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in its messages
    return parse


positive_int = at_least(1)
non_negative_int = at_least(0)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number ``>= 0`` (a rate where 0 means unlimited, a budget where 0 means none)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number ``> 0`` (seconds to wait, a share)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"more than 0, got {text}")
    return value


def share(text: str) -> float:
    """A finite number in [0, 1] (a share of rows, where 0 allows none)."""
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, got {text}")
    return value
