"""`pipeline dev`: the whole product on one machine. Starts the embedded broker and Triton,
creates the topics, runs the pipeline on a topology, feeds it synthetic events and keeps
the books: with ``--events N`` it stops once all N are accounted for and prints a summary
JSON object as its last line."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import wiring
from pipeline.audit import combined_summary
from pipeline.devstack.broker_load import BrokerLoad
from pipeline.devstack.epoch import RECYCLE_DRAIN_S, Books, Epoch, settle_task
from pipeline.devstack.epoch import follow_outputs as follow_outputs  # the test harnesses' import
from pipeline.devstack.experiment import arms_summary, ensure_experiment_model, experiment_topology
from pipeline.devstack.reactions import DEFAULT_SHARE, ReactingBooks, Reactions
from pipeline.devstack.stack import TRAINING_EVENTS, EmbeddedStack, ensure_model
from pipeline.devstack.tuning import EMBEDDED_BROKER
from pipeline.devstack.watch import (
    DEV_METRICS_PORT,
    RUNNING_TOPOLOGY,
    Addresses,
    load_dev_topology,
    write_running_topology,
)
from pipeline.health import OpsServer
from pipeline.metrics import Metrics
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.runtime import PipelineRuntime
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)
UNANSWERED_AFTER_MS = 10_000


@dataclass(frozen=True)
class DevOptions:
    topology: Path
    workdir: Path
    events: int | None = None  # None: run until interrupted
    rate: float = 0.0  # events per second; 0: as fast as the producer goes
    timeout_s: float = 300.0
    report_every_s: float = 30.0
    recycle_growth: float = 0.15  # restart the broker once its CPU grew by this share of a core
    reacting: bool = False  # users' next items follow their recommendations (devstack/reactions.py)
    react_share: float = DEFAULT_SHARE
    experiment: bool = False  # trained against popularity, 50/50, users reacting (devstack/experiment.py)
    model_repository: Path = Path("var/model_repository")  # where `pipeline train --out` writes
    metrics_port: int = DEV_METRICS_PORT  # /metrics and the probes (0: none); see watch.dev_metrics_port
    metrics_socket: socket.socket | None = None  # that port, bound before the stack started
    default_workdir: bool = True  # the commands dev suggests need no --workdir


def live_events(
    config: GeneratorConfig, count: int | None, reactions: Reactions | None = None, skip: int = 0
) -> Iterator[dict[str, object]]:
    """Synthetic events stamped with the current time (the pipeline rejects stale ones);
    with ``reactions``, users react to their latest recommendation; the first ``skip`` of the
    generator's events are not sent (the ones a model was trained on)."""
    total = count + skip if count is not None else 10**12
    events: Iterator[dict[str, object]] = itertools.islice(EventGenerator(config).events(total), skip, None)
    if reactions is not None:
        events = reactions.react(events)
    for event in events:
        event["ts"] = time.time_ns() // 1_000_000
        yield event


async def run_dev(opts: DevOptions, stack: EmbeddedStack) -> dict[str, object]:
    """Feed and follow the pipeline until the user stops it (or ``--events`` are accounted
    for). The embedded broker slows down with every batch it stores, so when its CPU has
    grown by ``recycle_growth`` of a core the run drains, restarts the broker empty and goes
    on: a pause of a few seconds instead of a stall (docs/embedded_broker.md)."""
    stop = asyncio.Event()  # the user's signal, or the run's end
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rate = opts.rate if opts.events is not None or opts.rate > 0 else 200.0
    config, reactions, skip = GeneratorConfig(seed=int(time.time())), None, 0
    if opts.reacting or opts.experiment:
        # The tastes the stack's model learned (ensure_model trains on the default config's
        # first events): a time-seeded generator draws other clusters, and every model would
        # look random to its users. The events sent are the ones after the training data.
        config, skip = GeneratorConfig(), TRAINING_EVENTS
        reactions = Reactions.of(EventGenerator(config), opts.react_share, seed=config.seed)
    events = live_events(config, opts.events, reactions, skip)
    topology = dev_topology(opts, stack)
    addresses = Addresses.of(stack, topology, opts.workdir.resolve())
    write_running_topology(topology, addresses.topology)
    addresses.announce(topology, opts.default_workdir)
    quality: dict[tuple[str, str], Counter[str]] = {}  # online outcomes, over every epoch
    books = Books() if reactions is None else ReactingBooks(reactions=reactions)
    started = time.monotonic()
    recycles = 0
    ops = await _operations_endpoint(opts, topology)
    try:
        while await run_epoch(opts, topology, stack, events, rate, books, stop, started, quality, ops):
            recycles += 1
            await asyncio.to_thread(stack.broker.restart)
            log.warning("embedded broker restarted empty (recycle %d); the run goes on", recycles)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if ops is not None:
            await ops.stop()
    summary = combined_summary(books.ledgers)
    summary["wall_s"] = round(time.monotonic() - started, 2)
    summary["broker_recycles"] = recycles
    if reactions is not None:
        summary["reactions"] = reactions.stats()
    if opts.experiment:
        summary["experiment"] = {
            "online_hit_at_k": arms_summary(quality),
            "users_in_two_arms": len(reactions.users_in_two_arms) if reactions is not None else None,
        }
    summary["reading"] = reading(topology)
    summary["user_state"] = (
        f"durable in {topology.state.dir} (the embedded broker never compacts the changelog, and a "
        "broker recycle empties it: histories start again)"
        if topology.state.dir is not None
        else "in memory only (state.dir unset: a restart forgets every user's history)"
    )
    return summary


class _Starting:
    """What the endpoint answers for before the first runtime exists."""

    def is_ready(self) -> bool:
        return False

    def is_started(self) -> bool:
        return False

    def liveness_problems(self) -> list[str]:
        return []


async def _operations_endpoint(opts: DevOptions, topology: Topology) -> OpsServer | None:
    """One endpoint for the whole run, as `pipeline run` serves it (serve.py): each broker
    epoch's runtime is handed to it, so the live page keeps its history and the port stays
    served across a recycle. It serves on the port cmd_dev bound, if it did."""
    if (endpoint := wiring.operations_endpoint(topology)) is None:
        return None
    ops = OpsServer(Metrics(), _Starting(), endpoint.port, endpoint.bind, sock=opts.metrics_socket)
    await ops.start()
    return ops


def dev_topology(opts: DevOptions, stack: EmbeddedStack) -> Topology:
    """The topology as dev runs it: the environment's ``${NAME}`` and PIPELINE_* values, with
    the stack's addresses and dev's metrics port on top, and the embedded broker's tuning."""
    overrides = {
        "PIPELINE_BOOTSTRAP_SERVERS": stack.broker.bootstrap,  # a restarted broker keeps its port
        "PIPELINE_TRITON_URL": stack.triton.grpc_url,
        "PIPELINE_METRICS_PORT": str(opts.metrics_port),
    }
    topology = EMBEDDED_BROKER.apply(load_dev_topology(opts.topology, {**os.environ, **overrides}))
    return experiment_topology(topology) if opts.experiment else topology


def reading(topology: Topology) -> dict[str, str]:
    """How to read the summary's numbers (the demo's first questions)."""
    return {
        "recommendations": (
            "one per user per window: a user's events that meet in a window (at most "
            f"{topology.window.max_ms} ms) get one recommendation, so fewer recommendations than "
            "events is coalescing, not loss; lost counts inputs with no answer at all"
        ),
        "latency": (
            "end to end, the input's produce time to the recommendation's, including up to "
            f"{EMBEDDED_BROKER.linger_ms} ms the dev stack's producers linger to spare the embedded "
            "broker (docs/embedded_broker.md); on Kafka with the shipped topology: README, Benchmark"
        ),
    }


async def run_epoch(
    opts: DevOptions,
    topology: Topology,
    stack: EmbeddedStack,
    events: Iterator[dict[str, object]],
    rate: float,
    books: Books,
    stop: asyncio.Event,
    started: float,
    quality: dict[tuple[str, str], Counter[str]],
    ops: OpsServer | None = None,
) -> bool:
    """One broker epoch: topics, pipeline, feeder and follower; its online outcomes are
    added to ``quality``; ``ops`` answers for its runtime. Returns whether the broker needs
    recycling (False: the run is over)."""
    runtime = PipelineRuntime(topology)  # a bad configuration raises before anything starts
    if ops is not None:
        ops.serve(runtime, runtime.metrics)
    epoch = await Epoch.open(topology, books, events, rate)
    pipeline_stop = asyncio.Event()
    pipeline_task = asyncio.create_task(runtime.run(pipeline_stop), name="pipeline")
    recycle = False
    try:
        await _until_ready(runtime, pipeline_task)
        load = BrokerLoad(stack.broker.pid)
        while True:
            epoch.start_feeding()
            if not await _watch(opts, books, epoch, pipeline_task, stop, started, load):
                break
            if await epoch.drained(RECYCLE_DRAIN_S):
                recycle = True
                break
            log.warning(
                "events still unanswered %.0f s after the feed stopped: broker restart postponed",
                RECYCLE_DRAIN_S,
            )
            load = BrokerLoad(stack.broker.pid)
    finally:
        # Stop in dataflow order so that what is in flight still gets counted.
        await epoch.stop_feeding()
        pipeline_stop.set()
        await settle_task(pipeline_task, timeout_s=topology.source.drain_timeout_ms / 1000 + 30)
        await epoch.close()
        if runtime.outcomes is not None:
            for key, counts in runtime.outcomes.counts().items():
                quality.setdefault(key, Counter()).update(counts)
    return recycle and not stop.is_set()


async def _until_ready(
    runtime: PipelineRuntime, pipeline_task: asyncio.Task[None], timeout_s: float = 120
) -> None:
    """Until the pipeline runs; its failure at start (a model that does not fit) is raised."""
    ready = asyncio.create_task(runtime.ready.wait())
    done, _ = await asyncio.wait(
        {ready, pipeline_task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
    )
    ready.cancel()
    if pipeline_task in done:
        pipeline_task.result()
        raise RuntimeError("the pipeline ended before it was ready")
    if ready not in done:
        raise TimeoutError(f"the pipeline was not ready after {timeout_s:.0f} s")


async def _watch(
    opts: DevOptions,
    books: Books,
    epoch: Epoch,
    pipeline_task: asyncio.Task[None],
    stop: asyncio.Event,
    started: float,
    broker_load: BrokerLoad,
) -> bool:
    """Until the run is over (False) or the broker needs recycling (True). The feeder's or
    the follower's failure ends the run with it: the books would be wrong without them."""
    last_report = time.monotonic()
    broker_load.sample(last_report)
    while not stop.is_set():
        await asyncio.sleep(0.1)
        if pipeline_task.done():
            pipeline_task.result()  # re-raises the pipeline's failure
            return False
        epoch.raise_failure()
        if opts.events is not None and epoch.fed and books.accounted() >= opts.events:
            return False
        if time.monotonic() - started > opts.timeout_s and opts.events is not None:
            log.error("timed out with %d of %d events accounted for", books.accounted(), opts.events)
            return False
        now = time.monotonic()
        if now - last_report > opts.report_every_s:
            last_report = now
            share = _report(books, broker_load, now, now - started)
            if share is not None and broker_load.needs_recycle(share, opts.recycle_growth):
                log.warning(broker_load.recycle_message(share))
                return True
    return False


def _report(books: Books, broker_load: BrokerLoad, now: float, elapsed_s: float) -> float | None:
    """One line per interval: the interval's p99 and the broker's CPU show a slow degradation
    long before a stall. Returns the broker's share of a core over the interval."""
    ledger = books.ledgers[-1]
    latencies = ledger.take_latencies()
    p99 = float(np.percentile(latencies, 99)) if latencies else float("nan")
    share = broker_load.sample(now)
    unanswered = ledger.unanswered(time.time_ns() // 1_000_000 - UNANSWERED_AFTER_MS)
    log.info(
        "t=%ds in %d, recommendations %d, dead letters %d, unanswered after %ds %d, "
        "p99 %.0f ms, broker CPU %s",
        elapsed_s,
        books.inputs(),
        sum(lg.recommendations for lg in books.ledgers),
        sum(lg.dead_letters for lg in books.ledgers),
        UNANSWERED_AFTER_MS // 1000,
        unanswered,
        p99,
        f"{share:.0%}" if share is not None else "?",
    )
    return share


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(opts: DevOptions) -> dict[str, object]:
    # Until run_dev installs its own handlers: a SIGTERM while the broker and Triton start
    # (or the model trains) unwinds through the stops below instead of orphaning them.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        repository = opts.model_repository.resolve()
        if opts.experiment:  # Triton loads its repository at start: the versions first
            ensure_model(repository)
            ensure_experiment_model(repository)
        stack = EmbeddedStack.start(opts.workdir, repository, die_with_parent=True)
        try:
            return asyncio.run(run_dev(opts, stack))
        finally:
            # run_dev's handlers are gone (SIGTERM is back to its default): a signal now would
            # kill this process mid-stop and orphan the broker and Triton. The stop is bounded.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stack.stop()
            # its broker is gone: tail and the others then say no dev stack runs there
            (opts.workdir / RUNNING_TOPOLOGY).unlink(missing_ok=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
