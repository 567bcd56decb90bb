"""The operations endpoint: routes, the probes and what liveness is judged on, the bind
address, and bounds on what a client may send."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest

from pipeline.devstack.process import free_port
from pipeline.health import Liveness, OpsServer
from pipeline.metrics import Metrics
from pipeline.testing import running, topology
from pipeline.ticks import every, supervised


@dataclass
class Pipeline:
    """What the endpoint asks, answered as a test sets it."""

    ready: bool = True
    started: bool = True
    problems: list[str] = field(default_factory=list)

    def is_ready(self) -> bool:
        return self.ready

    def is_started(self) -> bool:
        return self.started

    def liveness_problems(self) -> list[str]:
        return self.problems


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def _get(port: int, path: str) -> tuple[int, bytes]:
    answer = await _exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@contextlib.asynccontextmanager
async def serving(
    ready: bool = True,
    read_timeout_s: float = 5.0,
    pipeline: Pipeline | None = None,
    **options: Any,
) -> AsyncIterator[tuple[int, OpsServer]]:
    """A started server and its port; stopped on leaving."""
    port = free_port()
    server = OpsServer(Metrics(), pipeline or Pipeline(ready), port, read_timeout_s=read_timeout_s, **options)
    await server.start()
    try:
        yield port, server
    finally:
        await server.stop()


async def test_routes_answer_and_it_binds_loopback_by_default() -> None:
    async with serving() as (port, server):
        assert server.host == "127.0.0.1"
        ready, metrics, missing = [
            await _exchange(port, f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for p in ("/readyz", "/metrics", "/nope")
        ]
    assert ready.startswith(b"HTTP/1.1 200") and metrics.startswith(b"HTTP/1.1 200")
    assert b"pipeline_stalled" in metrics
    assert missing.startswith(b"HTTP/1.1 404")


async def test_not_ready_is_503() -> None:
    async with serving(ready=False) as (port, _):
        answer = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503")


async def test_oversized_headers_are_refused() -> None:
    long_line = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    many = b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"
    async with serving() as (port, _):
        answers = [await _exchange(port, long_line), await _exchange(port, many)]
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 431")


async def test_a_silent_client_is_dropped_after_the_read_timeout() -> None:
    async with serving(read_timeout_s=0.3) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)  # the server closes: EOF
        writer.close()
        waited = time.monotonic() - started
    assert data == b"" and 0.25 < waited < 2


# ── the probes ───────────────────────────────────────────────────────────────────────────
async def test_startup_is_503_until_the_start_finished_and_liveness_200_meanwhile() -> None:
    pipeline = Pipeline(ready=False, started=False)
    async with serving(pipeline=pipeline) as (port, _):
        starting = [await _get(port, p) for p in ("/startupz", "/livez", "/healthz", "/readyz")]
        pipeline.started = pipeline.ready = True
        started = [await _get(port, p) for p in ("/startupz", "/livez", "/healthz", "/readyz")]
    assert starting == [
        (503, b"starting\n"),
        (200, b"ok, starting\n"),
        (200, b"ok, starting\n"),
        (503, b"not ready\n"),
    ]
    assert started == [(200, b"started\n"), (200, b"ok\n"), (200, b"ok\n"), (200, b"ready\n")]


async def test_liveness_is_503_naming_what_is_wrong_and_healthz_says_the_same() -> None:
    pipeline = Pipeline(problems=["loop commits: no round for 95 s", "loop watchdog: ended"])
    async with serving(pipeline=pipeline) as (port, _):
        livez, healthz = await _get(port, "/livez"), await _get(port, "/healthz")
        ready = await _get(port, "/readyz")  # readiness is its own question
    assert livez == healthz == (503, b"loop commits: no round for 95 s\nloop watchdog: ended\n")
    assert ready == (200, b"ready\n")


async def test_a_blocked_event_loop_fails_liveness_until_it_ticks_on_time_again() -> None:
    async with serving(lag_tick_s=0.05, lag_limit_s=0.2) as (port, server):
        await asyncio.sleep(0.12)  # a tick or two on time
        assert await _get(port, "/livez") == (200, b"ok\n")
        time.sleep(0.4)  # the blocking call under test
        await asyncio.sleep(0.001)  # the late tick runs
        measured = server.lag.lag_s
        blocked = await _get(port, "/livez")
        scraped = (await _get(port, "/metrics"))[1].decode()
        await asyncio.sleep(0.3)  # ticks on time again
        after = await _get(port, "/livez")
    assert 0.3 <= measured < 1.5
    assert blocked[0] == 503 and blocked[1].startswith(b"event loop: lag 0.")
    assert "pipeline_event_loop_lag_seconds" in scraped
    assert after == (200, b"ok\n")


async def test_a_ticker_gone_is_seen_as_a_loop_that_no_longer_ticks() -> None:
    async with serving(lag_tick_s=0.05, lag_limit_s=0.2) as (port, server):
        await asyncio.sleep(0.08)
        await server.lag.stop()
        await asyncio.sleep(0.35)
        status, body = await _get(port, "/livez")
    assert status == 503 and body.startswith(b"event loop: lag")


# ── liveness of the loops ────────────────────────────────────────────────────────────────
def _liveness(stuck_after_s: float = 60.0, running: bool = True) -> Liveness:
    return Liveness(Metrics(), stuck_after_s, lambda: running)


def test_a_paced_loop_without_a_round_past_its_bound_is_stuck() -> None:
    liveness = _liveness()
    commits, watchdog = liveness.watch("commits"), liveness.watch("watchdog")
    commits.paced(0.5)
    watchdog.paced(1.0)
    now = commits.last_round = watchdog.last_round = 1_000.0
    assert liveness.problems(now + 59) == []
    watchdog.last_round = now + 90  # the watchdog rounds on; the commits loop does not
    assert liveness.problems(now + 95) == ["loop commits: no round for 95 s"]


def test_a_long_interval_gets_three_of_its_intervals() -> None:
    liveness = _liveness(stuck_after_s=10)
    guard = liveness.watch("experiment guard")
    guard.paced(30.0)
    assert liveness.problems(guard.last_round + 89) == []
    assert liveness.problems(guard.last_round + 91) == ["loop experiment guard: no round for 91 s"]


def test_an_ended_loop_is_dead_while_running_and_an_unpaced_one_only_when_ended() -> None:
    liveness = _liveness()
    changelog, restores = liveness.watch("changelog"), liveness.watch("state restores")
    far = changelog.last_round + 3600
    assert liveness.problems(far) == []  # not paced by `every`: only its end is known
    restores.ended = True
    assert liveness.problems(far) == ["loop state restores: ended"]


def test_nothing_is_judged_before_the_start_or_during_the_stop() -> None:
    liveness = _liveness(running=False)
    liveness.watch("commits").ended = True
    liveness.watch_consumer(lambda: 0.0)
    assert liveness.problems(10_000.0) == []


def test_a_consumer_that_stopped_polling_is_wedged_and_its_age_is_gauged() -> None:
    last_poll = time.monotonic()
    liveness = _liveness(stuck_after_s=60)
    liveness.watch_consumer(lambda: last_poll)
    assert liveness.problems(last_poll + 30) == []
    assert liveness.problems(last_poll + 61) == ["consume loop: no poll for 61 s"]
    text = generate_latest(liveness.metrics.registry).decode()
    assert 'pipeline_loop_round_age_seconds{loop="consume"}' in text


def test_a_start_longer_than_the_bound_is_not_a_consumer_that_stopped_polling() -> None:
    liveness = _liveness(stuck_after_s=60)
    liveness.watch_consumer(lambda: 0.0)  # last polled before a long start (never, in fact)
    liveness.since = 1_000.0  # the loops began
    assert liveness.problems(1_000.1) == []
    assert liveness.problems(1_061.0) == ["consume loop: no poll for 1061 s"]


def test_a_source_that_does_not_say_when_it_polled_is_not_judged() -> None:
    liveness = _liveness()
    liveness.watch_consumer(lambda: None)
    assert liveness.problems(10_000.0) == []
    assert 'loop="consume"' not in generate_latest(liveness.metrics.registry).decode()


# ── rounds kept by supervised and every ──────────────────────────────────────────────────
Loop = Callable[[asyncio.Event], Awaitable[None]]


def _supervise(name: str, loop: Loop, stop: asyncio.Event, liveness: Liveness) -> asyncio.Task[None]:
    """``loop`` under ``supervised``, its Rounds watched by ``liveness``; no restart."""
    rounds = liveness.watch(name)
    return asyncio.create_task(supervised(name, lambda: loop(stop), stop, print, print, rounds=rounds))


async def test_every_paces_its_supervised_loop_and_notes_each_round() -> None:
    liveness, stop = _liveness(), asyncio.Event()

    async def ticking(stop: asyncio.Event) -> None:
        async for _ in every(0.01, stop):
            pass

    task = _supervise("ticking", ticking, stop, liveness)
    await asyncio.sleep(0.005)
    rounds = liveness.loops["ticking"]
    first = rounds.last_round
    await asyncio.sleep(0.1)
    assert rounds.interval_s == 0.01 and rounds.last_round > first and not rounds.ended
    text = generate_latest(liveness.metrics.registry).decode()
    assert 'pipeline_loop_round_age_seconds{loop="ticking"}' in text
    stop.set()
    await asyncio.wait_for(task, 1)
    assert rounds.ended


async def test_a_loop_that_returned_early_is_named_dead_and_counted() -> None:
    liveness, stop = _liveness(), asyncio.Event()

    async def returns_at_once(stop: asyncio.Event) -> None:
        return None

    await asyncio.wait_for(_supervise("quitter", returns_at_once, stop, liveness), 1)
    assert liveness.problems() == ["loop quitter: ended"]
    assert "pipeline_loops_dead 1.0" in generate_latest(liveness.metrics.registry).decode()


async def test_a_loop_stuck_in_an_await_is_named_once_past_its_bound() -> None:
    liveness, stop, hung = _liveness(stuck_after_s=0.05), asyncio.Event(), asyncio.Event()

    async def hangs_in_its_round(stop: asyncio.Event) -> None:
        async for _ in every(0.01, stop):
            await hung.wait()  # a request that never answers

    task = _supervise("commits", hangs_in_its_round, stop, liveness)
    await asyncio.sleep(0.15)
    stuck = liveness.problems()
    hung.set()
    await asyncio.sleep(0.03)
    unstuck = liveness.problems()
    stop.set()
    await asyncio.wait_for(task, 1)
    assert stuck == ["loop commits: no round for 0 s"]
    assert unstuck == []


async def test_a_task_the_loop_spawned_does_not_pace_the_loop() -> None:
    liveness, stop = _liveness(), asyncio.Event()

    async def spawns(stop: asyncio.Event) -> None:
        async def helper() -> None:
            async for _ in every(0.5, stop):
                pass

        helper_task = asyncio.create_task(helper())
        await stop.wait()
        await helper_task

    task = _supervise("spawner", spawns, stop, liveness)
    await asyncio.sleep(0.02)
    paced = liveness.loops["spawner"].interval_s
    stop.set()
    await asyncio.wait_for(task, 2)
    assert paced is None


# ── in the runtime ───────────────────────────────────────────────────────────────────────
async def test_the_runtime_is_alive_once_started_and_names_a_loop_that_ended() -> None:
    async with running(topology()) as run:
        runtime = run.runtime
        assert runtime.is_started() and runtime.liveness_problems() == []
        assert set(runtime.liveness.loops) >= {"commits", "watchdog"}
        rounds = runtime.liveness.loops["commits"]
        await run.until(lambda: rounds.interval_s is not None)
        assert rounds.interval_s == runtime.settings.commit_interval_s
        assert rounds.task is not None
        rounds.task.cancel()  # the loop's task gone while the pipeline runs
        await run.until(lambda: rounds.ended)
        assert runtime.liveness_problems() == ["loop commits: ended"]
    assert runtime.liveness_problems() == []  # stopped: loops end on purpose


async def test_head_gets_the_headers_only_other_methods_405_and_garbage_400() -> None:
    async with serving() as (port, _):
        head = await _exchange(port, b"HEAD /readyz HTTP/1.1\r\n\r\n")
        post = await _exchange(port, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        garbage = await _exchange(port, b"\x16\x03\x01 hello\r\n\r\n")  # a TLS hello, say
        empty = await _exchange(port, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 6\r\n" in head
    assert head.endswith(b"\r\n\r\n")  # no body
    assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n")
    assert garbage.startswith(b"HTTP/1.1 400") and empty.startswith(b"HTTP/1.1 400")


async def test_connections_past_the_cap_are_closed_at_once() -> None:
    async with serving(read_timeout_s=5.0, max_connections=2) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]  # silent
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:
            refused = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        except ConnectionResetError:  # closed with the request unread
            refused = b""
        assert refused == b"" and time.monotonic() - started < 1.0  # closed, not served later
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        assert (await _get(port, "/readyz"))[0] == 200  # served again once under the cap


async def test_a_port_taken_is_one_line_naming_it_exit_2() -> None:
    from pipeline.health import PortTaken

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = OpsServer(Metrics(), Pipeline(), port)
        with pytest.raises(PortTaken) as raised:
            await server.start()
    assert raised.value.exit_code == 2
    assert str(raised.value).startswith(f"operations.metrics_port: cannot serve on 127.0.0.1:{port}: ")
    assert "--metrics-port" in str(raised.value)


async def test_a_new_runtime_handed_over_keeps_the_live_pages_points() -> None:
    """pipeline dev's endpoint across a broker recycle: the next runtime's metrics and
    probes, the page's history kept."""
    first, second = Metrics(), Metrics()
    server = OpsServer(first, Pipeline(ready=False), free_port())
    server.live.sample()
    first.events_consumed.labels("t").inc(10)
    server.live.clock = lambda: time.time() + 1
    server.live.sample()
    assert len(server.live.points) == 1
    second.events_consumed.labels("t").inc(3)
    server.serve(Pipeline(ready=True), second)
    server.live.sample()
    server.live.clock = lambda: time.time() + 2
    server.live.sample()
    assert len(server.live.points) == 2  # the first epoch's point kept
    assert server.live.points[-1].consumed == 0  # not 3 - 10 across two registries
    assert server.metrics is second and server._route("/readyz")[0] == "200 OK"
