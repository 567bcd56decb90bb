"""Credentials and TLS for the connections the pipeline makes: Kafka (TLS, SASL PLAIN, SCRAM,
OAUTHBEARER) and Triton (TLS, mutual TLS, request headers).

Secrets are read at start from the environment (through ``${NAME}`` in the topology) or
from mounted files, and never logged. A file that cannot be read, a certificate or key that
does not load, a token command that fails: each stops the process at start with one
message naming the topology key (exit 2), instead of a retry loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
import weakref
from pathlib import Path
from typing import Any

import grpc
from aiokafka.abc import AbstractTokenProvider
from pydantic import SecretStr

from pipeline.errors import Fatal
from pipeline.topology.schema import Broker, Sasl, Tls

log = logging.getLogger(__name__)
TOKEN_COMMAND_TIMEOUT_S = 30.0


class CredentialsError(Fatal):
    """A credential or certificate the topology names cannot be used (exit 2)."""

    exit_code = 2
    reason = "credentials"


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def secret(value: SecretStr | None, file: Path | None, key: str) -> str | None:
    """A secret given inline (from ``${NAME}``) or in a file (trailing newline dropped)."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return _read(file, f"{key}_file").decode().rstrip("\r\n")
    return None


def kafka_ssl_context(tls: Tls, key: str = "broker.tls") -> ssl.SSLContext:
    """Trusts ``tls.ca_file`` only when given (else the system's authorities)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for name in ("ca_file", "cert_file", "key_file"):  # a missing file, named by its key
        path = getattr(tls, name)
        if path is not None:
            _read(path, f"{key}.{name}")
    try:
        if tls.ca_file is not None:
            context.load_verify_locations(cafile=str(tls.ca_file))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file is not None and tls.key_file is not None:
            password = secret(tls.key_password, tls.key_password_file, f"{key}.key_password")
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=password)
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(f"{key}: the certificate or key does not load: {exc}") from None
    context.check_hostname = tls.check_hostname  # verify_mode stays CERT_REQUIRED either way
    return context


class FileToken(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER token from a mounted file, read again whenever the file changes (a
    sidecar or the platform refreshes it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._token = ""

    async def token(self) -> str:
        try:
            stamp = self.path.stat().st_mtime
            if stamp != self._stamp:
                self._token = _read(self.path, "broker.sasl.oauth_token_file").decode().strip()
                self._stamp = stamp
        except (OSError, CredentialsError) as exc:
            if not self._token:  # never had one: the start stops with the reason
                raise CredentialsError(
                    f"broker.sasl.oauth_token_file: cannot read {self.path}: {exc}"
                ) from None
            # Mid-run (a sidecar rewriting the file): an error raised here would end aiokafka's
            # fetcher task silently; the last token may still be valid, the broker says if not.
            log.warning("oauth_token_file unreadable (%s); using the previous token", exc)
        return self._token


class CommandToken(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER token printed by a command (a cloud CLI, a vault agent), run again once
    the last token is ``ttl_s`` old. Callers that ask while it runs (the connections of
    several clients sharing it: see ``command_token``) wait for that run and take its
    outcome: one run per refresh."""

    def __init__(self, command: list[str], ttl_s: float) -> None:
        self.command = command
        self.ttl_s = ttl_s
        self._token = ""
        self._at = -float("inf")
        self._runs = 0  # runs finished (token or CredentialsError); a cancelled one does not count
        self._error: CredentialsError | None = None  # the last run's, if it failed
        self._lock: asyncio.Lock | None = None
        self._lock_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    async def token(self) -> str:
        if time.monotonic() - self._at < self.ttl_s and self._token:
            return self._token
        runs = self._runs
        async with self._loop_lock():
            if self._runs == runs:  # no run finished while this caller waited: it runs one
                try:
                    self._token, self._at = await self._run(), time.monotonic()
                    self._error = None
                except CredentialsError as exc:
                    self._error = exc
                    if self._token:
                        # A refresh that failed: the last token may still be valid; the broker says if not.
                        log.warning("oauth_token_command failed; using the previous token", exc_info=True)
                self._runs += 1  # not reached when cancelled (killed): a waiter runs it instead
            if not self._token:
                assert self._error is not None
                raise self._error  # never had one: the start stops with the reason
        return self._token

    def _loop_lock(self) -> asyncio.Lock:
        """The lock for the running loop: an asyncio.Lock binds to the first loop it makes
        wait, and this provider lives as long as the process (which may run several loops
        one after another: scripts, tests)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is None or self._lock_loop() is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), weakref.ref(loop)
        return self._lock

    async def _run(self) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise CredentialsError(f"broker.sasl.oauth_token_command: cannot run: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), TOKEN_COMMAND_TIMEOUT_S)
        except BaseException as exc:  # timed out, or the caller gave up (cancelled): no orphan
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise CredentialsError(
                    f"broker.sasl.oauth_token_command: no token after {TOKEN_COMMAND_TIMEOUT_S:.0f} s"
                ) from None
            raise
        if proc.returncode != 0 or not out.strip():
            # stderr's last line only: a verbose script could print more than it should
            last = (err.decode(errors="replace").strip().splitlines() or [""])[-1][-200:]
            raise CredentialsError(f"broker.sasl.oauth_token_command exited {proc.returncode}: {last}")
        return out.decode(errors="replace").strip()


_command_tokens: dict[tuple[tuple[str, ...], float], CommandToken] = {}


def command_token(command: list[str], ttl_s: float) -> CommandToken:
    """The process's one provider for this command: the clients made from a broker section
    (the source's consumer, the sink's producers, admin clients, the connection checks) each
    build their options, and a provider of their own would run the command once per client."""
    key = (tuple(command), ttl_s)
    provider = _command_tokens.get(key)
    if provider is None:
        provider = _command_tokens[key] = CommandToken(command, ttl_s)
    return provider


def _sasl_options(sasl: Sasl) -> dict[str, Any]:
    options: dict[str, Any] = {"sasl_mechanism": sasl.mechanism}
    if sasl.mechanism == "OAUTHBEARER":
        if sasl.oauth_token_file is not None:
            options["sasl_oauth_token_provider"] = FileToken(sasl.oauth_token_file)
        elif sasl.oauth_token_command is not None:
            options["sasl_oauth_token_provider"] = command_token(
                sasl.oauth_token_command, sasl.oauth_token_ttl_s
            )
        return options
    options["sasl_plain_username"] = sasl.username
    options["sasl_plain_password"] = secret(sasl.password, sasl.password_file, "broker.sasl.password")
    return options


def kafka_security(broker: Broker) -> dict[str, Any]:
    """aiokafka's security options for every client of ``broker``."""
    options: dict[str, Any] = {"security_protocol": broker.security_protocol}
    if broker.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = kafka_ssl_context(broker.tls)
    if broker.sasl is not None:
        options.update(_sasl_options(broker.sasl))
    return options


def grpc_credentials(tls: Tls, key: str = "model.tls") -> grpc.ChannelCredentials:
    """Channel credentials for Triton's --grpc-use-ssl (and --grpc-use-ssl-mutual)."""
    if not tls.check_hostname:
        raise CredentialsError(f"{key}.check_hostname: gRPC always checks the server's name")
    if tls.key_password is not None or tls.key_password_file is not None:
        raise CredentialsError(f"{key}.key_password: gRPC takes an unencrypted key_file only")
    kafka_ssl_context(tls, key)  # files that do not load: named now, not as an outage later
    root = _read(tls.ca_file, f"{key}.ca_file") if tls.ca_file is not None else None
    chain = _read(tls.cert_file, f"{key}.cert_file") if tls.cert_file is not None else None
    private = _read(tls.key_file, f"{key}.key_file") if tls.key_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=private, certificate_chain=chain)


TLS_CLOSED = "closed"  # tls_session: the server ended the session right after the handshake
TLS_UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"  # tls_session: the server's certificate does not verify
# Alerts in which the server tells of its own failure, not of the client's settings: an
# outage (a proxy with no healthy backend), waited out like one, never a refusal.
TLS_SERVER_TROUBLE = frozenset({"TLSV1_ALERT_INTERNAL_ERROR"})
TLS_CONFIRM_PAUSE_S = 1.0  # tls_refusal: between the two sessions that must end the same


def tls_session(host: str, port: int, context: ssl.SSLContext, timeout_s: float) -> str | None:
    """One TLS session to ``host:port`` that writes nothing and reads one byte: the TLS error
    (an untrusted certificate, starting with TLS_UNTRUSTED; or the alert with which a TLS 1.3
    server refuses the client's certificate only after the handshake), ``TLS_CLOSED`` when
    the server hangs up after the handshake, or None (it answered, stayed silent, or is not
    there at all). Client libraries report a refusal like an outage; this says which.
    Blocking: run it in a thread."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return None if tls.recv(1) else TLS_CLOSED
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError):
        return None  # cut short: a restarting server looks the same
    except ssl.SSLCertVerificationError as exc:
        return f"{TLS_UNTRUSTED} ({exc.verify_message})" if exc.verify_message else TLS_UNTRUSTED
    except ssl.SSLError as exc:
        return str(exc.reason or exc)
    except OSError:  # refused, unreachable, timed out
        return None


def tls_confirmed_at_once(ending: str) -> bool:
    """A session's ending that is the same on every session: the server's certificate does
    not verify against the trusted authorities (or names another host). Any other (a hang-up,
    an alert, a handshake that failed) is also what a restarting server, or a TLS proxy
    between backends, can do once: it is a refusal only when a second session ends the same."""
    return ending.startswith(TLS_UNTRUSTED)


async def tls_refusal(url: str, tls: Tls, timeout_s: float = 5.0) -> str | None:
    """Why Triton refuses a TLS connection with these settings, or None (it connects, or it
    is simply not there: an outage, waited out). gRPC reports both as UNAVAILABLE.

    An untrusted server certificate is a refusal at once; the server's own trouble
    (TLS_SERVER_TROUBLE) never is; any other ending is one only when a second session,
    TLS_CONFIRM_PAUSE_S later, ends the same way (each session bounded by ``timeout_s``)."""
    host, _, port = url.rpartition(":")
    context = kafka_ssl_context(tls, "model.tls")  # loaded once already by grpc_credentials
    context.set_alpn_protocols(["h2"])  # an HTTP/2 server speaks first (SETTINGS)
    refusal = await asyncio.to_thread(tls_session, host, int(port), context, timeout_s)
    if refusal is None or refusal in TLS_SERVER_TROUBLE:
        return None
    if not tls_confirmed_at_once(refusal):
        await asyncio.sleep(TLS_CONFIRM_PAUSE_S)
        again = await asyncio.to_thread(tls_session, host, int(port), context, timeout_s)
        if again != refusal:  # ended differently: the server, not the settings
            log.debug("TLS session to %s: %s, then %s: no verdict", url, refusal, again)
            return None
    if refusal == TLS_CLOSED:
        wants = "a client certificate it trusts" if tls.cert_file is None else "another client certificate"
        return f"the server closed the connection after the handshake: it wants {wants} (cert_file, key_file)"
    return refusal


def grpc_metadata(headers: dict[str, SecretStr]) -> tuple[tuple[str, str], ...]:
    """Extra request headers for every call to Triton (gRPC wants lower-case names)."""
    return tuple((name.lower(), value.get_secret_value()) for name, value in headers.items())
