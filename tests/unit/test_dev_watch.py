"""`pipeline dev`'s metrics port: the one asked for, or the topology's, or its default (a free
one when that is taken), and what it prints at start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

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


def test_the_port_is_bound_before_the_stack_starts_and_a_race_is_one_line() -> None:
    """Checked free, then taken by another dev run starting at the same time: refused at
    once (cmd_dev: one line, exit 2), not once the whole stack has started."""
    from pipeline.devstack.watch import metrics_listener

    assert metrics_listener(0, None, topology()) is None
    sock, port = _held()
    with sock:
        with pytest.raises(MetricsPortTaken, match=f"--metrics-port {port}: in use"):
            metrics_listener(port, port, topology())
        with pytest.raises(MetricsPortTaken, match=f"operations.metrics_port {port}: in use"):
            metrics_listener(port, None, topology(operations={"metrics_port": port}))
        fallback = metrics_listener(port, None, topology())  # the default, taken meanwhile
        assert fallback is not None
        with fallback:
            assert fallback.getsockname()[1] != port
    listener = metrics_listener(port, port, topology())
    assert listener is not None
    with listener, pytest.raises(MetricsPortTaken):  # held from now on: the second run is refused
        metrics_listener(port, port, topology())


def test_two_dev_runs_at_once_the_second_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import cli
    from pipeline.devstack import dev

    sock, port = _held()
    monkeypatch.setattr(watch, "bindable", lambda *_a: True)  # checked before the other bound it
    monkeypatch.setattr(dev, "main", lambda _opts: pytest.fail("the stack must not start"))
    with sock:
        assert cli.main(["dev", "--metrics-port", str(port), "--events", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"pipeline dev: --metrics-port {port}: in use on 127.0.0.1 (--metrics-port 0: none)\n"


def test_a_reference_in_what_dev_replaces_needs_no_value(tmp_path: Path) -> None:
    """dev puts its own broker's address in broker.bootstrap_servers: an unset ${NAME} there
    is no reason to refuse the file; one anywhere else still is."""
    from pipeline.cli import DEFAULT_TOPOLOGY
    from pipeline.devstack.watch import load_dev_topology
    from pipeline.errors import TopologyError

    data = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    data["broker"]["bootstrap_servers"] = "${SURELY_UNSET_BOOT}"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    dev = {"PIPELINE_BOOTSTRAP_SERVERS": "127.0.0.1:4321", "PIPELINE_TRITON_URL": "127.0.0.1:8001"}
    assert load_dev_topology(path, dev).broker.bootstrap_servers == "127.0.0.1:4321"
    data["source"]["group_id"] = "${SURELY_UNSET_GROUP}"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TopologyError, match="SURELY_UNSET_GROUP is not set"):
        load_dev_topology(path, dev)
