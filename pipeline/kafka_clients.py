"""The one way to build a Kafka client: every consumer, producer and admin client the project
makes gets its connection options (address, client id, TLS, SASL) from the topology's
broker section, and only its role's options from the caller.

A client whose start fails asks why with one connection of its own (``check_connection``):
aiokafka's bootstrap only says "Unable to bootstrap from ...", so an untrusted certificate
or refused credentials would otherwise look like a broker that is down. What no retry can
fix becomes ``CredentialsError`` with the real reason (exit 2): at once for a broker
certificate that does not verify, after a second attempt that ends the same for every
other refusal (SASL, a TLS alert or failed handshake, a token that cannot be had, a closed
connection), since a restarting broker, a proxy between backends, a SCRAM user not yet
propagated or a token agent still starting refuse once too. Anything else is raised as
aiokafka raised it.

At the start of `pipeline run`, ``wait_for_broker`` repeats that check for at most
``broker.start_timeout_ms``, before anything waits on Triton: a broker nobody can reach is
one line naming each address and why (exit 2), not a bootstrap traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import AIOKafkaConnection, ScramAuthenticator
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from pipeline.errors import BrokerAway
from pipeline.security import TLS_SERVER_TROUBLE, CredentialsError, kafka_security, tls_session
from pipeline.topology.schema import Broker

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 10.0  # one connection attempt of check_connection, TLS and SASL included
START_CHECK_TIMEOUT_S = 5.0  # the same, asking why a client's start failed (a live broker answers at once)
CONFIRM_PAUSE_S = 1.0  # between the two attempts that must agree before a refusal is one
RECHECK_PAUSE_S = 1.0  # at start, between two checks while no bootstrap server answers
PROBE_TIMEOUT_S = 2.0  # a plain TCP connection, to say why a bootstrap server does not answer


def connection(broker: Broker, client_suffix: str = "") -> dict[str, Any]:
    """Options every client of this cluster shares: address, client id, TLS and SASL."""
    return {
        "bootstrap_servers": broker.bootstrap_servers,
        "client_id": broker.client_id + client_suffix,
        **kafka_security(broker),
    }


class _Diagnosed:
    """``start`` that names the cause when it fails for a reason no retry can fix (and
    then closes the client: the process stops, and aiokafka would complain of it).

    A client never started holds no connection and no task, so it is not reported as
    "Unclosed" when collected: when one client's start stops the process, the clients made
    beside it (the other lanes' producers, the source's consumer) add no noise after the
    one line that says why."""

    _broker: Broker
    _start_called = False  # (aiokafka's admin client has a _started of its own)

    async def start(self) -> None:
        self._start_called = True
        try:
            await super().start()  # type: ignore[misc]
        except Exception:
            try:
                await check_connection(self._broker, START_CHECK_TIMEOUT_S)  # CredentialsError, or nothing
            except CredentialsError:
                with contextlib.suppress(Exception):
                    await self._close()
                raise
            raise

    async def _close(self) -> None:
        await self.stop()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        warn = getattr(super(), "__del__", None)  # the consumer's and the producer's warning
        if self._start_called and warn is not None:
            warn()


class Consumer(_Diagnosed, AIOKafkaConsumer):  # type: ignore[misc]
    def __init__(self, broker: Broker, *args: Any, **kwargs: Any) -> None:
        self._broker = broker
        super().__init__(*args, **kwargs)


class Producer(_Diagnosed, AIOKafkaProducer):  # type: ignore[misc]
    def __init__(self, broker: Broker, **kwargs: Any) -> None:
        self._broker = broker
        super().__init__(**kwargs)


class Admin(_Diagnosed, AIOKafkaAdminClient):  # type: ignore[misc]
    def __init__(self, broker: Broker, **kwargs: Any) -> None:
        self._broker = broker
        super().__init__(**kwargs)

    async def _close(self) -> None:
        await self.close()


def consumer(broker: Broker, *topics: str, client_suffix: str = "", **options: Any) -> AIOKafkaConsumer:
    """A consumer that commits only when told to (``enable_auto_commit`` is off unless given)."""
    options.setdefault("enable_auto_commit", False)
    return Consumer(broker, *topics, **connection(broker, client_suffix), **options)


def producer(broker: Broker, client_suffix: str = "", **options: Any) -> AIOKafkaProducer:
    """A producer without idempotence unless asked: the embedded broker fails InitProducerId,
    and delivery is at-least-once anyway (outputs name their sources for deduplication)."""
    options.setdefault("enable_idempotence", False)
    return Producer(broker, **connection(broker, client_suffix), **options)


def admin(broker: Broker) -> AIOKafkaAdminClient:
    return Admin(broker, **connection(broker, "-admin"))


# ---------------------------------------------------------------------------------------------
# check_connection: one connection, as the clients make it, and what went wrong with it


class _ScramRefused(Exception):
    """The broker ended a SCRAM exchange with ``e=<reason>`` (RFC 5802) instead of failing
    the SaslAuthenticate request (Tansu does; aiokafka then stops on a bare KeyError)."""


class _Scram(ScramAuthenticator):  # type: ignore[misc]
    def process_server_first_message(self, server_first: str) -> None:
        self._refused(server_first)
        super().process_server_first_message(server_first)

    def process_server_final_message(self, server_final: str) -> None:
        self._refused(server_final)
        super().process_server_final_message(server_final)

    @staticmethod
    def _refused(message: str) -> None:
        if message.startswith("e="):
            raise _ScramRefused(message[2:].split(",", 1)[0])


class _ProbeConnection(AIOKafkaConnection):  # type: ignore[misc]
    def authenticator_scram(self) -> ScramAuthenticator:
        return _Scram(
            loop=self._loop,
            sasl_plain_password=self._sasl_plain_password,
            sasl_plain_username=self._sasl_plain_username,
            sasl_mechanism=self._sasl_mechanism,
        )


def _addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    addresses = []
    for entry in bootstrap_servers.split(","):
        host, _, port = entry.strip().rpartition(":")
        if host and port.isdigit():
            addresses.append((host.strip("[]"), int(port)))
    return addresses


class _ClosedAtMetadata(Exception):
    """Connected (ApiVersions answered), then closed at the first Metadata request."""


async def _connects(
    host: str, port: int, options: dict[str, Any], timeout_s: float, metadata: bool = True
) -> None:
    """One connection (TCP, TLS, ApiVersions, SASL) with these options, then (``metadata``)
    the Metadata request the bootstrap sends first, and closed again."""
    conn = _ProbeConnection(host, port, request_timeout_ms=int(timeout_s * 1000), **options)
    try:
        await asyncio.wait_for(conn.connect(), timeout_s + 1)
        if not metadata:
            return
        try:
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s + 1)
        except KafkaConnectionError:
            raise _ClosedAtMetadata() from None
    finally:
        conn.close()


class _Unconfirmed(Exception):
    """A refusal seen once (its message is the CredentialsError's). A broker restarting, a
    TLS terminator with no healthy broker behind it, a SCRAM credential not yet propagated,
    a token agent still starting: each refuses a connection once the same way. It only
    counts once a second attempt ends in the same ``kind`` of refusal."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or message


async def _verdict(broker: Broker, options: dict[str, Any], host: str, port: int, timeout_s: float) -> bool:
    """True: connected; False: no verdict (unreachable, timed out, refused in two different
    ways, closed for no known reason); CredentialsError: a cause no retry fixes. A refusal
    (other than a certificate that does not verify) must be seen on two attempts,
    CONFIRM_PAUSE_S apart (each bounded by ``timeout_s``), before it is one."""
    try:
        return await _attempt(broker, options, host, port, timeout_s)
    except _Unconfirmed as exc:
        first = exc
        log.debug("check_connection: %s; trying once more before calling it a refusal", first)
    await asyncio.sleep(CONFIRM_PAUSE_S)
    try:
        return await _attempt(broker, options, host, port, timeout_s)
    except _Unconfirmed as exc:
        if exc.kind != first.kind:  # refused differently each time: the broker, not the settings
            log.debug("check_connection: no verdict from %s:%d: %s, then %s", host, port, first, exc)
            return False
        raise CredentialsError(str(exc)) from None


async def _attempt(broker: Broker, options: dict[str, Any], host: str, port: int, timeout_s: float) -> bool:
    """One attempt of ``_verdict``: also _Unconfirmed, a refusal still to be confirmed."""
    where = f"the broker at {host}:{port}"
    sasl = broker.sasl
    who = f" as {sasl.username!r}" if sasl is not None and sasl.username else ""
    mechanism = sasl.mechanism if sasl is not None else ""
    try:
        await _connects(host, port, options, timeout_s)
        return True
    except CredentialsError as exc:  # an OAUTHBEARER token that cannot be had (yet?)
        raise _Unconfirmed(str(exc), "token") from None
    except _ClosedAtMetadata:
        if sasl is not None:
            return False
        # What a SASL listener (Kafka's, Tansu's) does to a client that skips authentication.
        raise _Unconfirmed(
            f"broker.security_protocol: {where} closed the connection at the first request after "
            f"connecting with {broker.security_protocol}: does it require SASL authentication?"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise CredentialsError(
            f"broker.tls: {where} presented a certificate that does not verify: "
            f"{exc.verify_message or exc.reason} (check broker.tls.ca_file and check_hostname)"
        ) from None
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError):
        return False  # the peer went away mid-handshake: a restart looks the same
    except ssl.SSLError as exc:
        if exc.reason in TLS_SERVER_TROUBLE:  # the broker's (or its proxy's) own failure
            log.debug("check_connection: no verdict from %s: %r", where, exc)
            return False
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if "wrong version number" in reason:
            reason += " (is that listener TLS at all?)"
        raise _Unconfirmed(
            f"broker.tls: the TLS handshake with {where} failed: {reason}", f"tls {exc.reason}"
        ) from None
    except (SaslAuthenticationFailed, AuthenticationFailedError, _ScramRefused) as exc:
        refused = f"refused {mechanism} authentication{who}: {exc}"
        raise _Unconfirmed(f"broker.sasl: {where} {refused}", "sasl refused") from None
    except (UnsupportedSaslMechanismError, IllegalSaslStateError):
        raise _Unconfirmed(
            f"broker.sasl.mechanism: {where} does not accept SASL {mechanism} "
            f"(is SASL enabled on that listener, and this mechanism with it?)"
        ) from None
    except TimeoutError as exc:  # slow (a token command, a loaded broker): not a refusal
        log.debug("check_connection: no verdict from %s: %r", where, exc)
        return False
    except (KafkaConnectionError, OSError) as exc:
        closed: Exception = exc
    except Exception as exc:  # anything else aiokafka may raise: not ours to judge
        log.debug("check_connection: no verdict from %s: %r", where, exc)
        return False
    alert = None
    if "ssl_context" in options:  # a refused client certificate shows as a closed connection
        session = await asyncio.to_thread(
            tls_session, host, port, options["ssl_context"], min(timeout_s, 3.0)
        )
        alert = session if session is not None and "ALERT" in session else None
    if alert is not None and alert not in TLS_SERVER_TROUBLE:
        hint = (
            "it wants a client certificate: broker.tls.cert_file and key_file"
            if "CERTIFICATE_REQUIRED" in alert
            else "is broker.tls.cert_file signed by an authority the broker trusts?"
        )
        text = alert.lower().replace("_", " ")
        raise _Unconfirmed(f"broker.tls: {where} ended the TLS session: {text} ({hint})")
    if sasl is None:
        log.debug("check_connection: no verdict from %s: %r", where, closed)
        return False
    # A SASL connection closed or cut short: does the same connection without SASL live?
    plain = {k: v for k, v in options.items() if not k.startswith("sasl_")}
    plain["security_protocol"] = "SSL" if broker.security_protocol == "SASL_SSL" else "PLAINTEXT"
    try:
        await _connects(host, port, plain, timeout_s, metadata=False)  # ApiVersions: no SASL needed
    except Exception as exc:  # the broker itself is the trouble: no verdict on the credentials
        log.debug("check_connection: no verdict from %s: %r", where, exc)
        return False
    raise _Unconfirmed(  # a restart between the two connections looks the same: confirmed again
        f"broker.sasl: {where} closed the connection during {mechanism} authentication{who} "
        f"(mechanism not enabled there, or the credentials refused)"
    )


async def check_connection(broker: Broker, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    """Open one connection to the cluster with the clients' own options (TLS, SASL) and
    turn what no retry can fix into ``CredentialsError`` naming the reason (exit 2): a
    certificate file that cannot be read or loaded, a broker certificate that does not
    verify against ``tls.ca_file`` (or names another host), a failed TLS handshake, a SASL
    mechanism the broker does not offer, refused credentials (each but a certificate that does
    not verify confirmed by a second attempt first: see ``_verdict``). Returns True once one
    bootstrap server accepted the connection, False when none gave a verdict (down,
    unreachable, too slow): the clients then retry as they always do."""
    options = kafka_security(broker)
    options["client_id"] = broker.client_id + "-check"
    for host, port in _addresses(broker.bootstrap_servers):
        if await _verdict(broker, options, host, port, timeout_s):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# wait_for_broker: the start's first step, bounded


async def wait_for_broker(broker: Broker, timeout_s: float) -> None:
    """``check_connection`` again and again until a bootstrap server answers, for at most
    ``timeout_s`` (a broker restarting as the pipeline starts), with one warning when the
    first check fails; then BrokerAway naming ``broker.bootstrap_servers``, each address and
    why it did not answer (exit 2), rather than the clients' "Unable to bootstrap" after
    everything else has waited. CredentialsError as ``check_connection`` raises it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    servers = broker.bootstrap_servers
    said = False
    while True:
        remaining = max(deadline - loop.time(), 0.1)
        try:  # a black-holed address takes a check's whole timeout: cut at the bound
            if await asyncio.wait_for(check_connection(broker, min(CHECK_TIMEOUT_S, remaining)), remaining):
                return
        except TimeoutError:
            pass
        if loop.time() >= deadline:
            break
        if not said:  # the first check failed: say what the start waits for
            said = True
            log.warning(
                "broker.bootstrap_servers: nothing answers at %s yet: waiting up to %g s "
                "(broker.start_timeout_ms)",
                servers,
                timeout_s,
            )
        await asyncio.sleep(min(RECHECK_PAUSE_S, max(0.0, deadline - loop.time())))
    why = await nothing_answers(servers)
    waited = f"waited {timeout_s:g} s (broker.start_timeout_ms)"
    raise BrokerAway(f"broker.bootstrap_servers: nothing answers at {why}; {waited}")


async def nothing_answers(bootstrap_servers: str) -> str:
    """Each bootstrap address and why it does not answer, as one plain TCP connection
    (bounded by PROBE_TIMEOUT_S) tells it: ``host:1 (connection refused), host:2 (no answer)``."""
    addresses = _addresses(bootstrap_servers)
    if not addresses:
        return f"{bootstrap_servers} (no host:port in it)"
    reasons = await asyncio.gather(*(_tcp_verdict(host, port) for host, port in addresses))
    return ", ".join(f"{host}:{port} ({why})" for (host, port), why in zip(addresses, reasons, strict=True))


async def _tcp_verdict(host: str, port: int) -> str:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except ConnectionRefusedError:
        return "connection refused: nothing listening"
    except socket.gaierror as exc:
        return f"unknown host: {exc.strerror or exc}"
    except TimeoutError:
        return f"no TCP answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    except (OverflowError, ValueError) as exc:  # a port past 65535 (a Broker built unchecked)
        return f"not an address: {exc}"
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return "it takes TCP connections, but no Kafka answer came"
