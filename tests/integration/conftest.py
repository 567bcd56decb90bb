"""Fixtures of the real-stack tests beyond the session's stack (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.process import free_port
from pipeline.devstack.tls_proxy import TlsProxy
from tests.certs import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("kafka-pki"))


@pytest.fixture(scope="session")
def tls_bootstrap(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dedicated broker behind a TLS terminator that demands a client certificate; the
    broker advertises the terminator, so every connection (metadata, group coordinator,
    fetch) goes through TLS."""
    workdir = tmp_path_factory.mktemp("tls-broker")
    proxy_port = free_port()
    broker = EmbeddedBroker(workdir, advertised_port=proxy_port)
    proxy = TlsProxy(
        workdir,
        f"127.0.0.1:{broker.port}",
        pki.server_cert,
        pki.server_key,
        client_ca=pki.ca,
        port=proxy_port,
    )
    try:
        broker.start()
        proxy.start()
        broker.wait_until(broker.listening, 30, "listening")
        proxy.wait_until(proxy.listening, 30, "listening")
        yield broker.bootstrap
    finally:
        proxy.stop()
        broker.stop()
