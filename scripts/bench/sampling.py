"""CPU of the processes in a run, sampled on the wall clock that Kafka's record timestamps
use, so that CPU can be counted over the span the outputs were produced in."""

from __future__ import annotations

import time

import numpy as np

from pipeline import procfs


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM); NaN once it is gone."""
    peak = procfs.peak_rss_mb(pid)
    return peak if peak is not None else float("nan")


class Sampler:
    """Cumulative CPU seconds of process groups, sampled on a clock shared with Kafka's
    record timestamps (wall time), so that CPU can be counted over an output span."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.times: list[float] = []
        self.values: dict[str, list[float]] = {name: [] for name in groups}
        self.faults: dict[str, list[float]] = {name: [] for name in groups}

    def sample(self) -> None:
        self.times.append(time.time())
        for name, pids in self.groups.items():
            tree = [p for pid in pids for p in (pid, *procfs.children(pid))] if name == "consumer" else pids
            cpu, faults = procfs.cpu_and_faults(tree)  # a supervisor's workers count with it
            self.values[name].append(cpu)
            self.faults[name].append(faults)

    def between(self, name: str, t0_ms: float, t1_ms: float, faults: bool = False) -> float:
        """CPU seconds (or minor page faults) of group ``name`` between two wall times."""
        times = np.asarray(self.times) * 1000.0
        values = np.asarray((self.faults if faults else self.values)[name])
        return float(np.interp(t1_ms, times, values) - np.interp(t0_ms, times, values))
