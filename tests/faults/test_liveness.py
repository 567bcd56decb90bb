"""Liveness of a real `pipeline run`: /startupz holds until the start finished, /livez answers
while the process is healthy, does not fail for a broker that stops answering (a restart
cannot fix an outage outside the process), and names a supervised loop that hangs.

The broker is stopped for real (SIGSTOP) while finished offsets wait to be committed: the
commit request never gets its answer (aiokafka waits for the coordinator for ever), so each
commit round gives up at its bound and the loop goes on. No real fault hangs a loop (an error
restarts it), so the hang is made by the one fault hook of pipeline/ticks.py
(PIPELINE_FAULT_HANG_LOOP, inert unless set): the watchdog hangs once a file exists."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from pipeline import kafka_clients
from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.dev import live_events
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.worker import PipelineProcess
from pipeline.recsys.generator import GeneratorConfig
from pipeline.topology.schema import Topology
from tests.integration.harness import create_topics, fresh_topology

pytestmark = [pytest.mark.fault, pytest.mark.integration]

STUCK_AFTER_MS = 2_000  # operations.liveness_stuck_after_ms: the commits loop (500 ms) gets 2 s
POLL_S = 0.05


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own: the session's must not be stopped."""
    broker = EmbeddedBroker(tmp_path)
    with broker.running(broker.listening, 30, "listening"):
        yield broker


def probe(port: int, path: str) -> tuple[int, str]:
    """Status and body; (0, "") while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()
    except (OSError, http.client.HTTPException):
        return 0, ""


def scraped(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``check`` (run in a thread: it may block on a socket) holds."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not {what} within {timeout_s} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - started


async def produce_until(topology: Topology, stop: asyncio.Event, rate: float = 300.0) -> None:
    """Events at ``rate``/s until ``stop``; acknowledgements are not waited for."""
    producer = kafka_clients.producer(topology.broker, client_suffix="-test", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for sent, event in enumerate(live_events(GeneratorConfig(seed=11), 100_000)):
            if stop.is_set():
                break
            event["ts"] = time.time_ns() // 1_000_000
            key = str(event["user_id"]).encode()
            await producer.send(topology.source.topics[0], orjson.dumps(event), key=key)
            await asyncio.sleep(max(0.0, (sent + 1) / rate - (time.monotonic() - started)))
    finally:
        with contextlib.suppress(Exception):  # bounded: the broker may still be stalled
            await asyncio.wait_for(producer.stop(), 10)


async def stall_while_offsets_wait(proc: PipelineProcess, broker: EmbeddedBroker) -> None:
    """SIGSTOP the broker right after a scrape saw events finish and no commit land since the
    scrape before: finished offsets wait for the next commit, whose request cannot be answered."""
    before = await asyncio.to_thread(proc.metrics)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        now = await asyncio.to_thread(proc.metrics)
        committed = scraped(now, "pipeline_offset_commits_total")
        if committed == scraped(before, "pipeline_offset_commits_total") and scraped(
            now, "pipeline_events_finished_total"
        ) > scraped(before, "pipeline_events_finished_total"):
            broker.signal(signal.SIGSTOP)
            return
        before = now
    raise AssertionError("no moment with finished offsets waiting for their commit")


async def test_liveness_outlasts_a_stopped_broker_and_names_a_hung_loop(
    stack: EmbeddedStack, own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topology = fresh_topology(
        stack,
        broker={"bootstrap_servers": own_broker.bootstrap},
        source={"commit_interval_ms": 500, "drain_timeout_ms": 2_000},
        operations={"liveness_stuck_after_ms": STUCK_AFTER_MS},
    )
    await create_topics(topology)
    trigger = tmp_path / "hang-the-watchdog"
    proc = PipelineProcess(topology, tmp_path, env={"PIPELINE_FAULT_HANG_LOOP": f"watchdog:{trigger}"})
    port = proc.metrics_port
    stop_producing = asyncio.Event()
    producing: asyncio.Task[None] | None = None
    outage: list[tuple[int, str]] = []
    try:
        proc.start()
        await until(lambda: probe(port, "/startupz")[0] != 0, 20, "serving")
        # The group join takes seconds on the embedded broker: the start is still on.
        starting = probe(port, "/startupz"), probe(port, "/livez")
        await until(lambda: probe(port, "/startupz")[0] == 200, 30, "started")
        producing = asyncio.create_task(produce_until(topology, stop_producing))
        await until(lambda: scraped(proc.metrics(), "pipeline_offset_commits_total") >= 2, 15, "committing")
        healthy = probe(port, "/livez")

        await stall_while_offsets_wait(proc, own_broker)
        stop_producing.set()
        outage_ends = time.monotonic() + 2 * STUCK_AFTER_MS / 1000 + 1  # past liveness' bound
        while time.monotonic() < outage_ends:
            outage.append(await asyncio.to_thread(probe, port, "/livez"))
            await asyncio.sleep(0.2)
        during = proc.metrics()
        own_broker.signal(signal.SIGCONT)
        committed = scraped(during, "pipeline_offset_commits_total")
        await until(
            lambda: scraped(proc.metrics(), "pipeline_offset_commits_total") > committed,
            15,
            "committing again",
        )

        trigger.touch()
        named_after_s = await until(lambda: probe(port, "/livez")[0] == 503, 8, "/livez 503")
        hung, metrics = probe(port, "/livez"), proc.metrics()
        assert proc.alive()
    finally:
        own_broker.signal(signal.SIGCONT)
        stop_producing.set()
        if producing is not None:
            await asyncio.wait_for(asyncio.gather(producing, return_exceptions=True), 15)
        await asyncio.to_thread(proc.stop)

    print(
        f"\nLIVENESS: {len(outage)} probes 200 through the outage; 503 {named_after_s:.1f} s after the hang"
    )
    assert starting == ((503, "starting\n"), (200, "ok, starting\n"))
    assert healthy == (200, "ok\n")
    assert outage and all(answer == (200, "ok\n") for answer in outage), outage
    assert scraped(during, "pipeline_offset_commit_failures_total") >= 1  # the bounded rounds, seen
    assert scraped(during, 'pipeline_loop_round_age_seconds{loop="commits"}') < STUCK_AFTER_MS / 1000
    assert hung[0] == 503 and re.fullmatch(r"loop watchdog: no round for \d+ s\n", hung[1]), hung
    # the bound (2 s since the last round) plus a watchdog interval, with a margin for the probes
    assert named_after_s < STUCK_AFTER_MS / 1000 + 1.0 + 1.5
    assert scraped(metrics, "pipeline_loops_dead") == 1
    assert scraped(metrics, 'pipeline_loop_round_age_seconds{loop="consume"}') < 1  # it polls on
