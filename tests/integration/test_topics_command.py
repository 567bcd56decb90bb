"""`pipeline topics create` on the embedded broker (issue 26): every topic of a topology made
with its partition count (the inputs co-partitioned, the changelog compacted, with the
count of inputs that exist already), nothing changed by a second run, a topic with another
count or a changelog not kept for ever reported (exit 1) and left as it is, nothing made
while an input is wrong, a broker away told in one line (exit 2) within a bound; over
mutual TLS as over plaintext (the topology's broker section, as every client).

The topics are read back from a listing of all topics (asking by name would make them on
this broker) and the changelog's configs with DescribeConfigs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline import kafka_clients
from pipeline.devstack.process import free_port
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import ensure_topics
from pipeline.topology.schema import Broker, Topology
from tests.certs import Pki
from tests.integration.harness import run_pipeline_command

pytestmark = pytest.mark.integration

RUN_WITHIN_S = 20.0  # a run on a live broker takes about a second, most of it Python's start
AWAY_WITHIN_S = 10.0  # a closed port is refused at once (the bound on a silent one is 15 s)


def topology_file(stack, tmp_path: Path, **sections: dict[str, Any]) -> tuple[Path, Topology]:
    """The shipped topology on fresh topics: two inputs, state on disk (so a changelog),
    joined examples written."""
    state = {"dir": str(tmp_path / "state"), **sections.pop("state", {})}
    data = topology_on_stack(stack, state=state, **sections)
    tag = data["source"]["group_id"].removeprefix("g-")
    data["source"]["topics"] = [f"in-{tag}", f"in2-{tag}"]
    data["outcomes"] = {"examples_topic": f"ex-{tag}"}
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, Topology.model_validate(data)


def create(path: Path, *options: str) -> tuple[int, list[str], str, float]:
    started = time.monotonic()
    done = run_pipeline_command("topics", "create", path, *options, timeout_s=RUN_WITHIN_S)
    return done.returncode, done.stdout.splitlines(), done.stderr, time.monotonic() - started


def line_of(lines: list[str], topic: str) -> str:
    (line,) = [line for line in lines if f" {topic} (" in line]
    return line


async def listed(broker: Broker) -> dict[str, int]:
    """Every topic's partition count, from a listing of all topics."""
    admin = kafka_clients.admin(broker)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(None)}
    finally:
        await admin.close()


async def cleanup_policy(broker: Broker, topic: str) -> str | None:
    admin = kafka_clients.admin(broker)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (described,) = response.to_object()["resources"]
    configs = {e["config_names"]: e["config_value"] for e in described["config_entries"]}
    return configs.get("cleanup.policy")


async def test_makes_every_topic_once_then_changes_nothing(stack, tmp_path: Path) -> None:
    path, t = topology_file(stack, tmp_path)
    inputs = t.source.topics
    counts = {**dict.fromkeys(inputs, 3), t.changelog_topic: 3, t.sink.topic: 3}
    counts |= {t.outcomes.examples_topic: 3, t.sink.dead_letter_topic: 2}

    code, lines, err, took = create(path, "--partitions", "3", "--dead-letter-partitions", "2")

    assert code == 0, err
    assert len(lines) == len(counts) == 6, lines
    for topic, partitions in counts.items():
        assert line_of(lines, topic).startswith(f"created      {topic} ("), lines
        # the broker's replication (-1: Tansu takes it), the changelog the topology's
        replication = "replication 1" if topic == t.changelog_topic else "the broker's default replication"
        assert f": {partitions} partitions, {replication}" in line_of(lines, topic), lines
    assert line_of(lines, t.changelog_topic).endswith(
        f"{t.changelog_topic} (state.changelog_topic): 3 partitions, replication 1, cleanup.policy=compact"
    )
    have = await listed(t.broker)
    assert {topic: have.get(topic) for topic in counts} == counts
    assert await cleanup_policy(t.broker, t.changelog_topic) == "compact"
    assert await cleanup_policy(t.broker, inputs[0]) in (None, "delete")
    assert took < RUN_WITHIN_S

    code, again, err, _ = create(path, "--partitions", "3", "--dead-letter-partitions", "2")

    assert code == 0, err
    assert [line.split()[0] for line in again] == ["exists"] * 6, again
    assert line_of(again, t.changelog_topic).endswith(": 3 partitions, cleanup.policy=compact")
    assert line_of(again, t.sink.dead_letter_topic).endswith(": 2 partitions")
    have = await listed(t.broker)
    assert {topic: have.get(topic) for topic in counts} == counts


async def test_a_topic_with_another_partition_count_is_reported_and_left_alone(stack, tmp_path: Path) -> None:
    path, t = topology_file(stack, tmp_path)
    await ensure_topics(t.broker, [t.sink.topic], partitions=5)

    code, lines, err, _ = create(path, "--partitions", "3")

    assert code == 1, err
    assert "Traceback" not in err, err
    assert line_of(lines, t.sink.topic) == (
        f"problem      {t.sink.topic} (sink.topic): 5 partitions, 3 wanted (--output-partitions): "
        "left as it is"
    )
    assert sum(line.startswith("problem") for line in lines) == 1, lines
    assert sum(line.startswith("created") for line in lines) == 5, lines  # the rest is made
    have = await listed(t.broker)
    assert have[t.sink.topic] == 5
    assert [have[topic] for topic in t.source.topics] == [3, 3]

    # an input with another count than the one asked: the co-partitioning named
    code, lines, _, _ = create(path, "--partitions", "4", "--output-partitions", "5")
    assert code == 1
    assert line_of(lines, t.source.topics[0]).endswith(
        ": 3 partitions, 4 wanted (--partitions; the inputs and the changelog share one count): left as it is"
    )
    assert line_of(lines, t.sink.topic).startswith("exists")
    assert (await listed(t.broker))[t.source.topics[0]] == 3


async def test_a_changelog_not_compacted_is_reported(stack, tmp_path: Path) -> None:
    path, t = topology_file(stack, tmp_path)
    await ensure_topics(t.broker, [t.changelog_topic], partitions=3)  # no cleanup.policy

    code, lines, err, _ = create(path, "--partitions", "3")

    assert code == 1, err
    assert line_of(lines, t.changelog_topic) == (
        f"problem      {t.changelog_topic} (state.changelog_topic): 3 partitions, "
        "cleanup.policy=delete, compact wanted: left as it is"
    )
    assert await cleanup_policy(t.broker, t.changelog_topic) in (None, "delete")  # not altered


async def test_a_changelog_compacted_and_deleted_is_reported(stack, tmp_path: Path) -> None:
    """compact,delete: a user silent for retention.ms loses their state from restores."""
    path, t = topology_file(stack, tmp_path)
    admin = kafka_clients.admin(t.broker)
    await admin.start()
    try:
        configs = {"cleanup.policy": "compact,delete", "retention.ms": "86400000"}
        await admin.create_topics([NewTopic(t.changelog_topic, 3, 1, topic_configs=configs)])
    finally:
        await admin.close()

    code, lines, err, _ = create(path, "--partitions", "3")

    assert code == 1, err
    assert line_of(lines, t.changelog_topic) == (
        f"problem      {t.changelog_topic} (state.changelog_topic): 3 partitions, cleanup.policy=compact,"
        "delete with retention.ms=86400000: the state of a user silent that long is deleted, not restored "
        "(compact wanted, or retention.ms=-1): left as it is"
    )


async def test_inputs_made_before_set_the_changelog_count(stack, tmp_path: Path) -> None:
    """Inputs made with 6 partitions (by their producers' team, say): asked for 12, nothing
    is made (a changelog of 12 would stop `pipeline run` and need deleting by hand); asked
    for nothing, everything is made with their 6."""
    path, t = topology_file(stack, tmp_path)
    await ensure_topics(t.broker, t.source.topics, partitions=6)
    others = [t.sink.topic, t.sink.dead_letter_topic, t.outcomes.examples_topic, t.changelog_topic]

    code, lines, err, _ = create(path, "--partitions", "12")

    assert code == 1, err
    assert [line.split()[0] for line in lines] == ["problem", "problem", "held", "held", "held", "held"], (
        lines
    )
    assert line_of(lines, t.changelog_topic).startswith(
        f"held         {t.changelog_topic} (state.changelog_topic): 6 partitions, replication 1, "
    )
    have = await listed(t.broker)
    assert [topic for topic in others if topic in have] == []

    code, lines, err, _ = create(path)

    assert code == 0, err
    assert [line.split()[0] for line in lines] == [
        "exists",
        "exists",
        "created",
        "created",
        "created",
        "created",
    ]
    have = await listed(t.broker)
    assert {topic: have[topic] for topic in [*t.source.topics, *others]} == dict.fromkeys(
        [*t.source.topics, *others], 6
    )


async def test_without_state_dir_no_changelog_and_a_dry_run_makes_nothing(stack, tmp_path: Path) -> None:
    path, t = topology_file(stack, tmp_path, state={"dir": None})

    code, lines, err, _ = create(path, "--dry-run")

    assert code == 0, err
    assert len(lines) == 5 and all(line.startswith("would create ") for line in lines), lines
    assert all(": 12 partitions, the broker's default replication" in line for line in lines), lines
    assert t.changelog_topic not in "\n".join(lines)
    have = await listed(t.broker)
    wanted = [*t.source.topics, t.sink.topic, t.sink.dead_letter_topic, t.outcomes.examples_topic]
    assert not [topic for topic in wanted if topic in have]


async def test_a_broker_away_is_one_line_and_exit_2(stack, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    path, _ = topology_file(stack, tmp_path, broker={"bootstrap_servers": f"127.0.0.1:{port}"})

    code, lines, err, took = create(path)

    assert code == 2, err
    assert lines == []
    assert err.strip().splitlines() == [
        f"pipeline topics create: {path}: broker.bootstrap_servers: could not connect to "
        f"127.0.0.1:{port} (nothing listening there, or unreachable)"
    ]
    assert took < AWAY_WITHIN_S


@pytest.mark.parametrize("trusted", [True, False])
async def test_over_mutual_tls(stack, pki: Pki, tls_bootstrap: str, tmp_path: Path, trusted: bool) -> None:
    tls = {"ca_file": str(pki.ca if trusted else pki.other_ca)}
    tls |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    broker = {"bootstrap_servers": tls_bootstrap, "security_protocol": "SSL", "tls": tls}
    path, t = topology_file(stack, tmp_path, broker=broker)

    code, lines, err, took = create(path, "--partitions", "2")

    if trusted:
        assert code == 0, err
        assert [line.split()[0] for line in lines] == ["created"] * 6, lines
        assert (await listed(t.broker))[t.changelog_topic] == 2
        assert await cleanup_policy(t.broker, t.changelog_topic) == "compact"
    else:  # the one line names the key to fix; nothing made
        assert code == 2, err
        assert lines == []
        (line,) = err.strip().splitlines()
        assert line.startswith(f"pipeline topics create: {path}: broker.tls: the broker at "), line
        assert "presented a certificate that does not verify" in line, line
    assert took < AWAY_WITHIN_S
