"""The runtime: turns a Topology into the running graph

    source ─► credits ─► parse ─► window ─► coalesce ─► batch ─► infer ─► enrich ─► sink ─► finish
                           └──────────────── dead letters ─────────────────────────┘    (offsets, credits)

    beside it, supervised loops: commits, stall watchdog, adaptive controller, lane guard

and owns its lifecycle (model contract check, start, run until stopped, drain, final commit,
close). ``_build_graph`` is the dataflow, ``_write`` the sink and finish steps,
``_background_loops`` the loops; ``wiring.py`` maps the topology onto each component. This
is the only module that knows both the topology and the operators."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
import numpy as np
import reactivex
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from pipeline import kafka_clients, operators, tracing, wiring
from pipeline.control.adaptive import AdaptiveController
from pipeline.control.lane_guard import LaneGuard
from pipeline.control.lane_rules import lane_classifier
from pipeline.control.lanes import LaneScheduler
from pipeline.errors import Fatal
from pipeline.events import BatchOutcome, Event, OutputRecord, RawRecord, SinkBatch
from pipeline.metrics import Metrics
from pipeline.offsets import OffsetTracker
from pipeline.operators.enrich import dead_letters_batch
from pipeline.operators.parse import ParsedBatch
from pipeline.security import CredentialsError, grpc_credentials, grpc_metadata, tls_refusal
from pipeline.sinks.kafka import KafkaSink
from pipeline.sources.credits import TopicCredits
from pipeline.sources.kafka import KafkaSource
from pipeline.sources.watchdog import StallWatchdog
from pipeline.ticks import every, supervised
from pipeline.topology.schema import Sink, Topology
from pipeline.triton.contract import ModelContractError, contract_problems, fetch_served_model
from pipeline.triton.dispatcher import Dispatcher
from pipeline.triton.lifecycle import RequestState
from pipeline.triton.streams import StreamPool

log = logging.getLogger(__name__)
# Each of the four closing steps (final commit, consumer, producer, streams) gets at most this
# long: with the source loop's exit they fit in SHUTDOWN_MARGIN_S (cli.py) past the drain.
CLOSE_STEP_TIMEOUT_S = 1.0
CONTRACT_WAIT_S = 10.0  # at start, for Triton to answer the model contract check
CONTRACT_RETRY_S = 2.0
CONTRACT_LOG_EVERY = 15  # retries between two warnings (30 s)


def _count_of(counter: Counter[RequestState], state: RequestState) -> Callable[[], int]:
    """A gauge callback reading one state's count when scraped."""
    return lambda: counter[state]


def _has_rejects(parsed: ParsedBatch) -> bool:
    return bool(parsed.rejects)


def _events_of(parsed: ParsedBatch) -> list[Event]:
    return parsed.events


def _rejects(sink: Sink, parsed: ParsedBatch) -> SinkBatch:
    return dead_letters_batch(parsed.rejects, sink.dead_letter_topic)


_TAKE = operator.itemgetter(*map(RawRecord._fields.index, ("topic", "partition", "generation")))
_OFFSET = operator.itemgetter(RawRecord._fields.index("offset"))


def offsets_by_take(sources: list[RawRecord]) -> dict[tuple[str, int, int], list[int]]:
    """The inputs' offsets by (topic, partition, generation): judged and finished a
    partition at a time rather than a record at a time."""
    taken: dict[tuple[str, int, int], list[int]] = {}
    for take, offset in zip(map(_TAKE, sources), map(_OFFSET, sources), strict=True):
        offsets = taken.get(take)
        if offsets is None:
            taken[take] = [offset]
        else:
            offsets.append(offset)
    return taken


class PipelineRuntime:
    def __init__(
        self, topology: Topology, metrics: Metrics | None = None, tracer_provider: Any = None
    ) -> None:
        t = self.topology = topology
        self.metrics = metrics or Metrics()
        # spans per output (operations.tracing); the extra missing: exit 2 here, at start
        self.tracing = tracing.from_spec(t.operations.tracing, tracer_provider)
        self.finished = 0  # input events finished (answered or dead-lettered): the watchdog's progress
        self.model_checked = False  # consumption is held until the model contract passed
        # source side: offsets, credits (backpressure), the consumer
        self.tracker = OffsetTracker()
        self.dead_letter_budget = wiring.dead_letter_budget(t)
        self.credits = TopicCredits(
            t.source.topics,
            t.source.credits.high_watermark,
            t.source.credits.low_watermark,
            hold=self._holding,
        )
        self.source = KafkaSource(t.source, t.broker, self.tracker, self.credits, self.metrics)
        # Triton side: the stream pool and the dispatcher, lanes in front of it
        model = t.model
        self.pool = StreamPool(
            model.url,
            model.streams,
            model.recycle_stream_after,
            model.keepalive_ms,
            grpc_credentials(model.tls) if model.tls is not None else None,  # unreadable: exit 2
            grpc_metadata(model.headers),
        )
        self.dispatcher = Dispatcher(
            self.pool,
            wiring.dispatch_config(t),
            self.metrics,
            wiring.circuit_breaker(t),
            wiring.retry_budget(t),
        )
        self.lanes = LaneScheduler(wiring.lane_specs(t), self._in_flight_limit)
        self.guard = LaneGuard(wiring.guarded_lanes(t))
        bounds = wiring.adaptive_bounds(t)
        self.controller = AdaptiveController(bounds) if bounds is not None else None
        # sink side
        self.sink = KafkaSink(t.sink, t.broker, wiring.sink_lanes(t), metrics=self.metrics)
        self.watchdog = StallWatchdog(
            self.source,
            lambda: self.finished,
            lambda: self.credits.in_flight,
            t.source.stall_after_ms / 1000.0,
            self.metrics,
            held=self._holding,
        )
        self._watch_with_metrics()
        if self.guard.active:
            self._apply_rations(self.guard.rates)  # a flood at start meets its floor at once
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._sink_tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self.clean_stop = True  # False: work was left unfinished or uncommitted (it replays)
        self._background: set[asyncio.Task[None]] = set()

    def _watch_with_metrics(self) -> None:
        """Gauges read at scrape time: nothing on the hot path."""
        m = self.metrics
        m.dead_letter_hold.set_function(lambda: 1 if self._budget_holding() else 0)
        m.contract_pending.set_function(lambda: 0 if self.model_checked else 1)
        m.sink_refusing.set_function(lambda: 1 if self.sink.refusing else 0)
        m.watch_partitions(self.source.partition_readings)
        lifecycle = self.dispatcher.lifecycle
        for state in RequestState:
            m.request_state.labels(state.value).set_function(_count_of(lifecycle.current, state))
            m.request_state_entered.watch(state.value, _count_of(lifecycle.entered, state))
        # Batches queue in the lane scheduler (not at the dispatcher), so that is what the
        # article's request_queue_size reports.
        m.request_queue_size.set_function(lambda: self.lanes.queued)

    def _budget_holding(self) -> bool:
        return self.topology.dead_letter_budget.enabled and self.dead_letter_budget.holding

    def _holding(self) -> bool:
        """Consumption held on purpose: the model is not checked yet, or the dead-letter
        budget tripped. Not a stall; not ready either."""
        return not self.model_checked or self._budget_holding()

    def _in_flight_limit(self) -> int:
        return self.controller.in_flight() if self.controller else self.topology.model.max_in_flight

    def _window_ms(self) -> int:
        return self.controller.window_ms() if self.controller else self.topology.window.max_ms

    def _batch_size(self) -> int:
        return self.controller.batch_size() if self.controller else self.topology.batch.max_size

    def _observe(self, outcome: BatchOutcome) -> None:
        latency_ms = outcome.completed_ms - outcome.batch.window_start_ms
        self.metrics.batch_latency.labels(outcome.batch.lane).observe(latency_ms / 1000.0)
        answers = outcome.answers
        if answers:  # from each row's first event's Kafka timestamp, the batch at once
            first = np.fromiter(
                (row.events[0].source.timestamp_ms for row, _ in answers),
                dtype=np.float64,
                count=len(answers),
            )
            self.metrics.end_to_end.observe_many((outcome.completed_ms - first) / 1000.0)
        if self.controller is not None and not self.lanes.rationed(outcome.batch.lane):
            # A rationed lane's waits are the guard's doing, not a shortage of capacity.
            self.controller.observe(
                latency_ms,
                outcome.completed_ms - outcome.dispatched_ms,
                outcome.dispatched_ms - outcome.batch.window_end_ms,
            )
        if self.guard.active and outcome.batch.requests:
            # from the oldest event's Kafka timestamp: broker and fetch time count too
            oldest = min(row.events[0].source.timestamp_ms for row in outcome.batch.requests)
            self.guard.observe(outcome.batch.lane, outcome.completed_ms - oldest, len(outcome.batch.requests))

    async def _guard_loop(self, stop: asyncio.Event) -> None:
        interval = self.topology.adaptive.interval_ms / 1000.0
        async for _ in every(interval, stop):
            before = (self.lanes.rates(), self.guard.last_reason)
            self._apply_rations(self.guard.tick(interval, self.lanes.idle()))
            if (self.lanes.rates(), self.guard.last_reason) != before:
                log.info("lane guard: %s -> %s", self.guard.last_reason, self.lanes.rates())

    def _apply_rations(self, rates: dict[str, float | None]) -> None:
        for lane, rate in rates.items():
            self.lanes.set_rate(lane, rate)
            if rate is not None:
                self.metrics.lane_rate.labels(lane).set(rate)
            else:
                with contextlib.suppress(KeyError):  # no series: not rationed
                    self.metrics.lane_rate.remove(lane)

    async def _control_loop(self, stop: asyncio.Event) -> None:
        assert self.controller is not None
        async for _ in every(self.topology.adaptive.interval_ms / 1000.0, stop):
            before = self.controller.knobs
            knobs = self.controller.tick(self.lanes.queued_unrationed)
            if knobs != before:
                log.info(
                    "adaptive: %s -> batch %d, window %d ms, in flight %d",
                    self.controller.last_reason,
                    knobs.batch_size,
                    knobs.window_ms,
                    knobs.in_flight,
                )
            self.metrics.knobs.labels("batch_size").set(knobs.batch_size)
            self.metrics.knobs.labels("window_seconds").set(knobs.window_ms / 1000.0)
            self.metrics.knobs.labels("in_flight").set(knobs.in_flight)

    def _build_graph(self, records: Subject[list[RawRecord]]) -> reactivex.Observable[SinkBatch]:
        """The dataflow, one step a line; what leaves it is written by ``_write``."""
        t = self.topology
        scheduler = AsyncIOScheduler(asyncio.get_running_loop())
        parsed = records.pipe(operators.parse(wiring.parse_rules(t)), ops.share())
        rejected = parsed.pipe(ops.filter(_has_rejects), ops.map(functools.partial(_rejects, t.sink)))
        answered = parsed.pipe(
            ops.map(_events_of),
            operators.window(self._window_ms, t.window.max_events, scheduler),
            operators.coalesce(
                t.window.history_length,
                t.window.remembered_users,
                t.window.history_order == "event_time",
                t.window.history_cache_mb,
            ),
            operators.batch(
                self._batch_size, lane_classifier(wiring.lane_rules(t)), wiring.lane_batch_caps(t)
            ),
            operators.infer(self.dispatcher.infer, self.lanes),
            ops.do_action(self._observe),
            operators.enrich(wiring.output_spec(t, self.tracing)),
        )
        return reactivex.merge(rejected, answered)

    def is_ready(self) -> bool:
        """Consuming, not stalled, not held, no dead letter refused: what /readyz reports."""
        return (
            self.ready.is_set()
            and not self.watchdog.stalled
            and not self._stop.is_set()
            and not self.credits.hold()
            and not self.sink.refusing
        )

    def _on_sink_batch(self, batch: SinkBatch) -> None:
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._sink_tasks.add(task)
        task.add_done_callback(self._on_write_done)

    def _on_write_done(self, task: asyncio.Task[None]) -> None:
        """A write that failed left its offsets unfinished and its credits taken: the
        pipeline stops with the error rather than go on with them leaked."""
        self._sink_tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._on_graph_error(error)

    async def _write(self, batch: SinkBatch) -> None:
        """sink ─► finish: write, then finish each input (offsets, credits), then count."""
        all_records = batch.records
        taken = offsets_by_take(batch.sources)
        if not all(map(self.source.is_current_take, taken)):
            batch = self._without_revoked(batch)
        written: list[OutputRecord] = []
        try:
            written = await self.sink.write(batch) if batch.records else []  # refused: dead letters
        finally:
            if self.tracing is not None:  # every open span ends: written, refused, dropped, cut short
                self.tracing.finish(all_records, written, kept=batch.records)
        finished = self._finish(taken)
        self._count(written, batch, finished)

    def _without_revoked(self, batch: SinkBatch) -> SinkBatch:
        """Work of a partition revoked since it was taken (it missed its drain) is redone by
        the partition's new owner from the commit: its outputs are not written twice. Records
        are judged one by one (a re-read copy of an event shares its coordinates with the
        stale one)."""
        is_current = self.source.is_current
        kept = tuple(rec for rec in batch.records if not rec.sources or any(map(is_current, rec.sources)))
        self.metrics.revoked_outputs_dropped.inc(len(batch.records) - len(kept))
        return dataclasses.replace(batch, records=kept)

    def _finish(self, taken: dict[tuple[str, int, int], list[int]]) -> int:
        """Offsets of the current assignment become committable (judged again: a rebalance
        can happen during the write); every input's credit goes back. Returns how many."""
        per_topic: dict[str, int] = {}
        for take, offsets in taken.items():
            topic, partition, _ = take
            if self.source.is_current_take(take):
                self.tracker.finish_many(topic, partition, offsets)
            per_topic[topic] = per_topic.get(topic, 0) + len(offsets)
        for topic, count in per_topic.items():
            self.credits.give_back(topic, count)
        finished = sum(per_topic.values())
        self.finished += finished
        return finished

    def _count(self, written: list[OutputRecord], batch: SinkBatch, finished: int) -> None:
        dlq = self.topology.sink.dead_letter_topic
        reasons = [
            dict(rec.headers).get("dlq.reason", b"unknown").decode() for rec in written if rec.topic == dlq
        ]
        self.metrics.events_finished.inc(finished)
        self.metrics.recommendations.inc(len(written) - len(reasons))
        self.metrics.duplicate_events.inc(batch.duplicates)
        for reason in reasons:
            self.metrics.dead_letters.labels(reason).inc()
        self.metrics.in_flight_events.set(self.credits.in_flight)
        if self.topology.dead_letter_budget.enabled:
            self._watch_dead_letter_share(finished, reasons)

    def _watch_dead_letter_share(self, finished: int, reasons: list[str]) -> None:
        trip = self.dead_letter_budget.observe(finished, reasons)
        if trip is not None:
            log.error(
                "DEAD-LETTER BUDGET: %.0f%% of the last %d events dead-lettered as %s: holding "
                "consumption for %.0f s (not ready meanwhile); the rest waits in Kafka",
                trip.share * 100,
                trip.events,
                trip.reason,
                trip.hold_s,
            )
            self.metrics.dead_letter_trips.labels(trip.reason).inc()

    def _on_loop_restart(self, name: str, error: BaseException) -> None:
        log.error("background loop %s failed, restarting it: %r", name, error, exc_info=error)
        self.metrics.loop_restarts.labels(name).inc()

    def _on_graph_error(self, error: BaseException) -> None:
        log.error("pipeline graph failed: %r", error, exc_info=error)
        self._failure = error
        self._stop.set()

    async def check_model(self) -> None:
        """The served model against the topology (see triton/contract.py). Waits while the
        server cannot be reached (an outage at start is the breaker's business, like any
        other); a mismatch raises ModelContractError."""
        model, sig = self.topology.model, self.dispatcher.config.signature
        for attempt in itertools.count():
            try:
                served = await fetch_served_model(
                    self.pool.stub, model.name, model.version, metadata=self.pool.metadata
                )
                break
            except grpc.aio.AioRpcError as exc:
                if model.tls is not None and (refusal := await tls_refusal(model.url, model.tls)):
                    # A certificate the other side refuses: waiting will not change it.
                    raise CredentialsError(
                        f"model.tls: the TLS handshake with Triton at {model.url} failed: {refusal}"
                    ) from None
                if attempt % CONTRACT_LOG_EVERY == 0:  # a long outage: a line now and then, not a flood
                    log.warning(
                        "model contract not checked yet, Triton at %s: %s", model.url, exc.code().name
                    )
                await asyncio.sleep(CONTRACT_RETRY_S)
        problems = contract_problems(served, sig, wiring.largest_batch(self.topology))
        if problems:
            raise ModelContractError("; ".join(problems))
        self.dispatcher.reads = served.reads  # parameters Triton would ignore are not sent
        self.model_checked = True
        log.info(
            "model %s fits the topology (max_batch_size %d; request priority %s, timeout %s)",
            served.name,
            served.max_batch_size,
            "sent" if served.reads.priority else "not read by its queue, not sent",
            "sent" if served.reads.timeout else "not read by its queue, not sent",
        )

    async def _check_model_meanwhile(self, first_wait: asyncio.Task[None]) -> None:
        """What the start did not wait for. Consumption stays held until it passes; a
        mismatch found once Triton answers stops the pipeline having consumed nothing."""
        try:
            await first_wait
        except Exception as exc:
            self._on_graph_error(exc)

    def _background_loops(self) -> dict[str, Callable[[asyncio.Event], Awaitable[None]]]:
        """Beside the dataflow, each supervised (restarted on an error, counted)."""
        loops: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
            "commits": self.source.commit_loop,  # finished offsets → the group's commit
            "watchdog": self.watchdog.run,  # lag or work with no progress → STALLED, /readyz 503
        }
        if self.controller is not None:
            loops["adaptive"] = self._control_loop  # latency → batch size, window, in flight
        if self.guard.active:
            loops["lane_guard"] = self._guard_loop  # a protected lane's p99 → rations below it
        return loops

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the graph fails), then drain and commit."""
        self._stop = stop or asyncio.Event()
        try:  # refused credentials or an untrusted certificate: exit 2 now, not after Triton's wait
            checked = await self._unless_stopped(kafka_clients.check_connection(self.topology.broker))
        except BaseException:
            await self._close_clients()
            raise
        if not checked:  # stopped during the check: nothing started
            await self._close_clients()
            return
        contract = asyncio.create_task(self.check_model(), name="model-contract")
        stopped = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait(
            {contract, stopped}, timeout=CONTRACT_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        if contract not in done and self._stop.is_set():  # stopped while waiting: nothing started
            contract.cancel()
            await self._close_clients()
            return
        if contract in done:
            if contract.exception() is not None:  # a mismatch stops here, before anything is consumed
                await self._close_clients()
            contract.result()
        else:
            log.warning(
                "Triton not reachable within %.0f s: joining the group, consuming once the model is checked",
                CONTRACT_WAIT_S,
            )
            self._background.add(asyncio.create_task(self._check_model_meanwhile(contract)))
        started = False
        try:
            started = await self._unless_stopped(self._start_clients())
        finally:
            if not started:  # failed, or stopped while joining the group: nothing consumed
                for task in self._background:  # the model check still waiting for Triton
                    task.cancel()
                await asyncio.gather(*self._background, return_exceptions=True)
                await self._close_clients()
        if not started:  # stopped, or stopped by a failure meanwhile (a model contract found
            self._raise_failure()  # to mismatch while joining): that failure is the exit, not 0
            return
        records: Subject[list[RawRecord]] = Subject()
        graph = self._build_graph(records)
        graph.subscribe(on_next=self._on_sink_batch, on_error=self._on_graph_error)
        loops = [
            asyncio.create_task(
                supervised(
                    name,
                    functools.partial(loop, self._stop),
                    self._stop,
                    self._on_loop_restart,
                    self._on_graph_error,
                ),
                name=name,
            )
            for name, loop in self._background_loops().items()
        ]
        self.ready.set()
        log.info("pipeline %s running", self.topology.name)
        try:
            await self.source.run(records.on_next, self._stop)
        finally:
            records.on_completed()  # flushes the open window
            await self._drain()
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._close()
        for task in self._background:
            task.cancel()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if isinstance(self._failure, Fatal):
            raise self._failure
        if self._failure is not None:
            raise RuntimeError("pipeline graph failed") from self._failure

    async def _start_clients(self) -> None:
        await self.sink.start()
        await self.source.start()  # joins the group: as long as the broker takes

    async def _unless_stopped(self, step: Coroutine[Any, Any, object]) -> bool:
        """A start step raced against the stop signal: the broker check can take its timeout
        per bootstrap server (twice, to confirm a refusal), joining the group as long as the
        broker takes, and a SIGTERM meanwhile must end the start at once, not after it (nor
        after cli's hard-exit budget). False: stopped first (the step cancelled, its
        connections closed); the step's error as it raises it."""
        task = asyncio.create_task(step)
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():  # stopped (or run() cancelled)
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            return False
        task.result()  # a verdict reached as the stop came still counts (exit 2 over exit 0)
        return True

    async def _close_clients(self) -> None:
        """After a failed start: what was made is closed, each step bounded."""
        for step in (self.source.stop, self.sink.stop, self.pool.close):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(step(), CLOSE_STEP_TIMEOUT_S)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.topology.source.drain_timeout_ms / 1000.0
        while self.credits.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._sink_tasks:
            await asyncio.wait(set(self._sink_tasks), timeout=max(0.0, deadline - time.monotonic()))
        if self.credits.in_flight:
            self.clean_stop = False
            log.warning("stopped with %d events unfinished: they will be replayed", self.credits.in_flight)

    async def _close(self) -> None:
        """The final commit, then the clients, each bounded: a broker that is down must not
        hold the process (aiokafka retries a commit or a flush for as long as it is let)."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("final commit", self.source.commit),
            ("consumer close", self.source.stop),
            ("producer close", self.sink.stop),
            ("Triton streams close", self.pool.close),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), CLOSE_STEP_TIMEOUT_S)
            except Exception as exc:
                self.clean_stop = False
                log.error("%s failed or timed out after %.0f s: %r", name, CLOSE_STEP_TIMEOUT_S, exc)
        if self.tracing is not None:  # spans lost to a slow collector do not make the stop unclean
            try:
                await asyncio.to_thread(self.tracing.shutdown, CLOSE_STEP_TIMEOUT_S)
            except Exception as exc:  # not in place of the stop's own outcome (a thread not started, ...)
                log.error("span export shutdown failed: %r", exc)
