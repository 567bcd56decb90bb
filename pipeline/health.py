"""Operations endpoint on the pipeline's own loop: /metrics (Prometheus text), /healthz
(the process runs), /readyz (started and consuming). A few lines of asyncio instead of a web
framework: three GET routes do not justify another dependency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.metrics import Metrics

MAX_REQUEST_BYTES = 8_192  # per line (the reader's limit); a scrape's lines are far shorter
MAX_HEADER_LINES = 64  # so a request is at most ~65 lines of 8 KiB
READ_TIMEOUT_S = 5.0  # the whole request, not each line: a slow client cannot hold a task


class OpsServer:
    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        port: int,
        host: str = "127.0.0.1",
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics
        self.ready = ready
        self.port = port
        self.host = host
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES)

    async def _read_request_line(self, reader: asyncio.StreamReader) -> bytes:
        request_line = await reader.readline()
        for _ in range(MAX_HEADER_LINES):
            if not (await reader.readline()).strip():
                return request_line  # headers are not needed
        raise ValueError("too many header lines")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request_line = await asyncio.wait_for(self._read_request_line(reader), self.read_timeout_s)
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            status, body, ctype = self._route(path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _route(self, path: str) -> tuple[str, bytes, str]:
        if path == "/metrics":
            return "200 OK", self.metrics.exposition(), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return "200 OK", b"ok\n", "text/plain"
        if path == "/readyz":
            if self.ready():
                return "200 OK", b"ready\n", "text/plain"
            return "503 Service Unavailable", b"not ready\n", "text/plain"
        return "404 Not Found", b"not found\n", "text/plain"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
