"""The guarded rollout: every ``interval_ms`` each live arm but the control is judged
against the control on the outcomes counted so far. An arm whose next-item hit rate is
below the control's by more than ``margin`` (the lower one-sided confidence bound of the
difference above it, both arms past ``min_outcomes`` judged), or whose inference p99 is
over ``p99_bound_ms`` while the control's is not (a slow server is nobody's arm), is
stopped: its users are served by the control from then on."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from pipeline.quality.arms import Arms
from pipeline.ticks import every
from pipeline.topology.schema import Guard

MIN_LATENCY_SAMPLES = 200  # answered requests an arm needs before its p99 is judged


class Verdict(NamedTuple):
    arm: str
    reason: str  # hit_rate | latency
    detail: str


def hits_and_judged(counts: dict[tuple[str, str], Counter[str]], arm: str) -> tuple[int, int]:
    """An arm's next-item hits and judged outcomes, over every version it was served by."""
    hits = judged = 0
    for (counted_arm, _version), c in counts.items():
        if counted_arm == arm:
            hits += c["hit"]
            judged += c["hit"] + c["miss"]
    return hits, judged


def worse_by_more_than(
    control: tuple[int, int], arm: tuple[int, int], margin: float, confidence: float
) -> tuple[bool, float, float]:
    """Whether the control's hit rate exceeds the arm's by more than ``margin`` with the
    given one-sided confidence (normal approximation of the difference of two
    proportions); also the difference and its lower bound."""
    (hc, nc), (ha, na) = control, arm
    pc, pa = hc / nc, ha / na
    se = math.sqrt(pc * (1 - pc) / nc + pa * (1 - pa) / na)
    lower = (pc - pa) - NormalDist().inv_cdf(confidence) * se
    return lower > margin, pc - pa, lower


class ArmGuard:
    def __init__(
        self,
        spec: Guard,
        arms: Arms,
        counts: Callable[[], dict[tuple[str, str], Counter[str]]],
        latencies_ms: Callable[[str], Sequence[float]],
    ) -> None:
        self.spec = spec
        self.arms = arms
        self._counts = counts
        self._latencies_ms = latencies_ms

    def verdicts(self) -> list[Verdict]:
        spec, arms = self.spec, self.arms
        counts = self._counts()
        control = hits_and_judged(counts, arms.control)
        out = []
        for info in arms.info.values():
            if info.shadow or info.id == arms.control or info.id in arms.stopped:
                continue
            if spec.p99_bound_ms is not None:
                p99, control_p99 = self._p99(info.id), self._p99(arms.control)
                if p99 is not None and control_p99 is not None and p99 > spec.p99_bound_ms >= control_p99:
                    bound = f"p99 {p99:.0f} ms > {spec.p99_bound_ms:g} ms (control {control_p99:.0f} ms)"
                    out.append(Verdict(info.id, "latency", bound))
                    continue
            arm = hits_and_judged(counts, info.id)
            if min(control[1], arm[1]) < spec.min_outcomes:
                continue
            worse, diff, lower = worse_by_more_than(control, arm, spec.margin, spec.confidence)
            if worse:
                out.append(
                    Verdict(
                        info.id,
                        "hit_rate",
                        f"hit rate {arm[0] / arm[1]:.4f} ({arm[1]} judged) against the control's "
                        f"{control[0] / control[1]:.4f} ({control[1]}): {diff:.4f} lower, at least "
                        f"{lower:.4f} at {spec.confidence:g} confidence > margin {spec.margin:g}",
                    )
                )
        return out

    def _p99(self, arm: str) -> float | None:
        recent = self._latencies_ms(arm)
        return float(np.percentile(np.asarray(recent), 99)) if len(recent) >= MIN_LATENCY_SAMPLES else None

    def judge(self) -> list[Verdict]:
        """Stops every arm with a verdict against it; returns the verdicts."""
        verdicts = self.verdicts()
        for v in verdicts:
            self.arms.stop(v.arm, v.reason, v.detail)
        return verdicts

    async def run(self, stop: asyncio.Event) -> None:
        """A verdict every interval (paced by ``every``: liveness sees its rounds); none
        after the stop."""
        async for _ in every(self.spec.interval_ms / 1000.0, stop):
            if not stop.is_set():
                self.judge()
