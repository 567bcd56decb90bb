"""The start's topics check (issue 24, item 2): a topic the topology reads or writes that the
broker does not list stops the start with one line naming it and its key (exit 2); a topic
made meanwhile is waited for a bounded time; a listing that fails does not stop the start."""

from __future__ import annotations

import asyncio

import pytest

from pipeline import kafka_clients, topics_check
from pipeline.cli import main
from pipeline.errors import BrokerAway
from pipeline.topics_check import MissingTopics, check_broker, check_topics
from pipeline.topology.schema import Broker, Topology

TOPOLOGY = Topology.model_validate(
    {
        "name": "topics",
        "broker": {"bootstrap_servers": "127.0.0.1:9092"},
        "source": {"topics": ["in-a", "in-b"], "group_id": "g"},
        "model": {"name": "m", "url": "127.0.0.1:9"},
        "sink": {"topic": "recs", "dead_letter_topic": "recs.dlq"},
    }
)


def listing(*answers: set[str] | Exception):
    """A broker whose listings answer these, the last one again and again."""
    calls: list[int] = []

    async def list_topics(broker: Broker) -> set[str]:
        calls.append(1)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return list_topics, calls


async def test_every_topic_there_passes() -> None:
    list_topics, calls = listing({"in-a", "in-b", "recs", "recs.dlq", "other"})
    await check_topics(TOPOLOGY, list_topics, wait_s=0)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("absent", "key"),
    [("recs", "sink.topic"), ("recs.dlq", "sink.dead_letter_topic"), ("in-b", "source.topics[1]")],
)
async def test_a_missing_topic_is_one_line_naming_it_and_its_key(absent: str, key: str) -> None:
    list_topics, _ = listing({"in-a", "in-b", "recs", "recs.dlq"} - {absent})
    with pytest.raises(MissingTopics) as raised:
        await check_topics(TOPOLOGY, list_topics, wait_s=0)
    assert str(raised.value) == f"topic {absent} ({key}) does not exist on 127.0.0.1:9092: create it first"
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)


async def test_the_joined_examples_topic_is_checked_when_configured() -> None:
    with_examples = TOPOLOGY.model_copy(
        update={"outcomes": TOPOLOGY.outcomes.model_copy(update={"examples_topic": "recs.examples"})}
    )
    list_topics, _ = listing({"in-a", "in-b", "recs", "recs.dlq"})
    await check_topics(TOPOLOGY, list_topics, wait_s=0)  # not configured: not needed
    with pytest.raises(MissingTopics, match=r"topic recs.examples \(outcomes.examples_topic\) does not"):
        await check_topics(with_examples, list_topics, wait_s=0)


async def test_several_missing_topics_are_named_together() -> None:
    list_topics, _ = listing({"in-a", "in-b"})
    with pytest.raises(
        MissingTopics, match=r"topics recs \(sink.topic\), recs.dlq \(sink.dead_letter_topic\)"
    ):
        await check_topics(TOPOLOGY, list_topics, wait_s=0)


async def test_a_topic_made_while_the_start_waits_passes(monkeypatch) -> None:
    monkeypatch.setattr(topics_check, "RELIST_PAUSE_S", 0.01)
    list_topics, calls = listing({"in-a", "in-b", "recs"}, {"in-a", "in-b", "recs", "recs.dlq"})
    await check_topics(TOPOLOGY, list_topics, wait_s=5)
    assert len(calls) == 2


async def test_the_wait_for_a_missing_topic_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(topics_check, "RELIST_PAUSE_S", 0.01)
    list_topics, calls = listing({"in-a", "in-b", "recs"})
    with pytest.raises(MissingTopics, match=r"recs\.dlq"):
        await asyncio.wait_for(check_topics(TOPOLOGY, list_topics, wait_s=0.1), 2)
    assert 2 <= len(calls) <= 20


async def test_a_listing_that_fails_does_not_stop_the_start(caplog: pytest.LogCaptureFixture) -> None:
    list_topics, _ = listing(OSError("connection refused"))
    await check_topics(TOPOLOGY, list_topics, wait_s=0)
    assert "not checked" in caplog.text


async def test_the_topics_are_checked_only_once_the_broker_answered(monkeypatch) -> None:
    answered: list[bool] = [False]
    checked: list[Topology] = []

    async def connection(broker: Broker, *args: object) -> bool:
        return answered[0]

    async def topics(t: Topology, *args: object) -> None:
        checked.append(t)

    monkeypatch.setattr(kafka_clients, "check_connection", connection)
    monkeypatch.setattr(kafka_clients, "RECHECK_PAUSE_S", 0.01)
    monkeypatch.setattr(topics_check, "check_topics", topics)
    broker = TOPOLOGY.broker.model_copy(update={"start_timeout_ms": 50})
    unanswered = TOPOLOGY.model_copy(update={"broker": broker})
    with pytest.raises(BrokerAway):  # not answering within broker.start_timeout_ms: exit 2
        await check_broker(unanswered)
    assert checked == []
    answered[0] = True
    assert await check_broker(TOPOLOGY) is True and checked == [TOPOLOGY]


def test_the_cli_says_it_in_one_line_and_exits_2(monkeypatch, tmp_path, capsys) -> None:
    """`pipeline run` on a topology whose dead-letter topic is missing (no broker needed:
    the listing is a stand-in): one line on stderr, exit 2."""

    async def listed(broker: Broker) -> set[str]:
        return {"in-a", "in-b", "recs"}

    async def connection(broker: Broker, *args: object) -> bool:
        return True

    monkeypatch.setattr(kafka_clients, "check_connection", connection)
    monkeypatch.setattr(topics_check, "broker_topics", listed)
    monkeypatch.setattr(topics_check, "MISSING_WAIT_S", 0.0)
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY.model_dump_json())
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "pipeline stopped: topic recs.dlq (sink.dead_letter_topic) does not exist on 127.0.0.1:9092: "
        "create it first"
    )
