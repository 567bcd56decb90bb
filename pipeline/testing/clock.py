"""A clock a test moves by hand: pass it where a component takes ``clock`` (a callable
returning seconds, like time.monotonic)."""

from __future__ import annotations


class ManualClock:
    def __init__(self, start_s: float = 0.0) -> None:
        self.s = start_s  # seconds, as returned

    def __call__(self) -> float:
        return self.s

    @property
    def ms(self) -> float:
        return self.s * 1000.0

    @ms.setter
    def ms(self, value: float) -> None:
        self.s = value / 1000.0

    def advance(self, ms: float = 1) -> None:
        self.s += ms / 1000.0
