"""The embedded broker's CPU, watched by `pipeline dev`: the broker's cost grows with every
record batch it stores (see devstack/tuning.py), so a long run notices the growth and
restarts the broker before it runs out of CPU, instead of stalling without a word."""

from __future__ import annotations

from dataclasses import dataclass, field

# imported from here by scripts/broker_longrun.py and the unit tests
from pipeline.procfs import cpu_seconds as process_cpu_seconds


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
