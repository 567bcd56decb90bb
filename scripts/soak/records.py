"""What the soak records: each worker's life with its memory samples, and each round (the
quiet time before a fault, the fault and its recovery)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.devstack.worker import PipelineProcess

RSS_GROWTH_FLAG = 0.20


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class WorkerLife:
    """One worker process from start to end, with its RSS samples (t in s since the soak
    began, MB)."""

    name: str
    epoch: int
    role: str  # member, replacement, joiner
    proc: PipelineProcess
    started_s: float
    rss: list[tuple[float, float]] = field(default_factory=list)
    ended_s: float | None = None
    end: str = "running"
    exit_code: int | None = None

    def sample(self, t_s: float) -> float | None:
        if self.ended_s is not None or not self.proc.alive():
            return None
        mb = self.proc.rss_mb()
        if mb is not None:
            self.rss.append((round(t_s, 1), round(mb, 1)))
        return mb

    def finish(self, t_s: float, end: str) -> None:
        self.ended_s = t_s
        self.exit_code = self.proc.proc.returncode if self.proc.proc is not None else None
        self.end = end if self.exit_code is None else f"{end}, exit {self.exit_code}"

    def report(self, warmup_s: float, now_s: float) -> dict[str, Any]:
        mbs = [mb for _, mb in self.rss]
        warm = next((mb for t, mb in self.rss if t - self.started_s >= warmup_s), None)
        growth = (mbs[-1] - warm) / warm if warm and mbs else None
        return {
            "name": self.name,
            "epoch": self.epoch,
            "role": self.role,
            "pid": self.proc.proc.pid if self.proc.proc is not None else None,
            "life_s": round((self.ended_s if self.ended_s is not None else now_s) - self.started_s, 1),
            "first_mb": mbs[0] if mbs else None,
            "warm_mb": warm,
            "last_mb": mbs[-1] if mbs else None,
            "max_mb": max(mbs) if mbs else None,
            "growth": round(growth, 3) if growth is not None else None,
            "flagged": growth is not None and growth > RSS_GROWTH_FLAG,
            "end": self.end,
            "log": str(self.proc.log_path),
        }


@dataclass
class Row:
    """One round: the quiet time before a fault, the fault and its recovery. Its events are
    the inputs produced in [start_ms, end_ms)."""

    kind: str
    t_s: float  # the fault's start, s since the soak began
    epoch: int
    start_ms: int
    fault: str = ""
    fault_s: float = 0.0
    end_ms: int = 0
    recovery_s: float | None = None
    recovered: bool = True
    notes: list[str] = field(default_factory=list)
    rss: str = ""
    dead_letters: dict[str, int] = field(default_factory=dict)  # written during the round
    worker_errors: list[str] = field(default_factory=list)  # ERROR lines of the workers' logs
    events: int = 0
    lost: int = 0
    duplicates: int = 0
