"""Fault suite with real processes: each case streams a known set of events through a real
`pipeline run` process while a real component is killed, stalled or joined, and ends with
the audit of the topics: nothing lost, duplicates counted.

Run alone with `pytest -m fault -s` to see the per-case summary lines."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from tritonclient.grpc import InferenceServerClient

from pipeline import kafka_clients
from pipeline.audit import Ledger
from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.dev import live_events
from pipeline.devstack.poison_producer import produce_undecodable
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.triton import EmbeddedTriton
from pipeline.devstack.worker import PipelineProcess
from pipeline.kafka_io import read_to_end
from pipeline.recsys.generator import GeneratorConfig
from tests.faults.harness import CaseResult, produce_steady, run_case, wait_for_output_after
from tests.integration.harness import committed_offsets, create_topics, fresh_topology, read_values

pytestmark = [pytest.mark.fault, pytest.mark.integration]


@pytest.fixture
def own_triton(stack: EmbeddedStack, tmp_path: Path) -> Iterator[EmbeddedTriton]:
    """A Triton of this test's own (the session's one must survive the fault)."""
    triton = EmbeddedTriton(tmp_path, stack.model_repository)
    with triton.running(triton.ready, 120):
        yield triton


@pytest.fixture
def pipelines(tmp_path: Path) -> Iterator[list[PipelineProcess]]:
    started: list[PipelineProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start_pipeline(
    topology, tmp_path: Path, pipelines: list[PipelineProcess], name: str = "pipeline"
) -> PipelineProcess:
    proc = PipelineProcess(topology, tmp_path, name)
    pipelines.append(proc)
    proc.start_ready()
    return proc


def report(case: str, result: CaseResult) -> None:
    print("\nFAULT " + result.line(case))
    assert result.audit["lost"] == 0, result.line(case)


async def test_triton_killed_and_restarted(stack, own_triton, tmp_path, pipelines) -> None:
    topology = fresh_topology(stack, model={"url": own_triton.grpc_url, "timeout_ms": 1000})
    proc = start_pipeline(topology, tmp_path, pipelines)

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(2)
        own_triton.kill()
        result.fault_at = time.monotonic()
        before = result.ledger.recommendations
        await asyncio.sleep(5)
        own_triton.start()
        result.recovered_at = await wait_for_output_after(result.ledger, before)

    result = await run_case(topology, 4000, 500, fault)
    report("triton killed 5 s", result)
    assert result.recovered_at > 0
    assert proc.alive()
    # The outage was waited out by the circuit breaker, not dead-lettered.
    assert result.audit["dead_letters"] == 0


async def test_triton_stalled_past_the_deadline(stack, own_triton, tmp_path, pipelines) -> None:
    topology = fresh_topology(
        stack,
        model={
            "url": own_triton.grpc_url,
            "timeout_ms": 500,
            "circuit_breaker": {"open_ms": 250, "max_open_ms": 1000},
        },
        deadline={"end_to_end_ms": 2500, "stale_policy": "dead_letter"},
    )
    proc = start_pipeline(topology, tmp_path, pipelines)

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(2)
        # The server process only: stopping its Python-backend stub too makes the stub's
        # interprocess lock time out and the server abort on SIGCONT (seen with 2.51).
        own_triton.signal(signal.SIGSTOP, group=False)
        result.fault_at = time.monotonic()
        before = result.ledger.recommendations
        await asyncio.sleep(5)
        own_triton.signal(signal.SIGCONT, group=False)
        result.recovered_at = await wait_for_output_after(result.ledger, before)

    result = await run_case(topology, 4000, 500, fault)
    report("triton SIGSTOP 5 s, deadline 2.5 s", result)
    reasons = result.audit["dead_letter_reasons"]
    assert set(reasons) <= {"deadline_exceeded"}, reasons
    assert reasons.get("deadline_exceeded", 0) > 0  # the stall outlived their budget
    assert result.recovered_at > 0 and proc.alive()


async def test_broker_stalled(stack, tmp_path, pipelines) -> None:
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    try:
        broker.wait_until(broker.listening, 30, "listening")
        topology = fresh_topology(stack, broker={"bootstrap_servers": broker.bootstrap})
        proc = start_pipeline(topology, tmp_path, pipelines)

        async def fault(result: CaseResult) -> None:
            await asyncio.sleep(2)
            broker.signal(signal.SIGSTOP)
            result.fault_at = time.monotonic()
            before = result.ledger.recommendations
            await asyncio.sleep(10)
            broker.signal(signal.SIGCONT)
            result.recovered_at = await wait_for_output_after(result.ledger, before)

        result = await run_case(topology, 3000, 500, fault, timeout_s=180)
        report("broker SIGSTOP 10 s", result)
        assert proc.alive()
    finally:
        for p in pipelines:
            p.stop()
        broker.stop()


async def test_pipeline_killed_and_restarted(stack, tmp_path, pipelines) -> None:
    topology = fresh_topology(stack, source={"commit_interval_ms": 1000})
    first = start_pipeline(topology, tmp_path, pipelines, "first")

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(3)
        first.kill()
        result.fault_at = time.monotonic()
        before = result.ledger.recommendations
        start_pipeline(topology, tmp_path, pipelines, "second")
        result.recovered_at = await wait_for_output_after(result.ledger, before)

    result = await run_case(topology, 4000, 500, fault)
    report("pipeline SIGKILL + restart", result)
    assert result.audit["dead_letters"] == 0
    # At-least-once: what was done but not yet committed is done again, and counted: at most
    # what the killed worker finished since its last commit (1 s at 500 events/s) plus what
    # it had in flight.
    assert result.audit["duplicates"] <= 1000, result.line("pipeline SIGKILL + restart")


async def test_items_the_model_does_not_know_block_nobody(stack, tmp_path, pipelines) -> None:
    """5 % of events name a product newer than the model, on users who come back: the
    model ignores the unknown items (they stay in the users' histories), so every event is
    answered and nothing is dead-lettered."""
    topology = fresh_topology(stack)
    start_pipeline(topology, tmp_path, pipelines)
    events = list(live_events(GeneratorConfig(seed=3), 2000))
    for i in range(0, 2000, 20):
        events[i]["item_id"] = 10**9 + i

    async def no_fault(result: CaseResult) -> None:
        return None

    result = await run_case(topology, len(events), 1000, no_fault, events=events)
    report("5 % of events name an item the model does not know", result)
    assert result.audit["dead_letters"] == 0 and result.audit["lost"] == 0


def _paused(proc: PipelineProcess) -> bool:
    try:
        return "pipeline_source_paused 1.0" in proc.metrics()
    except OSError:
        return False


async def _until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s}s")
        await asyncio.sleep(0.2)


async def _restart_and_wait_for_output(triton: EmbeddedTriton, result: CaseResult, before: int) -> float:
    await asyncio.to_thread(triton.start)
    await asyncio.to_thread(triton.wait_until, triton.ready, 120, "ready")
    return await wait_for_output_after(result.ledger, before)


async def test_rebalance_while_paused_by_backpressure(stack, own_triton, tmp_path, pipelines) -> None:
    """Finding 1 of the reliability review: Triton down, the source paused on its credits, a
    second worker joins and leaves, Triton returns. The first worker must take up the whole
    backlog (it used to wait forever on a wake-up the rebalance had cleared)."""
    topology = fresh_topology(
        stack,
        model={"url": own_triton.grpc_url, "timeout_ms": 500},
        source={
            "credits": {"high_watermark": 600, "low_watermark": 300},
            "drain_timeout_ms": 2000,
            "stall_after_ms": 5000,
        },
        deadline={"end_to_end_ms": 600_000},  # the outage must not dead-letter the backlog
    )
    first = start_pipeline(topology, tmp_path, pipelines, "first")

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(1)
        own_triton.kill()
        result.fault_at = time.monotonic()
        await _until(lambda: _paused(first), 60, "paused by backpressure")
        # Triton is down: the second worker joins the group but holds until the model is
        # checked, so it is never ready; its assignment is what matters here.
        second = PipelineProcess(topology, tmp_path, "second")
        pipelines.append(second)
        second.start()
        await _until(lambda: "assigned [" in second.log_path.read_text(errors="replace"), 60, "assigned")
        await asyncio.sleep(3)
        await asyncio.to_thread(second.stop)  # leaves the group: the first gets all back
        await asyncio.sleep(2)
        before = result.ledger.recommendations
        result.recovered_at = await _restart_and_wait_for_output(own_triton, result, before)

    result = await run_case(topology, 6000, 1000, fault, timeout_s=180)
    report("rebalance while paused (Triton down, credits 600)", result)
    assert first.alive()
    assert result.recovered_at > 0
    # Work of the revoked partitions that missed its drain (blocked on Triton) is dropped when
    # it finishes late instead of being written beside the new owner's; what remains is
    # what was finished but not yet committed when the partitions moved.
    assert result.audit["duplicates"] <= 600, result.line("rebalance while paused")


async def test_outage_longer_than_max_poll_interval(stack, own_triton, tmp_path, pipelines) -> None:
    """Finding 4: while every partition is paused the source keeps polling, so an outage
    longer than max_poll_interval_ms does not push the member out of its group."""
    topology = fresh_topology(
        stack,
        model={"url": own_triton.grpc_url, "timeout_ms": 500},
        source={
            "credits": {"high_watermark": 500, "low_watermark": 250},
            "max_poll_interval_ms": 3000,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        deadline={"end_to_end_ms": 600_000},
    )
    proc = start_pipeline(topology, tmp_path, pipelines)

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(1)
        own_triton.kill()
        result.fault_at = time.monotonic()
        await _until(lambda: _paused(proc), 60, "paused by backpressure")
        await asyncio.sleep(8)  # well past max_poll_interval_ms, all partitions paused
        before = result.ledger.recommendations
        result.recovered_at = await _restart_and_wait_for_output(own_triton, result, before)

    result = await run_case(topology, 3000, 1000, fault, timeout_s=180)
    report("outage past max_poll_interval_ms", result)
    log = (tmp_path / "pipeline.log").read_text()
    assert log.count("assigned [") == 1, "the member left its group and was assigned again"
    assert result.audit["duplicates"] == 0


async def test_sigterm_while_the_broker_is_stalled(stack, tmp_path, pipelines) -> None:
    """Finding 3: the stop is bounded by drain_timeout_ms + 5 s even when the final commit
    cannot reach the broker; the exit code says the stop was not clean; a restarted worker
    redoes the uncommitted work and nothing is lost."""
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    try:
        broker.wait_until(broker.listening, 30, "listening")
        topology = fresh_topology(
            stack, broker={"bootstrap_servers": broker.bootstrap}, source={"drain_timeout_ms": 3000}
        )
        first = start_pipeline(topology, tmp_path, pipelines, "first")
        stopped_in: list[float] = []

        async def fault(result: CaseResult) -> None:
            await asyncio.sleep(2)
            broker.signal(signal.SIGSTOP)
            result.fault_at = time.monotonic()
            await asyncio.sleep(1)
            first.signal(signal.SIGTERM, group=False)
            t0 = time.monotonic()
            assert first.proc is not None
            await asyncio.to_thread(first.proc.wait, 30)
            stopped_in.append(time.monotonic() - t0)
            broker.signal(signal.SIGCONT)
            before = result.ledger.recommendations
            await asyncio.to_thread(start_pipeline, topology, tmp_path, pipelines, "second")
            result.recovered_at = await wait_for_output_after(result.ledger, before)

        result = await run_case(topology, 2500, 500, fault, timeout_s=180)
        report("SIGTERM during a broker stall", result)
        assert stopped_in[0] <= 3 + 5 + 0.5, f"stop took {stopped_in[0]:.1f}s"  # (+ process exit)
        assert first.proc is not None and first.proc.returncode == 3  # not a clean stop
        assert result.audit["duplicates"] <= 1000  # at most what was finished, not committed
    finally:
        for p in pipelines:
            p.stop()
        broker.stop()


async def test_a_second_signal_exits_at_once(stack, own_triton, tmp_path, pipelines) -> None:
    """Triton stalled with events in flight: the first SIGTERM's drain waits (up to 30 s
    here); a second SIGTERM ends the process at once, with 128 + the signal's number."""
    topology = fresh_topology(
        stack, model={"url": own_triton.grpc_url, "timeout_ms": 60_000}, source={"drain_timeout_ms": 30_000}
    )
    await create_topics(topology)
    proc = start_pipeline(topology, tmp_path, pipelines)
    own_triton.signal(signal.SIGSTOP, group=False)
    try:
        events = list(live_events(GeneratorConfig(seed=5), 200))
        await produce_steady(topology, events, 2000, Ledger())
        deadline = time.monotonic() + 30
        while "pipeline_in_flight_events 0.0" in proc.metrics() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        proc.signal(signal.SIGTERM, group=False)
        await asyncio.sleep(1)
        assert proc.alive(), "the first signal's drain should still be waiting for Triton"
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM, group=False)
        assert proc.proc is not None
        await asyncio.to_thread(proc.proc.wait, 10)
        assert time.monotonic() - t0 < 2
        assert proc.proc.returncode == 128 + signal.SIGTERM
    finally:
        own_triton.signal(signal.SIGCONT, group=False)


async def test_records_the_client_cannot_decode(stack, tmp_path, pipelines) -> None:
    """Finding 5: a header key that is not UTF-8 makes aiokafka raise inside getmany. The
    pipeline dead-letters such records (reason undecodable_record, with their coordinates),
    recommends the good records around them, and keeps running: no crash, no restart loop."""
    topology = fresh_topology(stack)
    proc = start_pipeline(topology, tmp_path, pipelines)
    poison_offsets: list[int] = []

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(1)
        for partition in (0, 1, 2):  # mid-stream, between good records of each partition
            offsets = await asyncio.to_thread(
                produce_undecodable,
                topology.broker.bootstrap_servers,
                topology.source.topics[0],
                partition,
                1,
            )
            poison_offsets.extend(offsets)
            await asyncio.sleep(0.5)

    result = await run_case(topology, 3000, 1000, fault)
    report("3 undecodable records among 3,000", result)
    assert len(poison_offsets) == 3
    assert result.audit["events_in"] == 3003
    assert result.audit["dead_letter_reasons"] == {"undecodable_record": 3}
    assert result.audit["duplicates"] == 0
    assert proc.alive()
    log = (tmp_path / "pipeline.log").read_text()
    assert log.count("cannot be decoded") == 3
    assert log.count("assigned [") == 1  # never restarted, never left its group


# A version that refuses every request as invalid (say, trained on another catalogue): the
# one failure the breaker cannot see (the server answers) and bisecting cannot narrow down.
# It raises: Triton 2.51's Python backend crashes (SIGSEGV) when execute() returns an error
# response for every request of a call, and answers each request with the error if it raises.
BROKEN_EXECUTE = """
    def execute(self, requests):
        raise ValueError("invalid input for this version")
"""


def _new_version(repository: Path, version: int, broken: bool = False) -> None:
    """A copy of version 1 as ``version``; ``broken``: every request answers an error."""
    model = repository / "recommender"
    target = model / str(version)
    shutil.copytree(model / "1", target, ignore=shutil.ignore_patterns("__pycache__"))
    if broken:
        source = (target / "model.py").read_text()
        head = source[: source.index("    def execute(self, requests):")]
        (target / "model.py").write_text(head + BROKEN_EXECUTE)


@pytest.fixture
def controlled_triton(stack: EmbeddedStack, tmp_path: Path) -> Iterator[tuple[EmbeddedTriton, Path]]:
    """A Triton of this test's own whose models are loaded on request (model control)."""
    repository = tmp_path / "repository"
    shutil.copytree(stack.model_repository, repository, ignore=shutil.ignore_patterns("__pycache__"))
    triton = EmbeddedTriton(
        tmp_path, repository, ("--model-control-mode=explicit", "--load-model=recommender")
    )
    with triton.running(triton.ready, 120):
        yield triton, repository


def _load(triton: EmbeddedTriton) -> None:
    InferenceServerClient(triton.grpc_url).load_model("recommender")


async def test_model_reloaded_mid_stream(stack, controlled_triton, tmp_path, pipelines) -> None:
    """Finding 6: a new model version loaded mid-stream (Triton's model control) is not a
    reason to dead-letter anything; the outputs name the new version afterwards."""
    triton, repository = controlled_triton
    topology = fresh_topology(stack, model={"url": triton.grpc_url})
    start_pipeline(topology, tmp_path, pipelines)

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(2)
        _new_version(repository, 2)
        result.fault_at = time.monotonic()
        await asyncio.to_thread(_load, triton)
        result.recovered_at = time.monotonic()

    result = await run_case(topology, 4000, 500, fault)
    report("model version 2 loaded mid-stream", result)
    assert result.audit["dead_letters"] == 0
    assert result.audit["duplicates"] == 0
    versions = {
        orjson.loads(r.value)["model"]["version"] for r in await read_values(topology, topology.sink.topic)
    }
    assert {"1", "2"} <= versions, versions


async def test_a_broken_model_version_is_held_not_drained(
    stack, controlled_triton, tmp_path, pipelines
) -> None:
    """Finding 6: a version that fails every request trips the dead-letter budget: the
    pipeline holds consumption (not ready) instead of dead-lettering the backlog; a fixed
    version loaded later is used once the hold ends, and nothing is lost."""
    triton, repository = controlled_triton
    topology = fresh_topology(
        stack,
        model={"url": triton.grpc_url},
        dead_letter_budget={"window_ms": 5000, "min_events": 50, "hold_ms": 8000},
    )
    proc = start_pipeline(topology, tmp_path, pipelines)
    held: list[bool] = []

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(2)
        _new_version(repository, 2, broken=True)
        await asyncio.to_thread(_load, triton)
        result.fault_at = time.monotonic()
        await _until(lambda: not proc.ready(), 30, "holding (not ready)")
        held.append("pipeline_dead_letter_budget_holding 1.0" in proc.metrics())
        _new_version(repository, 3)
        before = result.ledger.recommendations
        await asyncio.to_thread(_load, triton)
        result.recovered_at = await wait_for_output_after(result.ledger, before, timeout_s=120)

    result = await run_case(topology, 6000, 500, fault, timeout_s=180)
    report("broken model version, then a fixed one", result)
    assert held == [True]
    assert "DEAD-LETTER BUDGET" in (tmp_path / "pipeline.log").read_text()
    dead = result.audit["dead_letters"]
    assert isinstance(dead, int) and dead < 6000 / 3, result.line("broken version")
    assert result.recovered_at > 0 and proc.alive()


async def _committed_to_the_end(topology) -> bool:
    """The group's committed offsets reached every input partition's end."""
    ends: dict[int, int] = {}
    async for rec in read_to_end(topology.broker, topology.source.topics[0]):
        ends[rec.partition] = rec.offset + 1
    return await committed_offsets(topology, ends) == ends


async def _committed_eventually(topology, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await _committed_to_the_end(topology):
            return True
        await asyncio.sleep(0.5)
    return False


async def test_oversized_input_and_oversized_output(stack, tmp_path, pipelines) -> None:
    """Finding 2: a 1.2 MB input's dead letter would exceed the producer's 1 MiB request
    limit; a user with 4,500 events of long ids in one window would make a recommendation
    past it if it listed them all; an input carrying a 1.1 MB `tracestate` (a carried
    header) makes one that is. None may pin its partition: the dead letter carries a bounded
    copy, the long list is capped, the refused recommendation becomes a dead letter of its
    input (its headers bounded too), and offsets reach the end."""
    topology = fresh_topology(
        stack,
        source={"max_poll_records": 5000},
        window={"max_ms": 1000, "max_events": 4096},
    )
    proc = start_pipeline(topology, tmp_path, pipelines)
    events = list(live_events(GeneratorConfig(seed=11), 4500))
    for i, event in enumerate(events):  # one user, long ids
        event["user_id"] = 4242
        event["event_id"] = f"{i:08d}-" + "x" * 240
    carried = next(live_events(GeneratorConfig(seed=12), 1)) | {"user_id": 777_777}

    async def oversized(result: CaseResult) -> None:
        producer = kafka_clients.producer(topology.broker, client_suffix="-test", max_request_size=4_000_000)
        await producer.start()
        try:
            source = topology.source.topics[0]
            big = await producer.send_and_wait(source, b"{" + b" " * 1_200_000 + b"}", key=b"1")
            result.ledger.add_input((big.topic, big.partition, big.offset), big.timestamp)
            header = [("tracestate", b"v" * 1_100_000)]
            meta = await producer.send_and_wait(source, orjson.dumps(carried), key=b"777777", headers=header)
            result.ledger.add_input((meta.topic, meta.partition, meta.offset), meta.timestamp, 777_777)
        finally:
            await producer.stop()

    result = await run_case(topology, len(events), 5000, oversized, events=events)
    report("1.2 MB input, a 4,500-event user, a 1.1 MB carried header", result)
    assert result.audit["lost"] == 0 and result.audit["duplicates"] == 0, result.line("oversized")
    reasons = result.audit["dead_letter_reasons"]
    assert reasons == {"oversized": 1, "output_refused": 1}, reasons
    assert proc.alive()
    assert 'error="MessageSizeTooLargeError"' in proc.metrics()
    assert await _committed_eventually(topology), "a refused record pinned its partition's offsets"
    dead = {
        dict(r.headers)["dlq.reason"]: r for r in await read_values(topology, topology.sink.dead_letter_topic)
    }
    big = dead[b"oversized"]
    assert len(big.value) == 900_000 and dict(big.headers)["dlq.truncated_from"] == b"1200002"
    refused = dict(dead[b"output_refused"].headers)
    assert refused["dlq.headers_dropped"] == b"1" and "tracestate" not in refused
    outputs = [orjson.loads(r.value) for r in await read_values(topology, topology.sink.topic)]
    assert sum(doc["source_count"] for doc in outputs if doc["user_id"] == 4242) == 4500
