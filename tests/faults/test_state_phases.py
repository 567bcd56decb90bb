"""Users' histories through the ordinary operations of an always-on service, as `pipeline
run` processes on the real broker and Triton: a deploy (SIGTERM, a new worker on a fresh
disk), a scale-out (a second worker joins), a scale-in (it leaves), a crash (kill -9, back
on its disk) and products the model does not know. Nothing is lost; each user's history in
the changelog equals the one rebuilt from the input topic; in every phase the share of
recommendations naming an item of the user's recent history stays at the warm phase's (the
model never names one it was sent); users who touch an unknown product keep being
recommended, with no dead letters."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.devstack.dev import live_events
from pipeline.devstack.worker import PipelineProcess
from pipeline.kafka_io import read_to_end
from pipeline.recsys.generator import GeneratorConfig
from pipeline.state.quality import changelog_mismatches, history_share
from pipeline.topology.schema import Topology
from tests.faults.harness import CaseResult, run_case
from tests.integration.harness import create_topics, fresh_topology

USERS, ITEMS = 400, 5_000  # the stack's model knows items 0..ITEMS-1
RATE, PHASE_S = 300, 4.0
PHASES = ["warm", "restart", "join", "leave", "kill -9", "new items"]
HISTORY = 16


def worker(topology: Topology, state_dir: Path, name: str) -> PipelineProcess:
    t = topology.model_copy(update={"state": topology.state.model_copy(update={"dir": state_dir})})
    return PipelineProcess(t, state_dir.parent / f"{name}-run", name)


def events() -> list[dict[str, object]]:
    """A steady stream over every phase; in the last, 5 % name a product newer than the model."""
    count = int(RATE * PHASE_S * len(PHASES))
    generated = list(live_events(GeneratorConfig(seed=23, users=USERS, items=ITEMS), count))
    last = int(RATE * PHASE_S * (len(PHASES) - 1))
    for n, event in enumerate(generated[last:]):
        if n % 20 == 0:
            event["item_id"] = ITEMS + n % 50
    return generated


async def test_histories_survive_restart_join_leave_and_kill(stack, tmp_path: Path) -> None:
    topology = fresh_topology(
        stack, source={"commit_interval_ms": 500}, state={"dir": str(tmp_path / "unused")}
    )
    stream = events()
    phase_of = {
        str(e["event_id"]): min(i // int(RATE * PHASE_S), len(PHASES) - 1) for i, e in enumerate(stream)
    }
    await create_topics(topology)  # state takes the input's partition count at start
    a = worker(topology, tmp_path / "a", "a")
    await asyncio.to_thread(a.start_ready, 90)
    workers = [a]

    async def phases(result: CaseResult) -> None:
        started = time.monotonic()

        async def until_phase(n: int) -> None:
            await asyncio.sleep(max(0.0, started + n * PHASE_S - time.monotonic()))

        await until_phase(1)  # restart: a deploy, the new worker on a fresh disk
        a.signal(signal.SIGTERM, group=False)
        await asyncio.to_thread(a.proc.wait, a.stop_grace_s)  # type: ignore[union-attr]
        a2 = worker(topology, tmp_path / "a2", "a2")
        await asyncio.to_thread(a2.start_ready, 90)
        workers.append(a2)
        await until_phase(2)  # join
        b = worker(topology, tmp_path / "b", "b")
        await asyncio.to_thread(b.start_ready, 90)
        workers.append(b)
        await until_phase(3)  # leave
        b.signal(signal.SIGTERM, group=False)
        await asyncio.to_thread(b.proc.wait, b.stop_grace_s)  # type: ignore[union-attr]
        await until_phase(4)  # kill -9, back on its own disk
        a2.signal(signal.SIGKILL, group=False)
        await asyncio.to_thread(a2.proc.wait, 10)  # type: ignore[union-attr]
        a3 = worker(topology, tmp_path / "a2", "a3")
        await asyncio.to_thread(a3.start_ready, 90)
        workers.append(a3)

    try:
        result = await run_case(topology, len(stream), RATE, phases, timeout_s=180, events=stream)
    finally:
        for w in workers:
            w.stop(w.stop_grace_s)
    print("\nSTATE " + result.line("restart, join, leave, kill -9, new items"))
    assert result.audit["lost"] == 0, result.line("state phases")
    assert result.audit["dead_letters"] == 0  # unknown products included: no invalid_argument
    # the killed worker's uncommitted work: up to its backlog after the leave (its inputs are
    # finished once their changelog round is acknowledged too), seconds of input at most
    assert result.audit["duplicates"] <= 8 * RATE

    inputs = [r async for r in read_to_end(topology.broker, topology.source.topics[0])]
    outputs = [
        orjson.loads(r.value or b"{}") async for r in read_to_end(topology.broker, topology.sink.topic)
    ]

    def phase(rec: dict[str, Any]) -> str:
        return PHASES[phase_of[max(rec["sources"], key=lambda s: s["offset"])["event_id"]]]

    measure = history_share(inputs, outputs, HISTORY, group_of=phase)
    shares = {p: measure.by_group.get(p, (0, 0)) for p in PHASES}
    print("history share by phase: " + ", ".join(f"{p} {n}/{a}" for p, (n, a) in shares.items()))
    assert all(a for _, a in shares.values())
    warm = shares["warm"][0] / shares["warm"][1]
    assert all(n / a <= warm + 0.002 for n, a in shares.values())

    # every user's history as the changelog keeps it (its last record) = rebuilt from the inputs
    changelog = [r async for r in read_to_end(topology.broker, topology.changelog_topic)]
    wrong = changelog_mismatches(inputs, changelog, HISTORY)
    assert wrong == [], f"{len(wrong)} users' histories differ, e.g. {wrong[:5]}"

    # who touched a product the model does not know keeps being recommended
    touched = {e["user_id"] for e in stream if int(e["item_id"]) >= ITEMS}  # type: ignore[call-overload]
    recommended_after = {
        rec["user_id"]
        for rec in outputs
        if any(phase_of[s["event_id"]] == len(PHASES) - 1 for s in rec["sources"])
    }
    assert len(touched & recommended_after) >= 0.99 * len(touched)
