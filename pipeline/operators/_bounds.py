"""A bound given as a number or as a function read each time (the adaptive controller moves
the window's time bound and the batch size)."""

from __future__ import annotations

from collections.abc import Callable


def as_bound(value: int | Callable[[], int], what: str) -> Callable[[], int]:
    """``value`` as a function; a fixed number must be positive."""
    if not isinstance(value, int):
        return value
    if value <= 0:
        raise ValueError(f"{what} must be positive")
    return lambda: value
