"""A shadow arm's own bounds (pipeline/quality/shadow.py): rows past its rate or its
in-flight limit are skipped and counted, never waited for; its failures stay its own."""

from __future__ import annotations

import asyncio

from pipeline import errors
from pipeline.events import Recommendations, UserRequest
from pipeline.metrics import Metrics
from pipeline.quality.arms import ArmInfo
from pipeline.quality.shadow import ShadowArm
from pipeline.testing import ManualClock
from pipeline.testing.builders import user_request


def rows(n: int) -> list[UserRequest]:
    return [user_request(user=u) for u in range(n)]


def counted(metrics: Metrics, result: str) -> float:
    return (
        metrics.registry.get_sample_value("pipeline_shadow_rows_total", {"arm": "s", "result": result}) or 0.0
    )


async def test_rows_past_the_rate_or_the_in_flight_bound_are_skipped_not_waited_for() -> None:
    metrics, clock = Metrics(), ManualClock()
    release = asyncio.Event()
    scored: list[int] = []

    async def score(batch: list[UserRequest], arm: str, priority: int) -> tuple[str, list[Recommendations]]:
        await release.wait()
        return "3", [Recommendations((1,), (1.0,)) for _ in batch]

    shadow = ShadowArm(
        ArmInfo("s", "3", True, 2, 100.0),
        score,
        lambda a, v, r, s: scored.append(len(r)),
        metrics,
        2,
        lambda: False,
        clock,
    )
    shadow.offer(rows(60))  # within the second's 100 rows
    shadow.offer(rows(60))  # 40 left of this second
    shadow.offer(rows(10))  # two requests out already
    assert shadow.in_flight == 2 and counted(metrics, "skipped") == 20 + 10
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sorted(scored) == [40, 60] and counted(metrics, "scored") == 100 and shadow.in_flight == 0
    clock.advance(500)  # half a second: 50 rows of room
    release.clear()
    shadow.offer(rows(80))
    assert counted(metrics, "skipped") == 30 + 30
    await shadow.close()
    assert shadow.in_flight == 0


async def test_a_failing_shadow_counts_its_rows_as_failed_and_a_stopped_one_takes_none() -> None:
    metrics, stopped = Metrics(), [False]

    async def refuse(batch: list[UserRequest], arm: str, priority: int) -> tuple[str, list[Recommendations]]:
        raise errors.ModelNotFound("version 3 is not found")

    shadow = ShadowArm(
        ArmInfo("s", "3", True, 4, 1_000.0), refuse, lambda *a: None, metrics, 0, lambda: stopped[0]
    )
    shadow.offer(rows(5))
    for _ in range(2):  # the request, then its done callback
        await asyncio.sleep(0)
    assert counted(metrics, "failed") == 5 and shadow.in_flight == 0
    stopped[0] = True
    shadow.offer(rows(5))
    assert counted(metrics, "failed") == 5 and counted(metrics, "skipped") == 0
