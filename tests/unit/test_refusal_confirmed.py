"""A refusal read only from a closed connection (a Kafka broker closing at the first Metadata
request, a TLS server hanging up right after the handshake) is what a restarting server
does too: it must be seen twice before it stops the process with exit 2. So must every
other refusal that can pass — a SASL failure, a TLS alert or failed handshake, a token
command that failed — all but a certificate that does not verify (the same on every
attempt). Real servers, in-process, where they can be made to end a connection so (a
minimal Kafka listener, a TLS listener); scripted endings where they cannot."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError
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


async def test_a_server_certificate_that_does_not_verify_is_a_refusal_at_once(
    monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    """An untrusted certificate is the same on every session: no second one is needed."""
    sessions: list[str | None] = []

    def session(*args: Any) -> str | None:
        sessions.append(real(*args))
        return sessions[-1]

    real = security.tls_session
    monkeypatch.setattr(security, "tls_session", session)
    async with tls_listener(pki, lambda i: False) as (url, _):
        refusal = await tls_refusal(url, Tls(ca_file=pki.other_ca), timeout_s=2)
    assert refusal is not None and refusal.startswith("CERTIFICATE_VERIFY_FAILED"), refusal
    assert sessions == [refusal]


def _scripted_sessions(monkeypatch: pytest.MonkeyPatch, endings: list[str | None]) -> list[str | None]:
    """``tls_session`` ends as told, one ending per session (the last one repeats); the
    sessions made are recorded. What a TLS server ends a session with cannot all be made
    with Python's ssl server (an internal-error alert, a handshake failure)."""
    made: list[str | None] = []

    def session(host: str, port: int, context: ssl.SSLContext, timeout_s: float) -> str | None:
        ending = endings[min(len(made), len(endings) - 1)]
        made.append(ending)
        return ending

    monkeypatch.setattr(security, "tls_session", session)
    return made


@pytest.mark.parametrize(
    "ending",
    [
        "SSLV3_ALERT_HANDSHAKE_FAILURE",  # a proxy whose backend is not up yet, a restart
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "WRONG_VERSION_NUMBER",  # a load balancer answering in plain text while it starts
    ],
)
async def test_a_tls_error_seen_once_is_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, ending: str
) -> None:
    """Any TLS ending other than a certificate that does not verify must be seen on two
    sessions: one used to be exit 2 (a gateway in front of Triton, restarting)."""
    made = _scripted_sessions(monkeypatch, [ending, None])
    assert await tls_refusal("127.0.0.1:1", Tls(ca_file=pki.ca), timeout_s=1) is None
    assert made == [ending, None]


async def test_a_tls_error_seen_twice_is_a_refusal(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    made = _scripted_sessions(monkeypatch, ["TLSV13_ALERT_CERTIFICATE_REQUIRED"])
    refusal = await tls_refusal("127.0.0.1:1", Tls(ca_file=pki.ca), timeout_s=1)
    assert refusal == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert len(made) == 2


async def test_a_tls_error_that_changes_is_not_a_refusal(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    made = _scripted_sessions(monkeypatch, [security.TLS_CLOSED, "SSLV3_ALERT_HANDSHAKE_FAILURE"])
    assert await tls_refusal("127.0.0.1:1", Tls(ca_file=pki.ca), timeout_s=1) is None
    assert len(made) == 2


async def test_an_internal_error_alert_is_the_servers_trouble_never_a_refusal(
    monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    """The server says its own failure: waited out like an outage, however often."""
    made = _scripted_sessions(monkeypatch, ["TLSV1_ALERT_INTERNAL_ERROR"])
    assert await tls_refusal("127.0.0.1:1", Tls(ca_file=pki.ca), timeout_s=1) is None
    assert len(made) == 1


# --- the broker: every refusal but an untrusted certificate (and files that do not load) is
# confirmed by a second attempt. One connection per script entry: None connects, an exception
# is raised as aiokafka would raise it.

SASL_BROKER = Broker(
    bootstrap_servers="127.0.0.1:1",
    security_protocol="SASL_PLAINTEXT",
    sasl={"mechanism": "PLAIN", "username": "alice", "password": "secret"},
)


def _scripted_connections(monkeypatch: pytest.MonkeyPatch, endings: list[Exception | None]) -> list[object]:
    made: list[object] = []

    async def connects(
        host: str, port: int, options: object, timeout_s: float, metadata: bool = True
    ) -> None:
        ending = endings[min(len(made), len(endings) - 1)]
        made.append(ending)
        if ending is not None:
            raise ending

    monkeypatch.setattr(kafka_clients, "_connects", connects)
    return made


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason
    return error


def _token_failed() -> CredentialsError:
    return CredentialsError("broker.sasl.oauth_token_command exited 1: vault agent not ready")


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(lambda: SaslAuthenticationFailed("Authentication failed"), id="sasl-refused"),
        pytest.param(lambda: UnsupportedSaslMechanismError("not enabled"), id="sasl-mechanism"),
        pytest.param(lambda: _ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE"), id="tls-handshake"),
        pytest.param(_token_failed, id="token-command"),
    ],
)
async def test_a_broker_refusal_seen_once_is_not_one(
    monkeypatch: pytest.MonkeyPatch, first: Callable[[], Exception]
) -> None:
    """A SCRAM user not yet propagated, a token agent starting, a terminating proxy between
    two backends: refused once, accepted a second later. One used to be exit 2."""
    made = _scripted_connections(monkeypatch, [first(), None])
    assert await kafka_clients.check_connection(SASL_BROKER, timeout_s=1)
    assert len(made) == 2


@pytest.mark.parametrize(
    ("ending", "says"),
    [
        (
            lambda: SaslAuthenticationFailed("Authentication failed"),
            "refused PLAIN authentication as 'alice'",
        ),
        (lambda: UnsupportedSaslMechanismError("not enabled"), "does not accept SASL PLAIN"),
        (lambda: _ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE"), "the TLS handshake with the broker"),
        (_token_failed, "oauth_token_command exited 1"),
    ],
)
async def test_a_broker_refusal_seen_twice_is_one(
    monkeypatch: pytest.MonkeyPatch, ending: Callable[[], Exception], says: str
) -> None:
    made = _scripted_connections(monkeypatch, [ending(), ending()])
    with pytest.raises(CredentialsError, match=says) as caught:
        await kafka_clients.check_connection(SASL_BROKER, timeout_s=1)
    assert caught.value.exit_code == 2
    assert len(made) == 2


async def test_an_untrusted_broker_certificate_is_a_refusal_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error.reason, error.verify_message = "CERTIFICATE_VERIFY_FAILED", "unable to get local issuer certificate"
    made = _scripted_connections(monkeypatch, [error, None])
    with pytest.raises(CredentialsError, match="presented a certificate that does not verify"):
        await kafka_clients.check_connection(SASL_BROKER, timeout_s=1)
    assert len(made) == 1


async def test_an_internal_error_alert_from_the_broker_is_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _scripted_connections(monkeypatch, [_ssl_error("TLSV1_ALERT_INTERNAL_ERROR")])
    assert not await kafka_clients.check_connection(SASL_BROKER, timeout_s=1)  # the clients retry
    assert len(made) == 1
