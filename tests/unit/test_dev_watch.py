"""`pipeline dev`'s metrics port: the one asked for, or the topology's, or its default (a free
one when that is taken), and what it prints at start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline.devstack import watch
from pipeline.devstack.watch import Addresses, MetricsPortTaken, dev_metrics_port
from pipeline.testing import topology


def _held() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_the_port_asked_for_wins_and_a_taken_one_is_refused() -> None:
    t = topology(operations={"metrics_port": 9401})
    assert dev_metrics_port(0, t) == 0
    sock, port = _held()
    with sock:
        assert dev_metrics_port(None, topology(operations={"metrics_port": port + 1})) == port + 1
        with pytest.raises(MetricsPortTaken, match=f"--metrics-port {port}: in use"):
            dev_metrics_port(port, t)
        with pytest.raises(MetricsPortTaken, match=f"operations.metrics_port {port}: in use"):
            dev_metrics_port(None, topology(operations={"metrics_port": port}))


def test_the_default_port_or_a_free_one(monkeypatch: pytest.MonkeyPatch) -> None:
    sock, port = _held()
    with sock:
        monkeypatch.setattr(watch, "DEV_METRICS_PORT", port)
        chosen = dev_metrics_port(None, topology())
        assert chosen not in (0, port)
    assert dev_metrics_port(None, topology()) == port  # free again


def test_the_start_lines_name_every_address(tmp_path: Path) -> None:
    t = topology(operations={"metrics_port": 9490})
    where = Addresses(
        "127.0.0.1:1",
        "127.0.0.1:2",
        "http://127.0.0.1:9490",
        tmp_path / "broker.log",
        tmp_path / "triton.log",
        tmp_path / "topology.yaml",
    )
    text = "\n".join(where.lines(t, default_workdir=False))
    for part in (
        "broker    127.0.0.1:1",
        "triton    127.0.0.1:2 gRPC",
        "http://127.0.0.1:9490/metrics",
        str(tmp_path / "broker.log"),
        str(tmp_path / "triton.log"),
        f"pipeline tail --workdir {tmp_path} {t.sink.topic}",
    ):
        assert part in text, text
