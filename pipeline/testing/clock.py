"""A clock a test moves by hand: pass it where a component takes ``clock`` (a callable
returning seconds, like time.monotonic). It counts milliseconds, so that steps of whole
milliseconds add up exactly."""

from __future__ import annotations


class ManualClock:
    def __init__(self, start_s: float = 0.0) -> None:
        self.ms = start_s * 1000.0

    def __call__(self) -> float:
        return self.ms / 1000.0

    @property
    def s(self) -> float:
        return self.ms / 1000.0

    @s.setter
    def s(self, value: float) -> None:
        self.ms = value * 1000.0

    def advance(self, ms: float = 1) -> None:
        self.ms += ms
