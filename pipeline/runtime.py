"""The composition root: a Topology and the pipeline's ends (source, sink, inference server:
``ends.py``) become the running graph, and its lifecycle (model check, start, run, drain,
final commit, close) is owned here.

    source ─► parse ─► window ─► coalesce ─► batch ─► infer ─► enrich ─► sink ─► finish
                └──────────────── dead letters ──────────────────────────┘   (partitions)
    beside it, supervised loops: commits, stall watchdog, adaptive controller, lane guard

``wiring.py`` maps the topology onto each component, ``control_loops.py`` holds what batch
outcomes feed, ``sources/partitions.py`` owns each partition's offsets and credits."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import operator
import time
from typing import Any

import reactivex
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from pipeline import model_check, operators, wiring
from pipeline.accounting import Accounting
from pipeline.control.lane_rules import lane_classifier
from pipeline.control_loops import ControlLoops, Loop
from pipeline.ends import EndsFactory, on_kafka_and_triton
from pipeline.errors import Fatal
from pipeline.events import BatchOutcome, InferenceBatch, OutputRecord, RawRecord, SinkBatch
from pipeline.gauges import watch_runtime
from pipeline.health import Liveness
from pipeline.metrics import Metrics
from pipeline.operators.enrich import dead_letters_batch
from pipeline.operators.parse import ParsedBatch
from pipeline.quality.arms import Arms
from pipeline.quality.guard import ArmGuard
from pipeline.quality.online import OnlineOutcomes
from pipeline.quality.shadow import Judge, NoJudge, ShadowArm
from pipeline.sources.partitions import Partitions
from pipeline.sources.watchdog import StallWatchdog
from pipeline.state.users import UserState
from pipeline.stopping import CLOSE_STEP_TIMEOUT_S, Step, close_each, unless_stopped
from pipeline.ticks import supervised
from pipeline.topology.schema import Topology
from pipeline.triton.contract import ModelContractError
from pipeline.triton.dispatcher import Dispatcher

log = logging.getLogger(__name__)
# At start, for Triton to answer the model contract check before the group is joined
# meanwhile (consumption held); the check goes on until model.start_timeout_ms.
CONTRACT_WAIT_S = 10.0


def _has_rejects(parsed: ParsedBatch) -> bool:
    return bool(parsed.rejects)


def _rejects(dead_letter_topic: str, parsed: ParsedBatch) -> SinkBatch:
    return dead_letters_batch(parsed.rejects, dead_letter_topic)


class PipelineRuntime:
    def __init__(
        self,
        topology: Topology,
        *,
        ends: EndsFactory = on_kafka_and_triton,
        metrics: Metrics | None = None,
        tracer_provider: Any = None,
    ) -> None:
        t = self.topology = topology
        self.settings = wiring.runtime_settings(t)
        self.metrics = metrics or Metrics()
        self.tracing = wiring.tracing(t, tracer_provider)
        self.model_checked = False  # consumption is held until the model contract passed
        budget = wiring.dead_letter_budget(t)
        self.accounting = Accounting(self.metrics, self.settings.dead_letter_topic, budget, t.sink.topic)
        credits = wiring.topic_credits(t, hold=self._holding)
        self.partitions = Partitions(credits, self.metrics, self.settings.drain_timeout_s)
        self.partitions.commit_timeout_s = self.settings.commit_timeout_s
        self.source, self.sink, self.pool, self._check_connection, changelog = ends(
            t, self.partitions, self.metrics
        )
        self.users = UserState(
            wiring.state_settings(t), self.metrics, changelog, self.sink.write, self.sink.acked_offset
        )
        self.partitions.state = self.users  # a partition's users' histories follow it
        self.control = ControlLoops(t, self.metrics)
        self.arms = Arms(t.experiment, self.metrics) if t.experiment is not None else None
        self.dispatcher = Dispatcher(
            self.pool,
            wiring.dispatch_config(t),
            self.metrics,
            wiring.circuit_breaker(t),
            wiring.retry_budget(t),
            self.arms,
        )
        judged = wiring.outcome_settings(t)
        self.outcomes = (
            OnlineOutcomes(
                judged.attribution_ms,
                judged.remembered_users,
                self.metrics,
                judged.examples_topic,
                t.experiment.id if t.experiment is not None else None,
                judged.max_bytes,
                self.partitions.is_current,
                self.users if self.users.durable and judged.durable else None,  # kept with users' state
            )
            if judged is not None
            else None
        )
        if self.outcomes is not None:  # a revoked partition's users are its next owner's to judge
            self.partitions.on_released.append(self.outcomes.released)
        self.shadows = self._shadow_arms()
        self.watchdog = StallWatchdog(
            self.source,
            lambda: self.partitions.finished,
            lambda: self.partitions.in_flight,
            self.settings.stall_after_s,
            self.metrics,
            held=lambda: self._holding() or bool(self.users.restoring),  # restores watch themselves
        )
        watch_runtime(
            self.metrics,
            budget_holding=lambda: self.accounting.holding,
            contract_pending=lambda: not self.model_checked,
            sink_refusing=lambda: self.sink.refusing,
            partitions=self.source.partition_readings,
            lifecycle=self.dispatcher.lifecycle,
            queued=lambda: self.control.lanes.queued,
        )
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.liveness = Liveness(self.metrics, self.settings.liveness_stuck_after_s, self._running)
        # The Kafka source notes when its last poll ended; a source without it: not judged.
        self.liveness.watch_consumer(lambda: getattr(self.source, "last_poll", None))
        self._sink_tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self.clean_stop = True  # False: work was left unfinished or uncommitted (it replays)
        self._background: set[asyncio.Task[None]] = set()

    def _shadow_arms(self) -> list[ShadowArm]:
        arms, outcomes = self.arms, self.outcomes
        if arms is None:
            return []
        judge: Judge = outcomes if outcomes is not None else NoJudge()
        priority = wiring.shadow_priority(self.topology)
        return [
            ShadowArm(
                info,
                self.dispatcher.score_once,
                judge,
                self.metrics,
                priority,
                functools.partial(operator.contains, arms.stopped, info.id),
                stop=functools.partial(arms.stop, info.id),
            )
            for info in arms.shadows
        ]

    def _answered(self, outcome: BatchOutcome) -> None:
        """What an answered batch feeds beside the output: the shadows (first: the rows they
        take stay open in the join until their answers come), the outcome join."""
        if self.shadows and outcome.answers:
            rows = [row for row, _ in outcome.answers]
            for shadow in self.shadows:
                shadow.offer(rows)
        if self.outcomes is not None:
            self.outcomes.answered(outcome)
            outcome.examples.extend(self.outcomes.take_examples())

    def _with_examples(self, batch: InferenceBatch) -> InferenceBatch:
        """The joined examples its window's events decided ride with the window's first
        batch: written with its answers, before its inputs are committed."""
        assert self.outcomes is not None
        examples = self.outcomes.take_examples()
        return dataclasses.replace(batch, examples=tuple(examples)) if examples else batch

    def _holding(self) -> bool:
        """Consumption held on purpose: the model is not checked yet, or the dead-letter
        budget tripped. Not a stall; not ready either."""
        return not self.model_checked or self.accounting.holding

    def _build_graph(self, records: Subject[list[RawRecord]]) -> reactivex.Observable[SinkBatch]:
        """The dataflow, one step a line; what leaves it is written by ``_write``."""
        t, control = self.topology, self.control
        scheduler = AsyncIOScheduler(asyncio.get_running_loop())
        parsed = records.pipe(operators.parse(wiring.parse_rules(t)), ops.share())
        dead_letters = functools.partial(_rejects, self.settings.dead_letter_topic)
        rejected = parsed.pipe(ops.filter(_has_rejects), ops.map(dead_letters))
        windows = parsed.pipe(
            ops.map(operator.attrgetter("events")),
            operators.window(control.window_ms, wiring.window_max_events(t), scheduler),
        )
        if self.outcomes is not None:  # the next interactions judge what was shown before them
            windows = windows.pipe(ops.do_action(self.outcomes.seen))
        batches = windows.pipe(
            operators.coalesce(self.users),
            operators.batch(
                control.batch_size,
                lane_classifier(wiring.lane_rules(t)),
                wiring.lane_batch_caps(t),
                self.arms.route_many if self.arms is not None else None,
            ),
        )
        if self.outcomes is not None and self.outcomes.examples_topic is not None:
            batches = batches.pipe(ops.map(self._with_examples))
        answered = batches.pipe(
            operators.infer(self.dispatcher.infer, control.lanes),
            ops.do_action(control.observe),
            ops.do_action(self._answered),
            operators.enrich(wiring.output_spec(t, self.tracing)),
        )
        return reactivex.merge(rejected, answered)

    def is_ready(self) -> bool:
        """Consuming, not stalled, not held, no dead letter refused: what /readyz reports."""
        return (
            self.ready.is_set()
            and not self.watchdog.stalled
            and not self._stop.is_set()
            and not self.partitions.credits.hold()
            and not self.sink.refusing
            and not self.users.restoring
        )

    def is_started(self) -> bool:
        """Clients started and loops running: what /startupz reports."""
        return self.ready.is_set()

    def liveness_problems(self) -> list[str]:
        """A loop ended or stuck, the consumer not polling: what fails /livez."""
        return self.liveness.problems()

    def _running(self) -> bool:
        """Started and not stopping: when the loops are judged (they end on purpose at a stop)."""
        return self.ready.is_set() and not self._stop.is_set()

    def _on_sink_batch(self, batch: SinkBatch) -> None:
        self._sink_tasks.add(task := asyncio.create_task(self._write(batch)))
        task.add_done_callback(self._on_write_done)

    def _on_write_done(self, task: asyncio.Task[None]) -> None:
        """A write that failed left its offsets unfinished and its credits taken: the
        pipeline stops with the error rather than go on with them leaked."""
        self._sink_tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._on_graph_error(error)

    async def _write(self, batch: SinkBatch) -> None:
        """Drop what was revoked, write, finish every input, count."""
        inputs = self.partitions.inputs_of(batch)
        kept = self.partitions.without_revoked(batch, inputs)
        written: list[OutputRecord] = []
        try:
            if self.users.durable:  # committable once its state changes are in the changelog too
                if self.outcomes is not None:  # what its inputs judged is let go in the same round
                    self.outcomes.judged_inputs_written(src for rec in batch.records for src in rec.sources)
                written, _ = await asyncio.gather(self._write_records(kept), self.users.persisted())
            else:
                written = await self._write_records(kept)
        finally:
            if self.tracing is not None:  # every open span ends: written, refused, dropped, cut short
                self.tracing.finish(batch.records, written, kept=kept.records)
        self.accounting.count(written, batch, self.partitions.finish(inputs))
        self.metrics.in_flight_events.set(self.partitions.in_flight)

    async def _write_records(self, batch: SinkBatch) -> list[OutputRecord]:
        return await self.sink.write(batch) if batch.records else []  # refused: dead letters

    def _on_loop_restart(self, name: str, error: BaseException) -> None:
        log.error("background loop %s failed, restarting it: %r", name, error, exc_info=error)
        self.metrics.loop_restarts.labels(name).inc()

    def _on_graph_error(self, error: BaseException) -> None:
        # a Fatal error is its own one line (the CLI says it): no traceback before it
        log.error("pipeline graph failed: %r", error, exc_info=None if isinstance(error, Fatal) else error)
        self._failure = error
        self._stop.set()

    async def check_model(self) -> None:
        """Waits for the served model (every experiment arm's version), for at most
        ``model.start_timeout_ms`` in all, checks it fits; consumption starts once it does."""
        seconds = self.topology.model.start_timeout_ms / 1000
        bound = model_check.StartBound(asyncio.get_running_loop().time() + seconds, seconds)
        served = await model_check.checked_model(self.pool, wiring.model_check(self.topology), bound)
        for key, check in wiring.arm_model_checks(self.topology):
            try:
                await model_check.checked_model(self.pool, check, bound)
            except ModelContractError as exc:
                raise ModelContractError(f"{key}: {exc}") from None
        self.dispatcher.reads = served.reads  # parameters Triton would ignore are not sent
        self.model_checked = True

    async def _check_model_meanwhile(self, first_wait: asyncio.Task[None]) -> None:
        """What the start did not wait for: a mismatch found once Triton answers, or no
        answer within model.start_timeout_ms, stops the pipeline having consumed nothing
        (consumption is held until it passes)."""
        try:
            await first_wait
        except Fatal as exc:  # its one line is the CLI's to say, not a "graph failed" first
            self._failure = exc
            self._stop.set()
        except Exception as exc:
            self._on_graph_error(exc)

    def _background_loops(self) -> dict[str, Loop]:
        """Beside the dataflow, each supervised (restarted on an error, counted)."""
        commit_every = self.settings.commit_interval_s
        return {
            "commits": lambda stop: self.partitions.commit_loop(stop, commit_every),
            "watchdog": self.watchdog.run,  # lag or work with no progress → STALLED, /readyz 503
            **self.users.loops(),  # restores, changelog rounds
            **self.control.loops(),
            **self._guard_loop(),
        }

    def _guard_loop(self) -> dict[str, Loop]:
        t, arms, outcomes = self.topology, self.arms, self.outcomes
        if t.experiment is None or arms is None or outcomes is None or not t.experiment.guard.enabled:
            return {}
        guard = ArmGuard(t.experiment.guard, arms, outcomes.counts, self.dispatcher.arm_latencies_ms)
        return {"experiment guard": guard.run}

    async def _start(self) -> bool:
        """Connection check (bounded: the broker first), model contract (waited for at most
        CONTRACT_WAIT_S, then checked on while the clients start, until
        model.start_timeout_ms), clients. False: stopped meanwhile, nothing consumed; raises
        what stops the process."""
        t = self.topology
        try:  # refused credentials, no broker answering: exit 2 now, not after Triton's wait
            if not await unless_stopped(self._check_connection(), self._stop):
                return False
            changelog = self.users.changelog  # made if missing; a partition count mismatch stops here
            prepare = changelog.prepare(t.source.topics) if changelog is not None else None
            prepared = prepare is None or await unless_stopped(prepare, self._stop)
            if not prepared:
                return False
            contract = asyncio.create_task(self.check_model(), name="model-contract")
            stopped = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait(
                {contract, stopped}, timeout=CONTRACT_WAIT_S, return_when=asyncio.FIRST_COMPLETED
            )
            stopped.cancel()
            if contract in done:
                contract.result()  # a mismatch stops here, before anything is consumed
            elif self._stop.is_set():
                contract.cancel()
                return False
            else:
                log.warning(
                    "model.url: Triton at %s has not served the model within %.0f s: joining the "
                    "group meanwhile, consuming once the model is checked (exit 2 if not within "
                    "model.start_timeout_ms, %g s)",
                    t.model.url,
                    CONTRACT_WAIT_S,
                    t.model.start_timeout_ms / 1000,
                )
                self._background.add(asyncio.create_task(self._check_model_meanwhile(contract)))
            return await unless_stopped(self._start_clients(), self._stop)
        except BaseException:
            await self._close_clients()
            raise

    async def _start_clients(self) -> None:
        await self.sink.start()
        await self.source.start()  # joins the group: as long as the broker takes

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the graph fails), then drain and commit."""
        self._stop = stop or asyncio.Event()
        if not await self._start():  # stopped, or by a failure meanwhile (a contract found to
            await self._close_clients()  # mismatch while joining): that failure is the exit
            self._raise_failure()
            return
        records: Subject[list[RawRecord]] = Subject()
        self._build_graph(records).subscribe(on_next=self._on_sink_batch, on_error=self._on_graph_error)
        stop, restarted, failed = self._stop, self._on_loop_restart, self._on_graph_error
        loops = [
            asyncio.create_task(
                supervised(
                    name,
                    functools.partial(loop, stop),
                    stop,
                    restarted,
                    failed,
                    rounds=self.liveness.watch(name),
                ),
                name=f"loop {name}",
            )
            for name, loop in self._background_loops().items()
        ]
        self.liveness.begin()
        self.ready.set()
        log.info("pipeline %s running", self.settings.name)
        try:
            await self.source.run(records.on_next, self._stop)
        finally:
            records.on_completed()  # flushes the open window
            await self._drain()
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._close()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if isinstance(self._failure, Fatal):
            raise self._failure
        if self._failure is not None:
            raise RuntimeError("pipeline graph failed") from self._failure

    async def _close_clients(self) -> None:
        """After a failed or stopped start: the model check still waiting for Triton is
        cancelled, and what was made is closed, each step bounded."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await close_each(self._client_closes(), quiet=True)

    async def _close_state(self) -> None:
        self.users.close()

    async def _close_shadows(self) -> None:
        await asyncio.gather(*(shadow.close() for shadow in self.shadows))

    def _client_closes(self) -> list[Step]:
        source, sink, pool = self.source.stop, self.sink.stop, self.pool.close
        return [("consumer close", source), ("producer close", sink), ("Triton streams close", pool)]

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.partitions.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._sink_tasks:
            await asyncio.wait(set(self._sink_tasks), timeout=max(0.0, deadline - time.monotonic()))
        if self.partitions.in_flight:
            self.clean_stop = False
            log.warning("stopped with %d events unfinished: they will be replayed", self.partitions.in_flight)

    async def _close(self) -> None:
        """The final commit, then the clients, each bounded; a client slow to close (a
        consumer leaving mid-rebalance) leaves no work behind: not an unclean stop."""
        self.clean_stop = await close_each([("final commit", self.partitions.commit)]) and self.clean_stop
        await close_each([("state stores close", self._close_state), ("shadows", self._close_shadows)])
        await close_each(self._client_closes())
        for task in self._background:
            task.cancel()
        if self.tracing is not None:  # bounded by itself; lost spans do not make the stop unclean
            try:
                await asyncio.to_thread(self.tracing.shutdown, CLOSE_STEP_TIMEOUT_S)
            except Exception as exc:  # not in place of the stop's own outcome
                log.error("span export shutdown failed: %r", exc)
