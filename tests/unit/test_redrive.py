"""`pipeline redrive` at its edges, without a broker: a reason the pipeline does not write (a
typo) is refused listing the known ones (exit 2), no broker answering is one line naming
broker.bootstrap_servers and exit 1 (transient: exit 2 is a verdict no retry changes), and a
read with fixed ends stops there however the topic grows (the re-drive's own new dead letters
are not chased). The same on the real broker: tests/integration/test_redrive_end.py."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, UnsupportedSaslMechanismError
from aiokafka.structs import ConsumerRecord

from pipeline import kafka_clients, kafka_io
from pipeline.cli import main
from pipeline.redrive import KNOWN_REASONS

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topologies" / "recommendations.yaml"
TP0 = TopicPartition("dead", 0)


@pytest.fixture
def closed_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """The shipped topology pointed at a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    monkeypatch.setenv("PIPELINE_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    return port


def test_a_reason_the_pipeline_does_not_write_is_refused_listing_the_known_ones(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["redrive", str(TOPOLOGY), "--reason", "invalid_arg", "--dry-run"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "pipeline redrive: error: argument --reason: 'invalid_arg' is not a dead-letter reason"
    )
    assert "invalid_argument" in last and "unknown_type" in last and "too_old" in last


@pytest.mark.parametrize("rate", ["-1", "nan"])
def test_a_rate_that_makes_no_sense_is_refused(
    closed_port: int, capsys: pytest.CaptureFixture[str], rate: str
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["redrive", str(TOPOLOGY), "--reason", "unknown_type", "--rate", rate])
    assert done.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("pipeline redrive: error: argument --rate: ")
    )


def test_no_broker_answering_is_one_line_naming_the_setting_and_exit_1(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker that is away is transient (docs/operations.md: exit 2 is a verdict no retry
    changes): exit 1, so a supervisor or a script retries."""
    started = time.monotonic()
    assert main(["redrive", str(TOPOLOGY), "--reason", "unknown_type"]) == 1
    assert time.monotonic() - started < 30
    out, err = capsys.readouterr()
    assert out == ""
    where = f"127.0.0.1:{closed_port}"
    assert err.startswith(
        f"pipeline redrive: {TOPOLOGY}: broker.bootstrap_servers: nothing answers at {where} ("
    )
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]"), 1),
        (KafkaTimeoutError(), 1),
        (TimeoutError(), 1),
        (ConnectionRefusedError(111, "refused"), 1),
        (UnsupportedSaslMechanismError("PLAIN"), 2),  # a refusal at the handshake: a verdict
    ],
)
def test_a_broker_away_at_start_is_exit_1_a_refusal_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception, code: int
) -> None:
    class Refused:
        async def start(self) -> None:
            raise error

        async def stop(self) -> None: ...

    monkeypatch.setattr(kafka_clients, "consumer", lambda *a, **kw: Refused())
    assert main(["redrive", str(TOPOLOGY), "--reason", "unknown_type"]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"pipeline redrive: {TOPOLOGY}: broker.bootstrap_servers: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_dead_letter_topic_stays_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class NoTopics:
        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def topics(self) -> set[str]:
            return {"interactions"}

    monkeypatch.setattr(kafka_clients, "consumer", lambda *a, **kw: NoTopics())
    assert main(["redrive", str(TOPOLOGY), "--reason", "unknown_type"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pipeline redrive: {TOPOLOGY}: sink.dead_letter_topic: no topic ")
    assert err.count("\n") == 1


def test_a_topology_that_does_not_load_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["redrive", str(bad), "--reason", "unknown_type"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: line 2, column 1: not valid YAML") and err.count("\n") == 1


def test_known_reasons_hold_every_reason_the_pipeline_writes() -> None:
    """Every reason written as a literal (parse's InvalidEvent, a sink's DeadLetter) is known:
    a new one added there without here would be refused by --reason."""
    literal = re.compile(r'(?:InvalidEvent\(\s*|DeadLetter\(\s*[^,()]+,\s*)"([a-z_]+)"')
    written = {
        reason for path in (ROOT / "pipeline").rglob("*.py") for reason in literal.findall(path.read_text())
    }
    assert {"too_old", "unknown_type", "output_refused", "malformed_json"} <= written  # the scan works
    assert written <= KNOWN_REASONS, written - KNOWN_REASONS
    assert {"invalid_argument", "bad_output", "retries_exhausted", "deadline_exceeded"} <= KNOWN_REASONS


class GrowingPartition:
    """A partition of 3 records whose every fetch finds one more written behind it (a
    re-drive's new dead letters): its high watermark never stays put."""

    def __init__(self) -> None:
        self.pos = 0
        self.high = 3

    def highwater(self, tp: TopicPartition) -> int:
        return self.high

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[object]]:
        assert tps == (TP0,)
        records = [
            ConsumerRecord("dead", 0, o, 0, 0, b"k", b"v", None, 1, 1, ()) for o in range(self.pos, self.high)
        ]
        self.pos = self.high
        self.high += 1
        return {TP0: records}


async def test_fixed_ends_stop_the_read_where_the_topic_ended_at_start() -> None:
    consumer = GrowingPartition()
    read = kafka_io.batches_to_end(consumer, [TP0], idle_timeout_s=0.5, ends={TP0: 3})  # type: ignore[arg-type]
    offsets = [r.offset for batch in [b async for b in read] for r in batch[TP0]]
    assert offsets == [0, 1, 2]


async def test_without_ends_the_read_follows_the_watermark() -> None:
    """What the fixed ends prevent (and what callers without them still get)."""
    consumer = GrowingPartition()
    read = kafka_io.batches_to_end(consumer, [TP0], idle_timeout_s=0.5)  # type: ignore[arg-type]
    seen = 0
    async for batch in read:
        seen += len(batch[TP0])
        if seen >= 10:
            break
    assert seen >= 10
    await asyncio.sleep(0)
