"""`pipeline topics create`: every topic a topology needs, made with the right partition
counts and configs, idempotently (issue 26): a deploy Job's step before `pipeline run`,
which only checks that they exist (``topics_check.py``).

The topics: the inputs (co-partitioned: one count), the output, the dead letters, the
joined examples (``outcomes.examples_topic``) and, with ``state.dir`` set, the state
changelog (compacted, with the inputs' count: the config ``state/changelog.py`` makes it
with). Inputs that exist already set the count (``--partitions`` not given: theirs; given
and other: a problem), as the changelog's always, since ``pipeline run`` stops on a
changelog whose count is not the inputs'. A topic that exists with the partition count
wanted is left alone; one with another count, or a changelog the broker says is not kept
for ever (not compacted, or compacted and deleted after ``retention.ms``), is a problem:
reported, never altered (a partition count changed under a running group moves its users'
keys). While an input is a problem nothing is created: what would be made follows the
inputs' count, which someone has to settle first.

Replication: the inputs, output and dead letters are made with the broker's default
(``default.replication.factor``: -1 in CreateTopics v4, Kafka 2.4 and later), the
changelog with ``state.changelog_replication_factor``; ``--replication-factor`` sets both.

The existing topics come from one Metadata request for all topics, never by name: the
embedded broker (Tansu) creates a topic a client asks for by name, with its own count.
Configs are read with DescribeConfigs for all of a topic's configs (Tansu closes the
connection when asked for named ones); a broker that does not describe them leaves the
changelog's compaction unchecked, said on its line."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.admin import CreateTopicsRequest_v3, CreateTopicsResponse_v3
from aiokafka.protocol.api import Request

from pipeline import kafka_clients
from pipeline.errors import Fatal
from pipeline.security import CredentialsError
from pipeline.state.changelog import CHANGELOG_CONFIG
from pipeline.topics_check import topology_topics
from pipeline.topology.schema import Topology

# deploy/k8s/scaledobject.yaml (maxReplicaCount) and docker/compose.yaml assume 12 input
# partitions: at most 12 members share the work.
DEFAULT_PARTITIONS = 12
REACH_TIMEOUT_S = 15.0  # connect and list the topics; a broker that does not answer: exit 2
REQUEST_TIMEOUT_S = 30.0  # one CreateTopics or DescribeConfigs request
RELIST_WAIT_S = 5.0  # for a topic another client made meanwhile to be listed
RELIST_PAUSE_S = 0.5
# what a config the broker does not report is (Tansu reports only those set on the topic)
KAFKA_DEFAULTS = {"cleanup.policy": "delete", "retention.ms": "604800000"}
BROKER_DEFAULT = -1  # a replication factor: the broker's default.replication.factor

# problem: no retry fixes it (exit 1); failed: the broker failed for now, a retry may (exit 2);
# held: not made because an input is a problem (the count it would get is in question)
Status = Literal["created", "would create", "exists", "problem", "failed", "held"]


class BrokerAway(Fatal, reason="broker_unreachable"):
    """No broker answered (or one stopped answering part-way): nothing judged (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Wanted:
    """A topic the topology needs: its name, the key naming it, how it is made, and the
    option its partition count comes from (named when it does not fit)."""

    topic: str
    key: str
    partitions: int
    replication_factor: int  # BROKER_DEFAULT: the broker's
    option: str
    configs: dict[str, str] = field(default_factory=dict)
    # the count is a default: inputs that exist replace it with theirs
    follows_inputs: bool = False

    @property
    def is_input(self) -> bool:
        return self.key.startswith("source.topics[")

    def request(self) -> tuple[str, int, int, list[Any], list[tuple[str, str]]]:
        """The topic as one entry of a CreateTopics request."""
        return self.topic, self.partitions, self.replication_factor, [], list(self.configs.items())

    def made(self) -> str:
        configs = "".join(f", {k}={v}" for k, v in self.configs.items())
        return f"{self.partitions} partitions, {_replication(self.replication_factor)}{configs}"


@dataclass(frozen=True)
class Existing:
    """A topic as the broker lists it."""

    partitions: int
    replication_factor: int


@dataclass(frozen=True)
class Line:
    """One topic's outcome, printed as one line."""

    status: Status
    topic: str
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<12} {self.topic} ({self.key}): {self.detail}"


OK = Line("exists", "", "", "")  # a topic not judged (missing): no problem of its own


def wanted_topics(
    t: Topology,
    partitions: int | None = None,
    output_partitions: int | None = None,
    dead_letter_partitions: int | None = None,
    replication_factor: int | None = None,
) -> list[Wanted]:
    """Every topic ``t`` reads or writes, in the order of its keys. ``partitions``: the
    inputs' and the changelog's (default 12, or the count of the inputs that exist:
    ``follow_inputs``); the output's and the examples', the dead letters' default to it.
    ``replication_factor``: default the broker's for all but the changelog, the topology's
    ``state.changelog_replication_factor`` for the changelog (the replicas the pipeline
    makes it with: ``state/changelog.py``)."""
    inputs = partitions or DEFAULT_PARTITIONS
    outputs = output_partitions or inputs
    replication = replication_factor or BROKER_DEFAULT
    counts = {
        "sink.topic": (outputs, "--output-partitions", not (output_partitions or partitions)),
        "outcomes.examples_topic": (outputs, "--output-partitions", not (output_partitions or partitions)),
        "sink.dead_letter_topic": (
            dead_letter_partitions or inputs,
            "--dead-letter-partitions",
            not (dead_letter_partitions or partitions),
        ),
    }
    wanted = []
    for topic, key in topology_topics(t).items():
        count, option, follows = counts.get(key, (inputs, "--partitions", not partitions))
        wanted.append(Wanted(topic, key, count, replication, option, follows_inputs=follows))
    if t.state.dir is not None:
        configs = dict(CHANGELOG_CONFIG)  # as the pipeline makes it (state/changelog.py)
        changelog_replication = replication_factor or t.state.changelog_replication_factor
        changelog = Wanted(
            t.changelog_topic,
            "state.changelog_topic",
            inputs,
            changelog_replication,
            "--partitions",
            configs,
            follows_inputs=True,  # always the inputs' count: `pipeline run` stops on another
        )
        wanted.append(changelog)
    return wanted


def follow_inputs(wanted: list[Wanted], have: dict[str, Existing]) -> list[Wanted]:
    """``wanted`` with the count of the inputs that exist (the first one listed, in the
    topology's order) where the count follows them: the inputs' and the others' not given by
    an option, and the changelog's always. No input exists: ``wanted`` as it is."""
    existing = [w for w in wanted if w.is_input and w.topic in have]
    if not existing:
        return wanted
    first = existing[0]
    count = have[first.topic].partitions
    option = f"the count of {first.topic}, {first.key}"
    return [replace(w, partitions=count, option=option) if w.follows_inputs else w for w in wanted]


def judge(wanted: Wanted, have: Existing, configs: dict[str, str] | str | None = None) -> Line:
    """An existing topic against what is wanted. ``configs``: the topic's configs as the
    broker described them, or why they could not be read (a str); None: not read (the
    partition count was already wrong, or no config is wanted)."""
    if have.partitions != wanted.partitions:
        shared = wanted.is_input or wanted.key == "state.changelog_topic"
        detail = (
            f"{have.partitions} partitions, {wanted.partitions} wanted ({wanted.option}"
            + ("; the inputs and the changelog share one count" if shared else "")
            + "): left as it is"
        )
        return Line("problem", wanted.topic, wanted.key, detail)
    detail = f"{have.partitions} partitions"
    asked = wanted.replication_factor
    if asked != BROKER_DEFAULT and have.replication_factor != asked:
        detail += f", replication {have.replication_factor} (not the {asked} asked: not changed)"
    if isinstance(configs, str):
        return Line("exists", wanted.topic, wanted.key, f"{detail}; configs not checked ({configs})")
    unfit = [] if configs is None else config_problems(wanted.configs, configs)
    if unfit:
        return Line("problem", wanted.topic, wanted.key, f"{detail}, {'; '.join(unfit)}: left as it is")
    fitting = "".join(f", {key}={configs[key]}" for key in wanted.configs if configs)
    return Line("exists", wanted.topic, wanted.key, detail + fitting)


def config_problems(wanted: dict[str, str], configs: dict[str, str]) -> list[str]:
    """What in ``configs`` (as the broker described them) does not fit ``wanted``, one
    phrase each; a config the broker does not report is Kafka's default."""
    problems = []
    for key, value in wanted.items():
        have = configs.get(key, KAFKA_DEFAULTS.get(key))
        if not config_fits(key, value, have):
            problems.append(f"{key}={have or 'unset'}, {value} wanted")
        elif key == "cleanup.policy" and "delete" in _policies(have) and "delete" not in _policies(value):
            # compacted AND deleted: a user silent for retention.ms loses their state at
            # the next restore, without a word (-1: never deleted, only compacted)
            retention = configs.get("retention.ms", KAFKA_DEFAULTS["retention.ms"])
            if retention != "-1":
                problems.append(
                    f"{key}={have} with retention.ms={retention}: the state of a user silent that "
                    f"long is deleted, not restored ({value} wanted, or retention.ms=-1)"
                )
    return problems


def config_fits(key: str, wanted: str, have: str | None) -> bool:
    """A cleanup.policy fits when it includes every policy wanted (``compact,delete`` is
    compacted: ``config_problems`` judges its retention); any other config when equal."""
    if have is None:
        return False
    if key == "cleanup.policy":
        return _policies(wanted) <= _policies(have)
    return have == wanted


def _policies(policy: str | None) -> set[str]:
    return {p.strip() for p in (policy or "").split(",")}


def _replication(factor: int) -> str:
    return "the broker's default replication" if factor == BROKER_DEFAULT else f"replication {factor}"


async def create_topics(t: Topology, wanted: list[Wanted], dry_run: bool = False) -> list[Line]:
    """One line per wanted topic, in order: created (or would be, ``dry_run``), exists, or
    a problem. BrokerAway when no broker answers within REACH_TIMEOUT_S (or one stops
    answering); CredentialsError when the broker refuses the topology's TLS or SASL."""
    admin = kafka_clients.admin(t.broker)
    try:
        have = await _reach(t, admin)
        wanted = follow_inputs(wanted, have)
        try:
            lines = {
                w.topic: await _judge_existing(admin, w, have[w.topic]) for w in wanted if w.topic in have
            }
            missing = [w for w in wanted if w.topic not in have]
            wrong = [w.topic for w in wanted if w.is_input and lines.get(w.topic, OK).status == "problem"]
            if wrong:  # their count is in question: making the rest would fix a count in place
                why = f"held back while {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} a problem"
                lines |= {w.topic: Line("held", w.topic, w.key, f"{w.made()}: {why}") for w in missing}
            elif dry_run:
                lines |= {w.topic: Line("would create", w.topic, w.key, w.made()) for w in missing}
            elif missing:
                lines |= await _create(admin, missing)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerAway(
                f"broker.bootstrap_servers: {t.broker.bootstrap_servers} stopped answering part-way "
                f"({type(exc).__name__}: {exc}): run it again"
            ) from None
        return [lines[w.topic] for w in wanted]
    finally:
        await admin.close()


async def _reach(t: Topology, admin: AIOKafkaAdminClient) -> dict[str, Existing]:
    async def connect_and_list() -> dict[str, Existing]:
        await admin.start()
        return await _listed(admin)

    try:
        return await asyncio.wait_for(connect_and_list(), REACH_TIMEOUT_S)
    except CredentialsError:
        raise
    except (KafkaError, OSError, TimeoutError) as exc:
        servers = t.broker.bootstrap_servers
        if isinstance(exc, TimeoutError):
            why = f"no answer from {servers} within {REACH_TIMEOUT_S:.0f} s"
        elif isinstance(exc, KafkaConnectionError | OSError):
            why = f"could not connect to {servers} (nothing listening there, or unreachable)"
        else:
            why = f"{servers} failed: {type(exc).__name__}: {exc}"
        raise BrokerAway(f"broker.bootstrap_servers: {why}") from None


async def _listed(admin: AIOKafkaAdminClient) -> dict[str, Existing]:
    """Every topic the broker lists (one Metadata request for all: never by name)."""
    listed = {}
    for topic in await admin.describe_topics(None):
        if topic["error_code"] != 0:
            continue
        partitions = topic["partitions"]
        replicas = min((len(p["replicas"]) for p in partitions), default=0)
        listed[topic["topic"]] = Existing(len(partitions), replicas)
    return listed


async def _judge_existing(admin: AIOKafkaAdminClient, wanted: Wanted, have: Existing) -> Line:
    if not wanted.configs or have.partitions != wanted.partitions:
        return judge(wanted, have)
    return judge(wanted, have, await _configs(admin, wanted.topic))


async def _configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str] | str:
    """The topic's configs as the broker describes them, or why it did not."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)  # all configs (Tansu: not named ones)
    try:
        responses = await asyncio.wait_for(admin.describe_configs([resource]), REQUEST_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        return f"the broker did not describe them: {type(exc).__name__}: {exc}"
    for response in responses:
        for described in response.to_object()["resources"]:
            if described["resource_name"] != topic:
                continue
            if described["error_code"] != 0:
                error = _error(described["error_code"], described["error_message"])
                return f"the broker did not describe them: {error}"
            return {_name(e): e["config_value"] for e in described["config_entries"]}
    return "the broker did not describe them"


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("config_names", entry.get("config_name")))


async def _create(admin: AIOKafkaAdminClient, missing: list[Wanted]) -> dict[str, Line]:
    """CreateTopics for every missing topic at once. A topic another client made meanwhile
    (TopicAlreadyExists: another Job, a first use on a broker that creates topics then) is
    judged as it was made."""
    request = CreateTopics([w.request() for w in missing], int(REQUEST_TIMEOUT_S * 1000))
    try:
        response = await asyncio.wait_for(admin._send_to_controller(request), REQUEST_TIMEOUT_S + 5)
    except NotImplementedError:  # the broker has no CreateTopics v4: Kafka before 2.4
        detail = "not created: the broker takes no default replication factor (Kafka < 2.4): "
        detail += "give --replication-factor"
        return {w.topic: Line("problem", w.topic, w.key, detail) for w in missing}
    errors = {
        answer[0]: (answer[1], answer[2] if len(answer) > 2 else None) for answer in response.topic_errors
    }
    lines: dict[str, Line] = {}
    raced: list[Wanted] = []
    for w in missing:
        code, message = errors.get(w.topic, (None, None))
        if code is None:
            lines[w.topic] = Line("failed", w.topic, w.key, "not created: the broker did not answer for it")
        elif code == 0:
            lines[w.topic] = Line("created", w.topic, w.key, w.made())
        elif code == TopicAlreadyExistsError.errno:
            raced.append(w)
        else:
            status: Status = "failed" if for_code(code).retriable else "problem"
            lines[w.topic] = Line(status, w.topic, w.key, f"not created: {_error(code, message)}")
    return lines | await _made_meanwhile(admin, raced)


class CreateTopicsResponse_v4(CreateTopicsResponse_v3):
    API_VERSION = 4  # as v3's


class CreateTopicsRequest_v4(CreateTopicsRequest_v3):
    """v3's fields; a replication factor (or count) of -1 asks for the broker's default, which
    Kafka takes from v4 on (KIP-464, Kafka 2.4). aiokafka 0.14 goes up to v3."""

    API_VERSION = 4
    RESPONSE_TYPE = CreateTopicsResponse_v4


class CreateTopics(Request[CreateTopicsRequest_v4]):
    """CreateTopics v4 only: a broker without it is told apart (NotImplementedError from
    aiokafka's version choice) rather than sent -1 at a version that may refuse it."""

    API_KEY = 19

    def __init__(self, topics: list[tuple[str, int, int, list[Any], list[tuple[str, str]]]], timeout_ms: int):
        self.topics = topics
        self.timeout_ms = timeout_ms

    def build(self, request_struct_class: type[CreateTopicsRequest_v4]) -> CreateTopicsRequest_v4:
        return request_struct_class(
            create_topic_requests=self.topics, timeout=self.timeout_ms, validate_only=False
        )


async def _made_meanwhile(admin: AIOKafkaAdminClient, raced: list[Wanted]) -> dict[str, Line]:
    """Topics the broker said exist when asked to make them, judged once listed (a topic
    just made may take a moment to be listed on Kafka)."""
    lines: dict[str, Line] = {}
    deadline = asyncio.get_running_loop().time() + RELIST_WAIT_S
    while raced:
        have = await _listed(admin)
        for w in [w for w in raced if w.topic in have]:
            lines[w.topic] = await _judge_existing(admin, w, have[w.topic])
            raced.remove(w)
        if not raced or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(RELIST_PAUSE_S)
    for w in raced:  # still not listed: hidden from this client (ACLs), or the broker slow
        detail = f"exists, says the broker, but not listed within {RELIST_WAIT_S:.0f} s: not checked"
        lines[w.topic] = Line("failed", w.topic, w.key, detail)
    return lines


def _error(code: int, message: str | None) -> str:
    name = for_code(code).__name__
    return f"{name}: {message}" if message else name
