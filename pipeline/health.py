"""Operations endpoint on the pipeline's own loop: /metrics (Prometheus text), the probes, and
what liveness is judged on. A few lines of asyncio instead of a web framework: a handful of
GET routes do not justify another dependency.

    /livez (/healthz)  the process is healthy: its event loop responsive, every supervised
                       loop alive and making rounds, the consumer polling (200 while starting)
    /startupz          the start finished: clients started, loops running
    /readyz            started and consuming: not stalled, held, restoring or refusing
    /                  the live page (pipeline/live/): charts and tables a person reads
    /live.json         its data: the last minutes' points and the state now"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.errors import Fatal
from pipeline.live import LiveSampler, parts_of, render
from pipeline.metrics import Metrics
from pipeline.ticks import Rounds, supervised

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8_192  # per line (the reader's limit); a scrape's lines are far shorter
MAX_HEADER_LINES = 64  # so a request is at most ~65 lines of 8 KiB
READ_TIMEOUT_S = 5.0  # the whole request, not each line: a slow client cannot hold a task
# Requests served at once; past it a connection is closed at once (a scraper and a few
# probes need a handful: a flood must not hold a task and a buffer each).
MAX_CONNECTIONS = 32
REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/\d\.\d\r?\n?")  # else a 400

LAG_TICK_S = 0.5  # how often the event loop's lag is measured
# A timer this late means one callback held the loop for seconds (a blocking call): broken,
# not busy (a busy pipeline's lag is milliseconds). It fails /livez until the next tick
# measures less, so only a loop that stays blocked fails several probes in a row.
EVENT_LOOP_LAG_LIMIT_S = 5.0
# A loop paced by ``every`` has this many intervals for one round if that is longer than the
# topology's operations.liveness_stuck_after_ms (a long commit interval, say).
STUCK_INTERVALS = 3
CONSUME_LOOP = "consume"  # the consume loop's label beside the supervised loops' names
LIVE_PAGE_LOOP = "live page"  # the page's sampler, supervised (not a liveness matter)
STOP_TIMEOUT_S = 2.0  # for the sampler's last round on stop


class Probed(Protocol):
    """What the endpoint asks of the pipeline (the runtime answers)."""

    def is_ready(self) -> bool: ...

    def is_started(self) -> bool: ...

    def liveness_problems(self) -> list[str]: ...


class Liveness:
    """Whether the pipeline's loops live: each supervised background loop (its ``Rounds``)
    must not have ended and, if paced by ``every``, must have completed a round within its
    bound; the consume loop must have polled within ``stuck_after_s``. Judged only while
    the pipeline runs: before, nothing is running yet (the start is the startup probe's to
    bound); after its stop, the loops end on purpose."""

    def __init__(self, metrics: Metrics, stuck_after_s: float, running: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.stuck_after_s = stuck_after_s
        self.running = running
        self.loops: dict[str, Rounds] = {}
        self.last_poll: Callable[[], float | None] = lambda: None
        self.since = time.monotonic()  # the loops' start: a start longer than the bound is no stall
        metrics.loops_dead.set_function(lambda: len(self.problems()))

    def watch(self, name: str) -> Rounds:
        """A supervised loop's Rounds, to hand to ``supervised``."""
        rounds = self.loops[name] = Rounds(name, on_paced=self._gauge_round_age)
        return rounds

    def begin(self) -> None:
        """The loops start now (the consumer's first poll is a moment away)."""
        self.since = time.monotonic()

    def watch_consumer(self, last_poll: Callable[[], float | None]) -> None:
        """When the consume loop last polled (monotonic; None: not known of this source)."""
        self.last_poll = last_poll
        if last_poll() is not None:
            self.metrics.loop_round_age.labels(CONSUME_LOOP).set_function(lambda: _age(last_poll()))

    def _gauge_round_age(self, rounds: Rounds) -> None:
        self.metrics.loop_round_age.labels(rounds.name).set_function(lambda: _age(rounds.last_round))

    def bound_s(self, interval_s: float) -> float:
        return max(self.stuck_after_s, STUCK_INTERVALS * interval_s)

    def problems(self, now: float | None = None) -> list[str]:
        """What is dead or stuck, one short line each; none: alive (or not running)."""
        if not self.running():
            return []
        now = time.monotonic() if now is None else now
        found = []
        for rounds in self.loops.values():
            if rounds.ended:
                found.append(f"loop {rounds.name}: ended")
            elif rounds.interval_s is not None and now - rounds.last_round > self.bound_s(rounds.interval_s):
                found.append(f"loop {rounds.name}: no round for {now - rounds.last_round:.0f} s")
        polled = self.last_poll()
        if polled is not None and now - max(polled, self.since) > self.stuck_after_s:
            found.append(f"{CONSUME_LOOP} loop: no poll for {now - polled:.0f} s")
        return found


def _age(moment: float | None) -> float:
    return time.monotonic() - moment if moment is not None else float("nan")


class EventLoopLag:
    """How late the event loop runs a timer: a ticker sleeps ``tick_s`` and measures how
    much longer that took. A blocking call holding the loop shows as lag once it lets go;
    while it holds, the pending tick is overdue (read too, so a ticker gone is seen)."""

    def __init__(self, metrics: Metrics, tick_s: float = LAG_TICK_S) -> None:
        self.metrics = metrics
        self.tick_s = tick_s
        self.lag_s = 0.0
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tick(self) -> None:
        while True:
            self._due = time.monotonic() + self.tick_s
            await asyncio.sleep(self.tick_s)
            self.lag_s = max(0.0, time.monotonic() - self._due)
            self.metrics.event_loop_lag.set(self.lag_s)

    def current(self, now: float | None = None) -> float:
        """The last lag measured, or how overdue the pending tick already is if more."""
        if self._due is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(self.lag_s, now - self._due)


class PortTaken(Fatal, reason="fatal"):
    """The operations endpoint's port cannot be bound (taken, or not allowed): exit 2."""

    exit_code = 2


class OpsServer:
    def __init__(
        self,
        metrics: Metrics,
        probed: Probed,
        port: int,
        host: str = "127.0.0.1",
        read_timeout_s: float = READ_TIMEOUT_S,
        lag_limit_s: float = EVENT_LOOP_LAG_LIMIT_S,
        lag_tick_s: float = LAG_TICK_S,
        sock: socket.socket | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.sock = sock  # bound already (pipeline dev binds its port before starting the stack)
        self._connections = asyncio.Semaphore(max_connections)
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics
        self.probed = probed
        self.port = port
        self.host = host
        self.lag_limit_s = lag_limit_s
        self.lag = EventLoopLag(metrics, lag_tick_s)  # runs while the endpoint does
        self.live = LiveSampler(metrics, parts_of(probed))  # so does the live page's sampler
        self._server: asyncio.Server | None = None
        self._stop_sampling = asyncio.Event()
        self._sampling: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve; PortTaken (exit 2, one line naming the port) when it cannot be bound."""
        try:
            if self.sock is not None:
                self._server = await asyncio.start_server(
                    self._handle, sock=self.sock, limit=MAX_REQUEST_BYTES
                )
            else:
                self._server = await asyncio.start_server(
                    self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES
                )
        except OSError as exc:
            raise PortTaken(
                f"operations.metrics_port: cannot serve on {self.host}:{self.port}: "
                f"{exc.strerror or exc} (pipeline dev: --metrics-port)"
            ) from None
        self.lag.start()
        self._sampling = asyncio.create_task(
            supervised(
                LIVE_PAGE_LOOP,
                functools.partial(self.live.run, self._stop_sampling),
                self._stop_sampling,
                self._on_sampler_restart,
                self._on_sampler_given_up,
            ),
            name=LIVE_PAGE_LOOP,
        )

    def serve(self, probed: Probed, metrics: Metrics) -> None:
        """Answer for ``probed`` and ``metrics`` from now on (dev's runtime after a broker
        recycle), the page's points kept; its rates start again from the new counters."""
        self.probed = probed
        self.metrics = self.lag.metrics = self.live.metrics = metrics
        self.live.parts = parts_of(probed)
        self.live.marks.clear()  # a rate across two registries' counters means nothing

    def _on_sampler_restart(self, name: str, error: BaseException) -> None:
        log.error("background loop %s failed, restarting it: %r", name, error, exc_info=error)
        self.metrics.loop_restarts.labels(name).inc()

    def _on_sampler_given_up(self, error: BaseException) -> None:
        """The page keeps what it had and says so; the pipeline goes on (it is only a view)."""
        log.error("%s: sampling stopped after repeated failures: %r", LIVE_PAGE_LOOP, error)
        self.live.stopped = repr(error)

    async def _read_request_line(self, reader: asyncio.StreamReader) -> bytes:
        request_line = await reader.readline()
        for _ in range(MAX_HEADER_LINES):
            if not (await reader.readline()).strip():
                return request_line  # headers are not needed
        raise ValueError("too many header lines")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections.locked():  # over the cap: no task held, no answer
            writer.close()
            return
        async with self._connections:
            await self._answer(reader, writer)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request_line = await asyncio.wait_for(self._read_request_line(reader), self.read_timeout_s)
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            status, body, ctype, method = self._answer_to(request_line)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == b"HEAD" else body)  # HEAD: the headers GET would get
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer_to(self, request_line: bytes) -> tuple[str, bytes, str, bytes]:
        """Status, body, content type and method for a request line: 400 if it is not one,
        405 for a method other than GET and HEAD."""
        if (match := REQUEST_LINE.fullmatch(request_line)) is None:
            return "400 Bad Request", b"bad request\n", "text/plain", b""
        method, target = match.group(1), match.group(2).decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed\r\nAllow: GET, HEAD", b"GET or HEAD\n", "text/plain", method
        return (*self._route(target.partition("?")[0]), method)

    def liveness_problems(self) -> list[str]:
        """The event loop's, then the pipeline's."""
        lag = self.lag.current()
        late = [f"event loop: lag {lag:.1f} s"] if lag > self.lag_limit_s else []
        return late + self.probed.liveness_problems()

    def _route(self, path: str) -> tuple[str, bytes, str]:
        if path == "/metrics":
            return "200 OK", self.metrics.exposition(), CONTENT_TYPE_LATEST
        if path in ("/livez", "/healthz"):
            if problems := self.liveness_problems():
                return "503 Service Unavailable", "\n".join(problems).encode() + b"\n", "text/plain"
            return "200 OK", b"ok\n" if self.probed.is_started() else b"ok, starting\n", "text/plain"
        if path == "/startupz":
            if self.probed.is_started():
                return "200 OK", b"started\n", "text/plain"
            return "503 Service Unavailable", b"starting\n", "text/plain"
        if path == "/readyz":
            if self.probed.is_ready():
                return "200 OK", b"ready\n", "text/plain"
            return "503 Service Unavailable", b"not ready\n", "text/plain"
        if path in ("/", "/live", "/index.html"):
            return "200 OK", render(self.live_json()), "text/html; charset=utf-8"
        if path == "/live.json":
            return "200 OK", self.live_json(), "application/json"
        return "404 Not Found", b"not found\n", "text/plain"

    def live_json(self) -> bytes:
        """The sampler's points and state, with the probes' answers of this moment."""
        health = {
            "started": self.probed.is_started(),
            "ready": self.probed.is_ready(),
            "problems": self.liveness_problems(),
        }
        return self.live.json({"health": health})

    async def stop(self) -> None:
        self._stop_sampling.set()
        if self._sampling is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._sampling, STOP_TIMEOUT_S)
        await self.lag.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
