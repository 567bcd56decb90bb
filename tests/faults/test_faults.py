"""Fault suite with real processes: each case streams a known set of events through a real
`pipeline run` process while a real component is killed, stalled or joined, and ends with
the audit of the topics: nothing lost, duplicates counted.

Run alone with `pytest -m fault -s` to see the per-case summary lines."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.triton import EmbeddedTriton
from tests.faults.harness import CaseResult, PipelineProcess, run_case, wait_for_output_after
from tests.integration.harness import fresh_topology

pytestmark = [pytest.mark.fault, pytest.mark.integration]


@pytest.fixture
def own_triton(stack: EmbeddedStack, tmp_path: Path) -> Iterator[EmbeddedTriton]:
    """A Triton of this test's own (the session's one must survive the fault)."""
    triton = EmbeddedTriton(tmp_path, stack.model_repository)
    triton.start()
    try:
        triton.wait_until(triton.ready, 120, "ready")
        yield triton
    finally:
        triton.stop()


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


def test_triton_killed_and_restarted(stack, own_triton, tmp_path, pipelines) -> None:
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

    result = asyncio.run(run_case(topology, 4000, 500, fault))
    report("triton killed 5 s", result)
    assert result.recovered_at > 0
    assert proc.alive()
    # The outage was waited out by the circuit breaker, not dead-lettered.
    assert result.audit["dead_letters"] == 0


def test_triton_stalled_past_the_deadline(stack, own_triton, tmp_path, pipelines) -> None:
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

    result = asyncio.run(run_case(topology, 4000, 500, fault))
    report("triton SIGSTOP 5 s, deadline 2.5 s", result)
    reasons = result.audit["dead_letter_reasons"]
    assert set(reasons) <= {"deadline_exceeded"}, reasons
    assert reasons.get("deadline_exceeded", 0) > 0  # the stall outlived their budget
    assert result.recovered_at > 0 and proc.alive()


def test_broker_stalled(stack, tmp_path, pipelines) -> None:
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

        result = asyncio.run(run_case(topology, 3000, 500, fault, timeout_s=180))
        report("broker SIGSTOP 10 s", result)
        assert proc.alive()
    finally:
        for p in pipelines:
            p.stop()
        broker.stop()


def test_pipeline_killed_and_restarted(stack, tmp_path, pipelines) -> None:
    topology = fresh_topology(stack, source={"commit_interval_ms": 1000})
    first = start_pipeline(topology, tmp_path, pipelines, "first")

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(3)
        first.kill()
        result.fault_at = time.monotonic()
        before = result.ledger.recommendations
        start_pipeline(topology, tmp_path, pipelines, "second")
        result.recovered_at = await wait_for_output_after(result.ledger, before)

    result = asyncio.run(run_case(topology, 4000, 500, fault))
    report("pipeline SIGKILL + restart", result)
    assert result.audit["dead_letters"] == 0
    # At-least-once: what was done but not yet committed is done again, and counted.
    assert result.audit["duplicates"] >= 0


def test_second_worker_joins_then_leaves(stack, tmp_path, pipelines) -> None:
    topology = fresh_topology(stack)
    first = start_pipeline(topology, tmp_path, pipelines, "first")

    async def fault(result: CaseResult) -> None:
        await asyncio.sleep(2)
        second = await asyncio.to_thread(start_pipeline, topology, tmp_path, pipelines, "second")
        result.fault_at = time.monotonic()
        await asyncio.sleep(4)
        await asyncio.to_thread(second.stop)  # SIGTERM: drains, commits, leaves the group
        result.recovered_at = time.monotonic()

    result = asyncio.run(run_case(topology, 5000, 500, fault))
    report("second worker joins, then leaves", result)
    assert first.alive()
    assert result.audit["dead_letters"] == 0
    second_log = (tmp_path / "second.log").read_text()
    assert "assigned" in second_log, "the second worker never got partitions"


def test_model_rejects_some_inputs(stack, tmp_path, pipelines) -> None:
    from pipeline.devstack.dev import live_events
    from pipeline.recsys.generator import GeneratorConfig

    topology = fresh_topology(stack)
    start_pipeline(topology, tmp_path, pipelines)
    events = list(live_events(GeneratorConfig(seed=3), 2000))
    for i in range(0, 2000, 100):  # one in 100 names an item outside the catalogue
        events[i]["item_id"] = 10**9 + i
        events[i]["user_id"] = 900_000 + i  # a user of its own: no history from others

    async def no_fault(result: CaseResult) -> None:
        return None

    result = asyncio.run(run_case(topology, len(events), 1000, no_fault, events=events))
    report("model answers INVALID_ARGUMENT for 1 %", result)
    assert result.audit["dead_letter_reasons"] == {"invalid_argument": 20}
