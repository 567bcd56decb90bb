"""The embedded broker's CPU, watched by `pipeline dev`: the broker's cost grows with every
record batch it stores (see devstack/tuning.py), so a long run notices the growth and
restarts the broker before it runs out of CPU, instead of stalling without a word."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class BrokerLoad:
    """Share of one core the broker used between samples. The growth is measured from the
    lowest share seen, which is what the broker costs at this traffic with little stored."""

    pid: int
    started: float | None = None
    history: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, share)
    _last: tuple[float, float] | None = None  # (monotonic time, cpu seconds)

    def sample(self, now: float) -> float | None:
        try:
            cpu = process_cpu_seconds(self.pid)
        except (OSError, IndexError, ValueError):
            return None  # the broker is gone: its owner reports that
        last, self._last = self._last, (now, cpu)
        if self.started is None:
            self.started = now
        if last is None or now <= last[0]:
            return None
        share = (cpu - last[1]) / (now - last[0])
        self.history.append((now, share))
        return share

    @property
    def baseline(self) -> float:
        return min((share for _, share in self.history), default=0.0)

    def needs_recycle(self, share: float, growth: float) -> bool:
        return share - self.baseline >= growth

    def recycle_message(self, share: float) -> str:
        minutes = (self.history[-1][0] - (self.started or 0.0)) / 60 if self.history else 0.0
        return (
            f"the embedded broker's CPU grew from {self.baseline:.0%} to {share:.0%} of a core in "
            f"{minutes:.0f} min: its memory engine lists every stored batch on each fetch and never "
            "deletes one. Draining, then restarting it empty (docs/embedded_broker.md)"
        )
