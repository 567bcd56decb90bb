"""`pipeline topics create` without a broker: its options refused when they make no sense,
the topics a topology needs and their counts (the inputs that exist setting them), the
verdict on a topic that exists, nothing made while an input is wrong, and a topic made by
someone else between the listing and the creation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pipeline import topics_create
from pipeline.cli import build_parser
from pipeline.topics_create import (
    BROKER_DEFAULT,
    Existing,
    Wanted,
    create_topics,
    follow_inputs,
    judge,
    wanted_topics,
)
from pipeline.topology.schema import Topology


def topology(**sections: dict[str, Any]) -> Topology:
    data: dict[str, Any] = {
        "name": "recs",
        "source": {"topics": ["in-a", "in-b"], "group_id": "g"},
        "model": {"name": "m"},
        "sink": {"topic": "out", "dead_letter_topic": "dlq"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Topology.model_validate(data)


@pytest.mark.parametrize(
    "argv",
    [
        ["--partitions", "0"],
        ["--partitions", "-3"],
        ["--output-partitions", "two"],
        ["--dead-letter-partitions", "0"],
        ["--replication-factor", "0"],
    ],
)
def test_counts_that_make_no_sense_are_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["topics", "create", "topology.yaml", *argv])
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"pipeline topics create: error: argument {argv[0]}: "), last
    assert argv[1] in last


def test_a_topology_is_needed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["topics", "create"])
    assert done.value.code == 2
    assert "the following arguments are required: topology" in capsys.readouterr().err


def test_the_topics_and_their_counts() -> None:
    plain = wanted_topics(topology())
    assert [(w.topic, w.key, w.partitions, w.replication_factor, w.configs) for w in plain] == [
        ("in-a", "source.topics[0]", 12, BROKER_DEFAULT, {}),
        ("in-b", "source.topics[1]", 12, BROKER_DEFAULT, {}),
        ("out", "sink.topic", 12, BROKER_DEFAULT, {}),
        ("dlq", "sink.dead_letter_topic", 12, BROKER_DEFAULT, {}),
    ]
    full = topology(
        state={"dir": "/var/state", "changelog_replication_factor": 3}, outcomes={"examples_topic": "ex"}
    )
    asked = wanted_topics(full, partitions=6, dead_letter_partitions=2)
    # the broker's default replication but for the changelog: the topology's, as the pipeline's
    assert [(w.topic, w.partitions, w.replication_factor, w.option) for w in asked] == [
        ("in-a", 6, -1, "--partitions"),
        ("in-b", 6, -1, "--partitions"),
        ("out", 6, -1, "--output-partitions"),
        ("dlq", 2, -1, "--dead-letter-partitions"),
        ("ex", 6, -1, "--output-partitions"),
        ("recs-user-histories", 6, 3, "--partitions"),  # the inputs' count, always
    ]
    assert str(asked[0].made()) == "6 partitions, the broker's default replication"
    assert asked[-1].configs == {"cleanup.policy": "compact"}  # as state/changelog.py makes it
    outputs = wanted_topics(full, partitions=6, output_partitions=4, replication_factor=2)
    assert [(w.partitions, w.replication_factor) for w in outputs] == [
        (6, 2),
        (6, 2),
        (4, 2),
        (6, 2),
        (4, 2),
        (6, 2),
    ]
    joins_off = topology(outcomes={"enabled": False, "examples_topic": "ex"})
    assert "ex" not in [w.topic for w in wanted_topics(joins_off)]  # nothing writes it then


def test_inputs_that_exist_set_the_counts_not_given() -> None:
    """Inputs made with 6 partitions: a run without --partitions makes the rest with 6 (the
    changelog must have theirs, or `pipeline run` stops); with --partitions the inputs are
    judged against it, and the changelog still follows them; no input there: as asked."""
    full = topology(state={"dir": "/var/state"}, outcomes={"examples_topic": "ex"})
    six = {"in-a": Existing(6, 3)}

    def counts(wanted: list[Wanted]) -> list[int]:
        return [w.partitions for w in follow_inputs(wanted, six)]

    assert counts(wanted_topics(full)) == [6, 6, 6, 6, 6, 6]
    assert counts(wanted_topics(full, dead_letter_partitions=2)) == [6, 6, 6, 2, 6, 6]
    assert counts(wanted_topics(full, partitions=12)) == [12, 12, 12, 12, 12, 6]
    assert counts(wanted_topics(full, output_partitions=3)) == [6, 6, 3, 6, 3, 6]
    assert [w.partitions for w in follow_inputs(wanted_topics(full), {"out": Existing(6, 1)})] == [12] * 6
    second = follow_inputs(wanted_topics(full), {"in-b": Existing(4, 1), "in-a": Existing(6, 1)})
    assert str(judge(second[1], Existing(4, 1))) == (
        "problem      in-b (source.topics[1]): 4 partitions, 6 wanted (the count of in-a, "
        "source.topics[0]; the inputs and the changelog share one count): left as it is"
    )


CHANGELOG = Wanted("chg", "state.changelog_topic", 3, 1, "--partitions", {"cleanup.policy": "compact"})
OUTPUT = Wanted("out", "sink.topic", 3, 1, "--output-partitions")


def test_an_existing_topic_judged() -> None:
    assert str(judge(OUTPUT, Existing(3, 1))) == "exists       out (sink.topic): 3 partitions"
    assert str(judge(OUTPUT, Existing(5, 1))) == (
        "problem      out (sink.topic): 5 partitions, 3 wanted (--output-partitions): left as it is"
    )
    assert str(judge(OUTPUT, Existing(3, 3))) == (
        "exists       out (sink.topic): 3 partitions, replication 3 (not the 1 asked: not changed)"
    )
    by_default = Wanted("out", "sink.topic", 3, BROKER_DEFAULT, "--output-partitions")
    assert str(judge(by_default, Existing(3, 3))) == "exists       out (sink.topic): 3 partitions"
    assert judge(CHANGELOG, Existing(2, 1)).detail == (
        "2 partitions, 3 wanted (--partitions; the inputs and the changelog share one count): left as it is"
    )


@pytest.mark.parametrize(
    ("configs", "status", "detail"),
    [
        ({"cleanup.policy": "compact"}, "exists", "3 partitions, cleanup.policy=compact"),
        (
            {"cleanup.policy": "compact,delete", "retention.ms": "-1"},
            "exists",
            "3 partitions, cleanup.policy=compact,delete",
        ),
        (
            {"cleanup.policy": "compact,delete", "retention.ms": "86400000"},
            "problem",
            "3 partitions, cleanup.policy=compact,delete with retention.ms=86400000: the state of a user "
            "silent that long is deleted, not restored (compact wanted, or retention.ms=-1): left as it is",
        ),
        (
            {"cleanup.policy": "delete,compact"},
            "problem",
            "3 partitions, cleanup.policy=delete,compact with retention.ms=604800000: the state of a user "
            "silent that long is deleted, not restored (compact wanted, or retention.ms=-1): left as it is",
        ),  # retention.ms not reported: Kafka's default, 7 days
        (
            {"cleanup.policy": "delete"},
            "problem",
            "3 partitions, cleanup.policy=delete, compact wanted: left as it is",
        ),
        (
            {},
            "problem",
            "3 partitions, cleanup.policy=delete, compact wanted: left as it is",
        ),  # Kafka's default
        ("no DescribeConfigs", "exists", "3 partitions; configs not checked (no DescribeConfigs)"),
    ],
)
def test_a_changelog_judged_by_its_configs(configs: dict[str, str] | str, status: str, detail: str) -> None:
    line = judge(CHANGELOG, Existing(3, 1), configs)
    assert (line.status, line.detail) == (status, detail)


class FakeAdmin:
    """A broker whose listings answer these, one after the other (the last again), and
    whose CreateTopics answers these error codes (0 for a topic not named)."""

    def __init__(self, listings: list[dict[str, int]], codes: dict[str, int], max_version: int = 4) -> None:
        self.listings = listings
        self.codes = codes
        self.max_version = max_version
        self.created: list[str] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def describe_topics(self, topics: None) -> list[dict[str, Any]]:
        listing = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
        return [
            {"topic": name, "error_code": 0, "partitions": [{"replicas": [1]}] * count}
            for name, count in listing.items()
        ]

    async def _send_to_controller(self, request: Any) -> Any:
        self.created += [entry[0] for entry in request.topics]
        if self.max_version < 4:  # aiokafka's version choice finds no version it can send
            raise NotImplementedError("Support for CreateTopics v0 has not yet been added")
        return SimpleNamespace(
            topic_errors=[(name, self.codes.get(name, 0), None) for name, *_ in request.topics]
        )


async def lines_on(admin: FakeAdmin, monkeypatch: pytest.MonkeyPatch, *wanted: Wanted) -> list[str]:
    monkeypatch.setattr(topics_create.kafka_clients, "admin", lambda broker: admin)
    monkeypatch.setattr(topics_create, "RELIST_PAUSE_S", 0.01)
    monkeypatch.setattr(topics_create, "RELIST_WAIT_S", 0.05)
    return [str(line) for line in await create_topics(topology(), list(wanted))]


async def test_a_topic_made_meanwhile_is_judged_as_it_was_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client made ``chg`` with 2 partitions between the listing and the creation;
    the broker lists it only on the second look after."""
    admin = FakeAdmin([{}, {}, {"chg": 2}], {"chg": 36})  # TopicAlreadyExists
    assert await lines_on(admin, monkeypatch, OUTPUT, CHANGELOG) == [
        "created      out (sink.topic): 3 partitions, replication 1",
        "problem      chg (state.changelog_topic): 2 partitions, 3 wanted (--partitions; the inputs and "
        "the changelog share one count): left as it is",
    ]


async def test_a_creation_refused_is_a_problem_one_failed_for_now_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dlq = Wanted("dlq", "sink.dead_letter_topic", 3, 5, "--dead-letter-partitions")
    never_listed = Wanted("hidden", "outcomes.examples_topic", 3, 1, "--output-partitions")
    admin = FakeAdmin([{}], {"out": 7, "dlq": 38, "hidden": 36})
    assert await lines_on(admin, monkeypatch, OUTPUT, dlq, never_listed) == [
        "failed       out (sink.topic): not created: RequestTimedOutError",
        "problem      dlq (sink.dead_letter_topic): not created: InvalidReplicationFactorError",
        "failed       hidden (outcomes.examples_topic): exists, says the broker, but not listed within 0 s: "
        "not checked",
    ]


async def test_nothing_is_made_while_an_input_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """in-a has 6 partitions, 12 asked: what would be made waits (its count is in question),
    said on its line, and the run is a problem (exit 1)."""
    wanted = wanted_topics(topology(state={"dir": "/var/state"}), partitions=12)
    admin = FakeAdmin([{"in-a": 6}], {})
    lines = await lines_on(admin, monkeypatch, *wanted)
    assert admin.created == []
    assert lines[0].startswith("problem      in-a (source.topics[0]): 6 partitions, 12 wanted (--partitions")
    assert lines[1:] == [
        f"held         {topic} ({key}): {made}: held back while in-a is a problem"
        for topic, key, made in [
            ("in-b", "source.topics[1]", "12 partitions, the broker's default replication"),
            ("out", "sink.topic", "12 partitions, the broker's default replication"),
            ("dlq", "sink.dead_letter_topic", "12 partitions, the broker's default replication"),
            # the changelog follows the inputs that exist, whatever is asked
            (
                "recs-user-histories",
                "state.changelog_topic",
                "6 partitions, replication 1, cleanup.policy=compact",
            ),
        ]
    ]


async def test_a_broker_without_default_replication_is_told_to_name_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = FakeAdmin([{}], {}, max_version=3)  # Kafka before 2.4
    assert await lines_on(admin, monkeypatch, OUTPUT) == [
        "problem      out (sink.topic): not created: the broker takes no default replication factor "
        "(Kafka < 2.4): give --replication-factor"
    ]
