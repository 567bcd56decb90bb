"""A refusal read only from a closed connection (a Kafka broker closing at the first Metadata
request, a TLS server hanging up right after the handshake) is what a restarting server
does too: it must be seen twice before it stops the process with exit 2. Real servers,
in-process: a minimal Kafka listener and a TLS listener, each told how to end each
connection."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.metadata import MetadataResponse_v0

from pipeline import kafka_clients, security
from pipeline.security import CredentialsError, tls_refusal
from pipeline.topology.schema import Broker, Tls
from tests.certs import Pki, make_pki

API_VERSIONS, METADATA = 18, 3


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_clients, "CONFIRM_PAUSE_S", 0.05)
    monkeypatch.setattr(security, "TLS_CONFIRM_PAUSE_S", 0.05)


@asynccontextmanager
async def kafka_listener(closes_at_metadata: list[bool]) -> AsyncIterator[tuple[int, list[int]]]:
    """Answers ApiVersions (v0); at Metadata, connection i is closed if
    ``closes_at_metadata[i]`` (a restarting broker, a SASL listener), else answered."""
    connections: list[int] = []  # Metadata requests seen per connection

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(connections)
        connections.append(0)
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                api_key, _version, correlation = struct.unpack(">hhi", frame[:8])
                if api_key == API_VERSIONS:
                    body = ApiVersionResponse_v0(
                        error_code=0, api_versions=[(API_VERSIONS, 0, 0), (METADATA, 0, 0)]
                    ).encode()
                elif api_key == METADATA:
                    connections[index] += 1
                    if closes_at_metadata[min(index, len(closes_at_metadata) - 1)]:
                        break
                    body = MetadataResponse_v0(brokers=[(0, "127.0.0.1", port)], topics=[]).encode()
                else:
                    break
                message = struct.pack(">i", correlation) + body
                writer.write(struct.pack(">i", len(message)) + message)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        server.close()
        await server.wait_closed()


async def test_a_broker_that_closes_at_the_first_request_once_is_not_a_refusal() -> None:
    """A broker restarting at start: the first connection is closed at Metadata, the next
    one is answered. One such close used to be exit 2 ("does it require SASL?")."""
    async with kafka_listener([True, False]) as (port, connections):
        broker = Broker(bootstrap_servers=f"127.0.0.1:{port}")
        assert await kafka_clients.check_connection(broker, timeout_s=2)
    assert connections == [1, 1]


async def test_a_broker_that_closes_at_the_first_request_twice_wants_sasl() -> None:
    async with kafka_listener([True]) as (port, connections):
        broker = Broker(bootstrap_servers=f"127.0.0.1:{port}")
        with pytest.raises(CredentialsError, match="does it require SASL authentication"):
            await kafka_clients.check_connection(broker, timeout_s=2)
    assert connections == [1, 1]


@asynccontextmanager
async def tls_listener(pki: Pki, hangs_up: Callable[[int], bool]) -> AsyncIterator[tuple[str, list[int]]]:
    """A TLS server: connection i is closed right after the handshake if ``hangs_up(i)``,
    else it speaks first (one byte, like HTTP/2's SETTINGS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(seen)
        seen.append(index)
        if not hangs_up(index):
            writer.write(b"\x00")
            await writer.drain()
            await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_a_tls_server_that_hangs_up_once_is_not_a_refusal(pki: Pki) -> None:
    """Triton restarting, or a TLS proxy whose backend is not up yet: one hang-up after the
    handshake, then a server that speaks. One used to be exit 2 ("it wants a client
    certificate")."""
    async with tls_listener(pki, lambda i: i == 0) as (url, seen):
        assert await tls_refusal(url, Tls(ca_file=pki.ca), timeout_s=2) is None
    assert seen == [0, 1]


async def test_a_tls_server_that_hangs_up_twice_refuses_the_client(pki: Pki) -> None:
    async with tls_listener(pki, lambda i: True) as (url, seen):
        refusal = await tls_refusal(url, Tls(ca_file=pki.ca), timeout_s=2)
    assert refusal is not None and "it wants a client certificate it trusts" in refusal
    assert seen == [0, 1]
