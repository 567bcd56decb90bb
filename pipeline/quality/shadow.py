"""A shadow arm: a model version scored on copies of the live requests, under its own
in-flight and rate bounds, judged against the same outcomes and never emitted. A live batch
is offered to it once answered, never waited for: rows past its bounds are skipped and
counted, so the live arms never wait for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from pipeline import errors
from pipeline.events import Recommendations, UserRequest
from pipeline.metrics import Metrics
from pipeline.quality.arms import ArmInfo

log = logging.getLogger(__name__)
FAILURE_LOG_EVERY_S = 30.0
FAILURES_TO_STOP = 5  # its version missing this many times in a row: the shadow is stopped

Score = Callable[[list[UserRequest], str, int], Awaitable[tuple[str, list[Recommendations]]]]


class Judge(Protocol):
    """Where a shadow's answers are judged (``quality/online.py``), told of rows taken
    before their answers come, and of rows whose answers will not."""

    def taken(self, rows: Sequence[UserRequest]) -> None: ...

    def shadow_answered(
        self, arm: str, version: str, rows: Sequence[UserRequest], answers: Sequence[Recommendations]
    ) -> None: ...

    def given_up(self, rows: Sequence[UserRequest]) -> None: ...


class NoJudge:
    """The outcome join is off: answers are counted by the shadow, judged by none."""

    def taken(self, rows: Sequence[UserRequest]) -> None:
        pass

    def shadow_answered(
        self, arm: str, version: str, rows: Sequence[UserRequest], answers: Sequence[Recommendations]
    ) -> None:
        pass

    def given_up(self, rows: Sequence[UserRequest]) -> None:
        pass


class ShadowArm:
    def __init__(
        self,
        info: ArmInfo,
        score: Score,
        judge: Judge,
        metrics: Metrics,
        priority: int,
        stopped: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        stop: Callable[[str, str], object] | None = None,
    ) -> None:
        """``stop(reason, detail)``: called once its requests fail FAILURES_TO_STOP times in
        a row (``stopped`` then says so)."""
        self.info = info
        self._score = score
        self._judge = judge
        self._priority = priority  # the lowest the lanes use: behind every live request in Triton
        self._stopped = stopped
        self._clock = clock
        self._tokens = info.max_rows_per_s  # a bucket of one second's rows
        self._filled_at = clock()
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure_said = -FAILURE_LOG_EVERY_S
        self._failures = 0  # in a row
        self._stop = stop
        self._closed = False
        self._scored = metrics.shadow_rows.labels(info.id, "scored")
        self._skipped = metrics.shadow_rows.labels(info.id, "skipped")
        self._failed = metrics.shadow_rows.labels(info.id, "failed")

    def offer(self, rows: Sequence[UserRequest]) -> None:
        """Scores as many of ``rows`` as the bounds allow, in the background."""
        if not rows or self._closed or self._stopped():
            return
        now = self._clock()
        rate = self.info.max_rows_per_s
        self._tokens = min(rate, self._tokens + (now - self._filled_at) * rate)
        self._filled_at = now
        take = 0 if self.in_flight >= self.info.max_in_flight else min(len(rows), int(self._tokens))
        if take < len(rows):
            self._skipped.inc(len(rows) - take)
        if take == 0:
            return
        self._tokens -= take
        self.in_flight += 1
        taken = list(rows[:take])
        self._judge.taken(taken)
        task: asyncio.Task[None] = asyncio.ensure_future(self._run(taken))
        self._tasks.add(task)
        task.add_done_callback(self._done)  # also when cancelled before it began

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if not task.cancelled() and (error := task.exception()) is not None:  # retrieved, said
            log.error("shadow arm %s: a request's handling failed: %r", self.info.id, error, exc_info=error)

    async def _run(self, rows: list[UserRequest]) -> None:
        try:
            version, answers = await self._score(rows, self.info.id, self._priority)
        except Exception as exc:  # its own failure only: nothing live waits for it
            self._failed.inc(len(rows))
            self._judge.given_up(rows)
            # only its version missing is its own; a deadline or an outage is the moment's
            self._failures = self._failures + 1 if isinstance(exc, errors.ModelNotFound) else 0
            if self._failures >= FAILURES_TO_STOP and self._stop is not None:
                self._stop("version_unavailable", f"{self._failures} requests in a row: {exc!r}")
            elif self._clock() - self._failure_said >= FAILURE_LOG_EVERY_S:
                self._failure_said = self._clock()
                log.warning("shadow arm %s: %d rows not scored: %r", self.info.id, len(rows), exc)
            return
        self._failures = 0
        self._scored.inc(len(rows))
        try:
            self._judge.shadow_answered(self.info.id, version, rows, answers)
        except Exception:  # a bug of the join's: said, not compensated (rows may be closed already)
            if self._clock() - self._failure_said >= FAILURE_LOG_EVERY_S:
                self._failure_said = self._clock()
                log.exception("shadow arm %s: judging %d answers failed", self.info.id, len(rows))

    async def close(self) -> None:
        """Requests still out are let go (nothing waits for their answers); none is taken
        after."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
