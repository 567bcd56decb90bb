"""A shadow arm's own bounds (pipeline/quality/shadow.py): rows past its rate or its
in-flight limit are skipped and counted, never waited for; its failures stay its own; the
outcome join hears of every row it took, answered or given up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pipeline import errors
from pipeline.events import Recommendations, UserRequest
from pipeline.metrics import Metrics
from pipeline.quality.arms import ArmInfo
from pipeline.quality.shadow import ShadowArm
from pipeline.testing import ManualClock
from pipeline.testing.builders import user_request


class Judged:
    """What the shadow told the outcome join, in rows per call."""

    def __init__(self) -> None:
        self.took: list[int] = []
        self.answered: list[int] = []
        self.gave_up: list[int] = []

    def taken(self, rows: Sequence[UserRequest]) -> None:
        self.took.append(len(rows))

    def shadow_answered(
        self, arm: str, version: str, rows: Sequence[UserRequest], answers: Sequence[Recommendations]
    ) -> None:
        self.answered.append(len(rows))

    def given_up(self, rows: Sequence[UserRequest]) -> None:
        self.gave_up.append(len(rows))


def rows(n: int) -> list[UserRequest]:
    return [user_request(user=u) for u in range(n)]


def counted(metrics: Metrics, result: str) -> float:
    sample = metrics.registry.get_sample_value("pipeline_shadow_rows_total", {"arm": "s", "result": result})
    return sample or 0.0


async def settle() -> None:
    for _ in range(3):  # the request, its answer, its done callback
        await asyncio.sleep(0)


async def test_rows_past_the_rate_or_the_in_flight_bound_are_skipped_not_waited_for() -> None:
    metrics, clock, judged = Metrics(), ManualClock(), Judged()
    release = asyncio.Event()

    async def score(batch: list[UserRequest], arm: str, priority: int) -> tuple[str, list[Recommendations]]:
        await release.wait()
        return "3", [Recommendations((1,), (1.0,)) for _ in batch]

    shadow = ShadowArm(ArmInfo("s", "3", True, 2, 100.0), score, judged, metrics, 2, lambda: False, clock)
    shadow.offer(rows(60))  # within the second's 100 rows
    shadow.offer(rows(60))  # 40 left of this second
    shadow.offer(rows(10))  # two requests out already
    assert shadow.in_flight == 2 and counted(metrics, "skipped") == 20 + 10
    assert judged.took == [60, 40]
    release.set()
    await settle()
    assert sorted(judged.answered) == [40, 60] and counted(metrics, "scored") == 100 and shadow.in_flight == 0
    clock.advance(500)  # half a second: 50 rows of room
    release.clear()
    shadow.offer(rows(80))
    assert counted(metrics, "skipped") == 30 + 30
    await shadow.close()
    assert shadow.in_flight == 0


async def test_a_failing_shadow_counts_its_rows_as_failed_and_a_stopped_one_takes_none() -> None:
    metrics, judged, stopped = Metrics(), Judged(), [False]

    async def refuse(batch: list[UserRequest], arm: str, priority: int) -> tuple[str, list[Recommendations]]:
        raise errors.ModelNotFound("version 3 is not found")

    stops: list[str] = []

    def stop(reason: str, detail: str) -> None:
        stops.append(reason)
        stopped[0] = True

    shadow = ShadowArm(
        ArmInfo("s", "3", True, 4, 1_000.0), refuse, judged, metrics, 0, lambda: stopped[0], stop=stop
    )
    shadow.offer(rows(5))
    await settle()
    assert counted(metrics, "failed") == 5 and shadow.in_flight == 0
    assert judged.took == [5] and judged.gave_up == [5] and judged.answered == []
    for _ in range(4):  # five in a row: the version is not served, the shadow is stopped
        shadow.offer(rows(1))
        await settle()
    assert stops == ["version_unavailable"]
    shadow.offer(rows(5))
    assert counted(metrics, "failed") == 9 and counted(metrics, "skipped") == 0 and len(judged.took) == 5
    await shadow.close()
    stopped[0] = False
    shadow.offer(rows(5))  # closed: takes nothing
    assert len(judged.took) == 5
