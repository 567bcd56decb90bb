"""The operations endpoint: routes, the bind address, and bounds on what a client may send."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from pipeline.devstack.process import free_port
from pipeline.health import OpsServer
from pipeline.metrics import Metrics


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@contextlib.asynccontextmanager
async def serving(ready: bool = True, read_timeout_s: float = 5.0) -> AsyncIterator[tuple[int, OpsServer]]:
    """A started server and its port; stopped on leaving."""
    port = free_port()
    server = OpsServer(Metrics(), lambda: ready, port, read_timeout_s=read_timeout_s)
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
