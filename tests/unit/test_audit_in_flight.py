"""The audit's in-flight bound: an unanswered input is in flight while it is young and its
group has not committed past it; otherwise it is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.audit import AuditBooks, InFlight
from pipeline.topology.schema import Topology

NOW = 1_800_000_000_000


def _books() -> AuditBooks:
    books = AuditBooks()
    for offset, age_ms in enumerate([60_000, 10_000, 1_000, 500]):
        books.add_input("in", 0, offset, user=7, timestamp_ms=NOW - age_ms)
    books.add_input("in", 1, 0, user=8, timestamp_ms=NOW - 100)
    return books


def test_young_uncommitted_inputs_are_in_flight() -> None:
    summary = _books().summary(InFlight(NOW, 30_000))
    assert summary["lost"] == 1 and summary["in_flight"] == 4, summary  # the minute-old one lost
    assert summary["lost_examples"] == ["in[0]@0"]
    assert summary["in_flight_bound_ms"] == 30_000


def test_a_committed_input_with_no_answer_is_lost_however_young() -> None:
    summary = _books().summary(InFlight(NOW, 30_000, committed={("in", 0): 3}))
    assert summary["lost"] == 3 and summary["in_flight"] == 2, summary
    assert summary["lost_examples"] == ["in[0]@0", "in[0]@1", "in[0]@2"]


def test_no_bound_and_no_in_flight_argument_count_every_unanswered_input_lost() -> None:
    assert _books().summary(InFlight(NOW, 0))["lost"] == 5
    plain = _books().summary()
    assert plain["lost"] == 5 and "in_flight" not in plain


def test_answered_inputs_are_neither() -> None:
    books = _books()
    books.add_recommendation(b'{"user_id": 7, "sources": [{"topic": "in", "partition": 0, "offset": 0}]}')
    summary = books.summary(InFlight(NOW, 30_000))
    assert summary["lost"] == 0 and summary["in_flight"] == 4, summary


def _shipped(**source: object) -> Topology:
    path = Path(__file__).resolve().parents[2] / "topologies" / "recommendations.yaml"
    data = yaml.safe_load(path.read_text())
    data["source"].update(source)
    return Topology.model_validate(data)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_broker_answering_is_one_line_naming_the_address_exit_2(tmp_path, capsys) -> None:
    from pipeline.cli import main

    shipped = Path(__file__).resolve().parents[2] / "topologies" / "recommendations.yaml"
    port = _closed_port()
    path = tmp_path / "t.yaml"
    path.write_text(shipped.read_text().replace("127.0.0.1:9092", f"127.0.0.1:{port}"))
    assert main(["audit", str(path)]) == 2  # 1 means lost inputs: not a broker away
    err = capsys.readouterr().err
    assert err.startswith(f"pipeline audit: broker.bootstrap_servers: no answer at 127.0.0.1:{port} (")
    assert err.count("\n") == 1 and "Traceback" not in err


class _Admin:
    def __init__(self, members: list[object] | None) -> None:
        self.members = members

    async def start(self) -> None:
        if self.members is None:
            raise OSError("no answer")

    async def describe_consumer_groups(self, group_ids: list[str]) -> list[object]:
        from types import SimpleNamespace

        return [SimpleNamespace(groups=[(0, group_ids[0], "Empty", "", "", self.members)])]

    async def close(self) -> None:
        pass


async def test_the_summary_says_when_nothing_consumes_what_is_in_flight(monkeypatch) -> None:
    """in_flight assumes a running group: with no member, nothing may ever answer them."""
    from pipeline import audit, kafka_clients

    topology = _shipped(group_id="g")
    for members, said in [
        ([], "the group g has no member: nothing consumes the topics"),
        (None, "in flight assumes the group g runs (the broker did not list its members)"),
        ([("m-1",)], "the group g has 1 member(s)"),
    ]:
        monkeypatch.setattr(kafka_clients, "admin", lambda _broker, m=members: _Admin(m))
        got = await audit.group_members(topology)
        assert got == (None if members is None else len(members))
        assert audit.in_flight_note(got, "g").startswith(said)


async def test_the_committed_offsets_reader_start_is_bounded(monkeypatch) -> None:
    import asyncio

    from pipeline import audit

    class Hanging:
        stopped = False

        async def start(self) -> None:
            await asyncio.sleep(3600)

        async def stop(self) -> None:
            Hanging.stopped = True

    monkeypatch.setattr(audit, "kafka_consumer", lambda *_a, **_k: Hanging())
    monkeypatch.setattr(audit, "COMMITTED_TIMEOUT_S", 0.05)
    topology = _shipped(group_id="g")
    with pytest.raises(TimeoutError):
        await audit.committed_offsets(topology, [("in", 0)])
    assert Hanging.stopped
