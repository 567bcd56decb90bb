"""The Triton dispatcher: inference batches in, BatchOutcomes out.

Bounded in-flight requests; a deadline per request from the age of its events (Triton's
queue timeout and the client-side wait); recoverable errors retried with backoff within the
failure budget (attempts, retry budget, circuit breaker); unrecoverable input errors isolated
by bisecting the batch so one bad row does not dead-letter its neighbours. Nothing raises
out of ``infer``: every event of the batch ends as an answer or as a dead letter."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tritonclient.grpc.service_pb2 import ModelInferResponse

from pipeline import errors
from pipeline.control.breaker import CircuitBreaker
from pipeline.control.budget import RetryBudget, deadline_ms, split_stale
from pipeline.control.retry import RetryPolicy
from pipeline.events import BatchOutcome, DeadLetter, InferenceBatch, Recommendations, UserRequest
from pipeline.metrics import Metrics
from pipeline.quality.arms import Arms
from pipeline.triton import InferenceServer, InferenceStream, codec
from pipeline.triton.contract import ReadParameters
from pipeline.triton.lifecycle import LifecycleCounts, RequestState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchConfig:
    """The model section's dispatch settings (defaults: the schema's, through wiring)."""

    signature: codec.ModelSignature
    max_in_flight: int
    timeout_ms: int
    retry: RetryPolicy
    end_to_end_ms: int
    drop_stale: bool  # stale policy: dead-letter (True) or best effort (False)
    max_split_requests: int  # extra requests a refused batch may be split into
    lane_drop_stale: Mapping[str, bool] = field(default_factory=dict)  # lanes that differ

    def drops_stale(self, lane: str) -> bool:
        return self.lane_drop_stale.get(lane, self.drop_stale)


def _now_ms() -> float:
    return time.time() * 1000.0


class _ArmFellBack(Exception):
    """The batch's arm failed while the control is served: the batch starts again on the
    control arm."""


class Dispatcher:
    def __init__(
        self,
        pool: InferenceServer,
        config: DispatchConfig,
        metrics: Metrics,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        arms: Arms | None = None,
    ) -> None:
        self.pool = pool
        self.arms = arms
        self._signatures = (
            {
                arm: dataclasses.replace(config.signature, version=info.version)
                for arm, info in arms.info.items()
            }
            if arms is not None
            else {}
        )
        self.config = config
        self.metrics = metrics
        self.breaker = breaker
        self.budget = budget
        self.lifecycle = LifecycleCounts()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._sends = itertools.count()  # makes request ids unique per send
        self.reads = ReadParameters()  # set from the served model's config once it is checked
        self._arm_latency: dict[str, deque[float]] = {}  # answered requests' ms per arm (the guard's p99)
        self._arm_failures: dict[str, list[int]] = {}  # arm → [failures in a row, control answers then]
        self._control_answers = 0

    def signature(self, arm: str) -> codec.ModelSignature:
        """What a request of ``arm`` names: the arm's version ("": the topology's model)."""
        return self._signatures.get(arm, self.config.signature)

    async def infer(self, batch: InferenceBatch) -> BatchOutcome:
        outcome = BatchOutcome(batch, model_name=self.config.signature.name)
        async with self._slots:  # a hard bound; the lane scheduler keeps below it
            # the arm that serves it now (stopped while the batch waited: the control)
            outcome.arm = self.arms.serving(batch.arm) if self.arms is not None and batch.arm else ""
            outcome.model_version = self.signature(outcome.arm).version
            outcome.dispatched_ms = _now_ms()
            rows = list(batch.requests)
            while True:
                try:
                    await self._infer_rows(rows, batch, outcome)
                except _ArmFellBack:
                    rows = self._on_control_arm(outcome)
                    continue
                except Exception as exc:  # not one of ours: this batch fails, never the whole graph
                    log.exception("inference of a %d-row batch failed unexpectedly", len(batch.requests))
                    self._fail(
                        self._unanswered(outcome), errors.InternalError(repr(exc)), outcome.attempts, outcome
                    )
                break
            outcome.completed_ms = _now_ms()
        return outcome

    def arm_latencies_ms(self, arm: str) -> Sequence[float]:
        """The round trip of the arm's last 1,000 answered requests (the guard's p99)."""
        return self._arm_latency.get(arm, ())

    def _answered_in(self, arm: str, seconds: float) -> None:
        self._arm_failures.pop(arm, None)
        if self.arms is not None and arm == self.arms.control:
            self._control_answers += 1
        self._arm_latency.setdefault(arm, deque(maxlen=1_000)).append(seconds * 1000.0)
        self.metrics.arm_inference.labels(arm).observe(seconds)

    def _falls_back(self, err: errors.PipelineError, outcome: BatchOutcome) -> bool:
        """A failure of an arm that is not the control, while the control is served (the
        breaker closed; it is not fed by other arms): the batch goes to the control instead
        of being retried or dead-lettered, and after ``failure_threshold`` such failures in a
        row the arm is stopped (its users go to the control). A transient one (a version
        reloading) costs a batch, not the arm. During an outage it waits like any request."""
        arms = self.arms
        if arms is None or not outcome.arm or outcome.arm == arms.control:
            return False
        if not err.retriable or not self.breaker.is_closed:
            return False  # a refused row is the row's (dead-lettered as ever); an outage waits
        arm = outcome.arm
        streak = self._arm_failures.setdefault(arm, [0, self._control_answers])
        streak[0] += 1
        # Stopped only if the control answered meanwhile: requests failing all together (an
        # outage, an overload) fail every arm, which is nobody's version.
        if streak[0] >= self.breaker.failure_threshold and self._control_answers > streak[1]:
            reason = "version_unavailable" if isinstance(err, errors.ModelNotFound) else "version_failing"
            arms.stop(arm, reason, f"{streak[0]} requests in a row failed, the last: {err}")
        return True

    def _on_control_arm(self, outcome: BatchOutcome) -> list[UserRequest]:
        """The rows to ask again, all of them on the control arm: answers of the stopped
        arm are dropped so that the whole batch carries one arm and version."""
        assert self.arms is not None
        outcome.arm = self.arms.control
        outcome.model_version = self.signature(outcome.arm).version
        outcome.answers.clear()
        return self._unanswered(outcome)

    @staticmethod
    def _unanswered(outcome: BatchOutcome) -> list[UserRequest]:
        """The batch's rows neither answered nor dead-lettered yet."""
        answered = {id(row) for row, _ in outcome.answers}
        failed = {id(dead.record) for dead in outcome.failures}
        return [
            r
            for r in outcome.batch.requests
            if id(r) not in answered and id(r.events[0].source) not in failed
        ]

    async def _infer_rows(
        self, rows: list[UserRequest], batch: InferenceBatch, outcome: BatchOutcome
    ) -> None:
        cfg = self.config
        attempt = 1
        while True:
            probe = await self.breaker.admit()
            if cfg.drops_stale(batch.lane):
                rows, stale = split_stale(rows, cfg.end_to_end_ms, _now_ms())
                if stale:
                    late = errors.StaleEvent(f"past its {cfg.end_to_end_ms} ms budget")
                    self._fail(stale, late, attempt - 1, outcome)
                if not rows:
                    if probe:
                        self.breaker.cancel_probe()
                    return
            try:
                answers = await self._attempt(rows, batch, attempt, outcome)
            except errors.PipelineError as err:  # (an unexpected error is handled below)
                outcome.attempts = max(outcome.attempts, attempt)
                if self._falls_back(err, outcome):  # before the breaker: the control's version is up
                    raise _ArmFellBack from err
                if not err.retriable:
                    if probe:
                        self.breaker.record_success()  # the server answered
                    if isinstance(err, errors.InvalidInput) and len(rows) > 1 and self._may_split(outcome):
                        # Find the bad rows instead of failing the good ones with them.
                        half = len(rows) // 2
                        await self._infer_rows(rows[:half], batch, outcome)
                        await self._infer_rows(rows[half:], batch, outcome)
                    else:
                        self._fail(rows, err, attempt, outcome)
                    return
                self.breaker.record_failure(probe, err.server_down)
                self.metrics.retries.labels(cfg.signature.name, err.reason).inc()
                if not self.breaker.is_closed:
                    continue  # an outage: wait for the breaker, this attempt is not spent
                if cfg.retry.should_retry(err, attempt) and self.budget.try_spend():
                    await asyncio.sleep(cfg.retry.backoff_s(attempt))
                    attempt += 1
                    continue
                self._fail(rows, errors.RetriesExhausted(err, attempt), attempt, outcome)
                return
            except Exception:
                if probe:  # the probe's answer will never come: let the next request probe
                    self.breaker.cancel_probe()
                raise
            self.breaker.record_success()
            outcome.answers.extend(zip(rows, answers, strict=True))
            return

    def _may_split(self, outcome: BatchOutcome) -> bool:
        """A refused batch is split in two to find its bad rows, within the bound on the
        extra requests one batch may cost; past it the refused rows are dead-lettered."""
        if outcome.split_requests + 2 > self.config.max_split_requests:
            return False
        outcome.split_requests += 2
        self.metrics.split_requests.labels(self.config.signature.name).inc(2)
        return True

    async def _attempt(
        self, rows: list[UserRequest], batch: InferenceBatch, attempt: int, outcome: BatchOutcome
    ) -> list[Recommendations]:
        sig = self.signature(outcome.arm)
        states = self.lifecycle
        states.enter(RequestState.START)
        if attempt == 1:
            self.budget.record_request()
        timeout_s = self.config.timeout_ms / 1000.0
        if self.config.drops_stale(batch.lane):
            left_s = (deadline_ms(rows, self.config.end_to_end_ms) - _now_ms()) / 1000.0
            timeout_s = max(0.001, min(timeout_s, left_s))
        req_id = codec.request_id(rows[0].events[0].ref, len(rows), attempt, next(self._sends))
        request = codec.encode(
            rows,
            sig,
            req_id,
            batch.priority if self.reads.priority else 0,
            int(timeout_s * 1_000_000) if self.reads.timeout else None,
            codec.asked_outputs(self.reads.unknown_items, self.reads.item_keys),
        )
        states.enter(RequestState.READ, RequestState.START)
        stream = self.pool.pick()
        started = time.perf_counter()
        status = "ok"
        state = RequestState.READ
        try:
            future = stream.submit(request)
            states.enter(RequestState.ISSUED, state)
            state = RequestState.ISSUED
            response = await self._answer(stream, future, req_id)
            states.enter(RequestState.WRITEREADY, state)
            state = RequestState.WRITEREADY
            if response.model_version:
                outcome.model_version = response.model_version
            answers = codec.decode(response, len(rows), sig.top_k)
            if outcome.arm:
                self._answered_in(outcome.arm, time.perf_counter() - started)
            if self.reads.unknown_items and (unknown := codec.unknown_items(response)):
                self.metrics.unknown_history_items.labels(sig.name).inc(unknown)
            return answers
        except errors.PipelineError as err:
            status = err.reason
            raise
        finally:
            self.metrics.inference_duration.labels(sig.name, status).observe(time.perf_counter() - started)
            states.enter(RequestState.COMPLETE, state)

    async def score_once(
        self, rows: list[UserRequest], arm: str, priority: int
    ) -> tuple[str, list[Recommendations]]:
        """One request of ``arm``'s version outside the live path (a shadow arm's): no
        retries, no breaker, no retry budget, nothing dead-lettered; raises what failed.
        Returns the version that answered and the answers."""
        sig = self.signature(arm)
        req_id = codec.request_id(rows[0].events[0].ref, len(rows), 0, next(self._sends))
        # Triton's own timeout as on the live path: a request given up here does not wait on there
        timeout_us = self.config.timeout_ms * 1_000 if self.reads.timeout else None
        request = codec.encode(
            rows, sig, req_id, priority if self.reads.priority else 0, timeout_us, codec.ANSWERS
        )
        stream = self.pool.pick()
        response = await self._answer(stream, stream.submit(request), req_id)
        return response.model_version or sig.version, codec.decode(response, len(rows), sig.top_k)

    async def _answer(
        self, stream: InferenceStream, future: asyncio.Future[ModelInferResponse], req_id: str
    ) -> ModelInferResponse:
        """The request's answer within the client-side bound (past it, the stream forgets it)."""
        try:
            return await asyncio.wait_for(future, self.config.timeout_ms / 1000.0)
        except TimeoutError:
            stream.forget(req_id)
            raise errors.DeadlineExceeded(f"no answer within {self.config.timeout_ms} ms") from None

    def _fail(
        self, rows: list[UserRequest], err: errors.PipelineError, attempts: int, outcome: BatchOutcome
    ) -> None:
        log.warning("%d rows dead-lettered: %s: %s", len(rows), err.reason, err)
        cls = type(err.last if isinstance(err, errors.RetriesExhausted) else err).__name__
        for row in rows:
            for event in row.events:
                outcome.failures.append(DeadLetter(event.source, err.reason, cls, str(err), attempts))
