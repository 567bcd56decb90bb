"""Credentials and TLS options built from the topology: files read once at start, errors
that name the topology key, and TLS contexts that really verify (a local TLS server). Token
commands run processes: tests/integration/test_token_command.py."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from pipeline.security import (
    CredentialsError,
    FileToken,
    grpc_credentials,
    grpc_metadata,
    kafka_security,
    kafka_ssl_context,
)
from pipeline.topology.schema import Broker, Model, Tls
from tests.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def broker(**fields: object) -> Broker:
    return Broker.model_validate({"bootstrap_servers": "kafka:9093", **fields})


def test_plaintext_adds_only_the_protocol() -> None:
    assert kafka_security(Broker()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram_reads_the_password_file(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cr3t\n")
    options = kafka_security(
        broker(
            security_protocol="SASL_SSL",
            tls={"ca_file": str(pki.ca)},
            sasl={
                "mechanism": "SCRAM-SHA-512",
                "username": "pipeline",
                "password_file": str(tmp_path / "password"),
            },
        )
    )
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("pipeline", "s3cr3t")
    assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_a_missing_secret_file_names_its_key(tmp_path: Path) -> None:
    topology_broker = broker(
        security_protocol="SASL_PLAINTEXT",
        sasl={"mechanism": "PLAIN", "username": "u", "password_file": str(tmp_path / "absent")},
    )
    with pytest.raises(
        CredentialsError, match=r"broker\.sasl\.password_file: cannot read .*absent"
    ) as caught:
        kafka_security(topology_broker)
    assert caught.value.exit_code == 2


def test_a_certificate_that_does_not_load_is_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(CredentialsError, match=r"broker\.tls: the certificate or key does not load"):
        kafka_ssl_context(Tls(ca_file=pki.ca, cert_file=bad, key_file=pki.client_key))
    with pytest.raises(CredentialsError, match=r"broker\.tls\.ca_file: cannot read .*nowhere"):
        kafka_ssl_context(Tls(ca_file=tmp_path / "nowhere.pem"))


def test_secrets_do_not_show_in_the_topology() -> None:
    b = broker(security_protocol="SASL_SSL", sasl={"username": "u", "password": "hunter2"})
    assert "hunter2" not in repr(b) and "hunter2" not in str(b.model_dump())


async def _handshake(pki: Pki, client: ssl.SSLContext, require_client_cert: bool = False) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        server_context.load_verify_locations(cafile=str(pki.ca))
        server_context.verify_mode = ssl.CERT_REQUIRED

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_kafka_tls_context_trusts_its_ca_only(pki: Pki) -> None:
    await _handshake(pki, kafka_ssl_context(Tls(ca_file=pki.ca)))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(pki, kafka_ssl_context(Tls(ca_file=pki.other_ca)))


async def test_the_kafka_tls_context_presents_the_client_certificate(pki: Pki) -> None:
    mutual = Tls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    await _handshake(pki, kafka_ssl_context(mutual), require_client_cert=True)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await _handshake(pki, kafka_ssl_context(Tls(ca_file=pki.ca)), require_client_cert=True)


async def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    provider = FileToken(path)
    assert await provider.token() == "first"
    path.write_text("second\n")
    import os

    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert await provider.token() == "second"


def test_grpc_credentials_need_a_plain_key_and_hostname_checks(pki: Pki) -> None:
    assert grpc_credentials(Tls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key))
    with pytest.raises(CredentialsError, match=r"model\.tls\.check_hostname"):
        grpc_credentials(Tls(ca_file=pki.ca, check_hostname=False))


def test_request_headers_for_a_gateway_stay_secret() -> None:
    model = Model.model_validate({"name": "m", "headers": {"Authorization": "Bearer abc"}})
    assert grpc_metadata(model.headers) == (("authorization", "Bearer abc"),)
    assert "abc" not in repr(model)


async def test_a_token_file_gone_mid_run_keeps_the_last_token_and_missing_at_start_stops(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    with pytest.raises(CredentialsError, match=r"oauth_token_file: cannot read"):
        await FileToken(path).token()  # never had one
    path.write_text("first\n")
    provider = FileToken(path)
    assert await provider.token() == "first"
    path.unlink()  # a sidecar rewriting it
    assert await provider.token() == "first"  # not an error inside aiokafka's fetcher
