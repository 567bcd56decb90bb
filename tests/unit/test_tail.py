"""`pipeline tail`'s lines: a recommendation as user → items (version, latency), a dead
letter with its reason headers, an input as its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.events import RawRecord
from pipeline.tail import TailError, describe, render, where_to_read


def _record(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = (), topic: str = "t") -> RawRecord:
    return RawRecord(topic, 2, 41, 1_764_090_000_031, b"k", value, headers)


def test_a_recommendation_reads_as_user_items_version_latency() -> None:
    doc = {
        "user_id": 412,
        "items": [{"item_id": 3021, "score": 0.8}, {"item_id": 77, "score": 0.5}],
        "model": {"name": "recommender", "version": "3"},
        "sources": [{"topic": "interactions", "partition": 2, "offset": 1041}],
        "source_count": 1,
        "lane": "browsing",
        "timings": {"queued_ms": 0.4, "inference_ms": 6.1, "end_to_end_ms": 31.4},
    }
    assert (
        describe(_record(orjson.dumps(doc))) == "user 412 → 3021, 77 (recommender v3, 31 ms, lane browsing)"
    )
    doc.update(source_count=3, items=[{"item_id": i} for i in range(12)])
    line = describe(_record(orjson.dumps(doc)))
    assert line.startswith("user 412 → 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … (12) (") and "3 events" in line


def test_a_dead_letter_reads_with_its_reason_and_source() -> None:
    headers = (
        ("dlq.reason", b"malformed_json"),
        ("dlq.error_class", b"InvalidEvent"),
        ("dlq.detail", b"unexpected character"),
        ("dlq.attempts", b"0"),
        ("dlq.source_topic", b"interactions"),
        ("dlq.source_partition", b"1"),
        ("dlq.source_offset", b"99"),
    )
    assert describe(_record(b"{not json", headers)) == (
        "dead letter malformed_json (InvalidEvent: unexpected character) of interactions[1]@99: b'{not json'"
    )
    retried = (("dlq.reason", b"unavailable"), ("dlq.attempts", b"4"))
    assert (
        describe(_record(b'{"user_id": 1}', retried)) == 'dead letter unavailable, 4 attempts: {"user_id":1}'
    )


def test_inputs_read_as_their_json_and_the_rest_as_bytes() -> None:
    event = {"event_id": "e1", "user_id": "cust-18", "item_id": 5, "type": "view", "ts": 1}
    assert describe(_record(orjson.dumps(event))) == orjson.dumps(event).decode()
    assert describe(_record(b"\xff\x00")) == "not JSON: b'\\xff\\x00'"
    assert describe(_record(None)) == "not JSON: (no value)"
    undecodable = _record(None)._replace(undecodable="CRC mismatch")
    assert describe(undecodable) == "undecodable: CRC mismatch"
    line = render(_record(b"[1]", topic="interactions"))
    assert line.endswith(" interactions[2]@41  [1]") and line[:12].count(":") == 2


def test_without_a_dev_stack_it_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(TailError, match=f"no dev stack runs in {tmp_path}"):
        where_to_read(None, None, tmp_path)
    assert where_to_read(None, "127.0.0.1:9", tmp_path).bootstrap_servers == "127.0.0.1:9"  # type: ignore[union-attr]


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:99999", ":::", "127.0.0.1", "kafka:x"])
def test_a_bootstrap_that_is_not_host_port_is_refused_by_name(
    bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["tail", "--bootstrap", bootstrap, "x"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --bootstrap: '{bootstrap}'" in err and "Traceback" not in err


async def test_a_start_failing_any_way_stops_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Else aiokafka complains of an unclosed consumer after the error."""
    from pipeline import kafka_clients, tail
    from pipeline.topology.schema import Broker

    stopped = []

    class Refusing:
        async def start(self) -> None:
            raise OverflowError("port must be 0-65535")

        async def stop(self) -> None:
            stopped.append(True)

    monkeypatch.setattr(kafka_clients, "consumer", lambda *_a, **_k: Refusing())
    with pytest.raises(OverflowError):
        await tail.tail(Broker(), "t", 1)
    assert stopped == [True]


def test_a_reader_that_stops_reading_ends_it_quietly(tmp_path: Path) -> None:
    """`pipeline tail -f | head -2`: exit 0 and nothing on stderr, no BrokenPipeError."""
    import subprocess
    import sys

    program = """
import sys
from pipeline import tail
async def endless(*_args, **_kwargs):
    while True:
        print("a record line", flush=True)
tail._until_signal = endless
sys.exit(tail.cmd_tail(tail.argparse.Namespace(topology=None, bootstrap="127.0.0.1:9", workdir=None,
    topic="t", lines=1, follow=True, log_level=None), lambda *_: None))
"""
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.readline() == b"a record line\n"
    child.stdout.close()  # the reader is gone
    assert child.wait(timeout=20) == 0
    assert child.stderr.read() == b""


def test_a_topology_left_by_a_killed_dev_is_no_dev_stack(tmp_path: Path) -> None:
    """SIGKILL leaves WORKDIR/topology.yaml behind: the pid it names tells it is stale."""
    import os
    import subprocess
    import sys

    from pipeline.devstack.watch import write_running_topology
    from pipeline.testing import topology

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = tmp_path / "topology.yaml"
    write_running_topology(topology(), running)
    assert where_to_read(None, None, tmp_path).name == topology().name  # type: ignore[union-attr]
    text = running.read_text()
    running.write_text(text.replace(f"(pid {os.getpid()})", f"(pid {gone.pid})", 1))
    with pytest.raises(TailError, match=rf"the `pipeline dev` \(pid {gone.pid}\) that wrote .* is gone"):
        where_to_read(None, None, tmp_path)


async def test_following_prints_a_record_the_client_cannot_decode_as_its_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catch-up read steps past such a record; following must too (a traceback before)."""
    import asyncio
    import io

    from aiokafka import TopicPartition

    from pipeline import tail
    from pipeline.events import RawRecord

    tp = TopicPartition("interactions", 0)
    stop = asyncio.Event()
    marker = RawRecord(tp.topic, 0, 7, -1, None, None, (), "UnicodeDecodeError: header key")

    class Consumer:
        def seek(self, tp: TopicPartition, offset: int) -> None:
            pass

        async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    async def stepped(
        consumer: Any, starts: dict[TopicPartition, int], **_: Any
    ) -> dict[TopicPartition, list[RawRecord]]:
        assert starts == {tp: 7}  # looked for where following began
        stop.set()
        return {tp: [marker]}

    monkeypatch.setattr(tail, "step_past_undecodable", stepped)
    out = io.StringIO()
    assert await tail._follow(Consumer(), [tp], {tp: 7}, out, stop) == 1  # type: ignore[arg-type]
    assert "UnicodeDecodeError" in out.getvalue()
