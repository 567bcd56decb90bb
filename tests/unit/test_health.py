"""The operations endpoint: routes, the bind address, and bounds on what a client may send."""

from __future__ import annotations

import asyncio
import time

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


def _serve(scenario, ready: bool = True, read_timeout_s: float = 5.0):
    async def run():
        port = free_port()
        server = OpsServer(Metrics(), lambda: ready, port, read_timeout_s=read_timeout_s)
        await server.start()
        try:
            return await scenario(port, server)
        finally:
            await server.stop()

    return asyncio.run(run())


def test_routes_answer_and_it_binds_loopback_by_default() -> None:
    async def scenario(port: int, server: OpsServer) -> list[bytes]:
        assert server.host == "127.0.0.1"
        return [
            await _exchange(port, f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for p in ("/readyz", "/metrics", "/nope")
        ]

    ready, metrics, missing = _serve(scenario)
    assert ready.startswith(b"HTTP/1.1 200") and metrics.startswith(b"HTTP/1.1 200")
    assert b"pipeline_stalled" in metrics
    assert missing.startswith(b"HTTP/1.1 404")


def test_not_ready_is_503() -> None:
    async def scenario(port: int, _: OpsServer) -> bytes:
        return await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")

    assert _serve(scenario, ready=False).startswith(b"HTTP/1.1 503")


def test_oversized_headers_are_refused() -> None:
    async def scenario(port: int, _: OpsServer) -> list[bytes]:
        long_line = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        many = b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"
        return [await _exchange(port, long_line), await _exchange(port, many)]

    for answer in _serve(scenario):
        assert answer.startswith(b"HTTP/1.1 431")


def test_a_silent_client_is_dropped_after_the_read_timeout() -> None:
    async def scenario(port: int, _: OpsServer) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)  # the server closes: EOF
        writer.close()
        return data, time.monotonic() - started

    data, waited = _serve(scenario, read_timeout_s=0.3)
    assert data == b"" and 0.25 < waited < 2
