"""The group's assignment strategies: co-partitioned sticky first, then plain sticky.
Rebalances simulated on the assignors themselves (the broker only relays their metadata):
partition moves when one of three members restarts, and when a fourth joins, against
aiokafka's default round robin; and partition p of every topic staying with one member."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import (
    StickyAssignorUserDataV1,
    StickyPartitionAssignor,
)
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.structs import TopicPartition

from pipeline.sources.assignment import TASKS, CoPartitionedStickyAssignor, member_assignors

Assignment = dict[str, list[int]]

COPARTITIONED = 0  # position in member_assignors()


class Cluster:
    def __init__(self, partitions: int | dict[str, int]) -> None:
        self.counts = {"t": partitions} if isinstance(partitions, int) else partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.counts[topic])) if topic in self.counts else None

    def topics(self) -> set[str]:
        return set(self.counts)


def rebalance(strategy: Any, members: dict[str, list[int] | None], partitions: int = 12) -> Assignment:
    """One rebalance: each member offers its previous partitions (None: a new process)."""
    metadata = {}
    for member, previous in members.items():
        held = None if previous is None else [TopicPartition("t", p) for p in previous]
        sticky = hasattr(strategy, "_metadata")
        metadata[member] = strategy._metadata(["t"], held) if sticky else strategy.metadata(["t"])
    answer = strategy.assign(Cluster(partitions), metadata)
    return {m: sorted(p for _, ps in a.assignment for p in ps) for m, a in answer.items()}


def moves(before: Assignment, after: Assignment) -> int:
    owner = {p: m for m, ps in before.items() for p in ps}
    return sum(1 for m, ps in after.items() for p in ps if owner.get(p) != m)


def restart_one_of_three(strategy: Any) -> tuple[int, Assignment, Assignment]:
    """C leaves (its process ended), then comes back as a new process (no memory)."""
    first = rebalance(strategy, {"A": None, "B": None, "C": None})
    without = rebalance(strategy, {"A": first["A"], "B": first["B"]})
    back = rebalance(strategy, {"A": without["A"], "B": without["B"], "C": None})
    return moves(first, without) + moves(without, back), first, back


def test_co_partitioned_sticky_is_offered_first_then_round_robin_for_rolling_deploys() -> None:
    # each strategy offered holds every join on the embedded broker half a session timeout
    assert [a.name for a in member_assignors()] == ["copartitioned-sticky", "roundrobin"]
    assert issubclass(member_assignors()[COPARTITIONED], CoPartitionedStickyAssignor)


def test_each_member_keeps_its_own_last_assignment() -> None:
    one, two = member_assignors()[COPARTITIONED], member_assignors()[COPARTITIONED]
    one.on_assignment(_assignment([1, 2]))
    assert one.member_assignment == [TopicPartition("t", 1), TopicPartition("t", 2)]
    assert two.member_assignment is None  # not shared through the class


def _assignment(partitions: list[int], topics: tuple[str, ...] = ("t",)) -> Any:
    return ConsumerProtocolMemberAssignment(0, [(t, partitions) for t in topics], b"")


def test_a_restart_moves_only_the_restarted_members_share_twice() -> None:
    sticky, first, back = restart_one_of_three(member_assignors()[COPARTITIONED])
    round_robin, _, _ = restart_one_of_three(RoundRobinPartitionAssignor)
    assert sticky == 8  # its 4 partitions out to the others, 4 back to it
    assert round_robin == 16
    for survivor in "AB":  # the members that stayed up keep most of what they had
        assert len(set(first[survivor]) & set(back[survivor])) >= 3


def test_a_member_joining_takes_its_share_and_nothing_else_moves() -> None:
    strategy = member_assignors()[COPARTITIONED]
    three = rebalance(strategy, {"A": None, "B": None, "C": None})
    four = rebalance(strategy, {**three, "D": None})
    assert moves(three, four) == 3 and len(four["D"]) == 3
    rr_three = rebalance(RoundRobinPartitionAssignor, {"A": None, "B": None, "C": None})
    rr_four = rebalance(RoundRobinPartitionAssignor, {"A": None, "B": None, "C": None, "D": None})
    assert moves(rr_three, rr_four) > moves(three, four)


# ── co-partitioned: members as separate processes, each with its own assignor class ──────


Owners = dict[str, set[TopicPartition]]


class Group:
    """Members each with their own assignor class, as separate processes: each sends
    `metadata()` (its last assignment in the user data), the leader (first member)
    assigns, each takes its share through `on_assignment`."""

    def __init__(self, cluster: Cluster, strategy: Callable[[], Any] | None = None) -> None:
        self.cluster = cluster
        self.strategy = strategy or (lambda: member_assignors()[COPARTITIONED])
        self.members: dict[str, tuple[Any, list[str]]] = {}

    def join(self, member: str, topics: list[str] | None = None) -> None:
        """A new process (no memory of earlier assignments)."""
        self.members[member] = (self.strategy(), topics or sorted(self.cluster.counts))

    def leave(self, member: str) -> None:
        del self.members[member]

    def rebalance(self) -> Owners:
        metadata = {m: assignor.metadata(topics) for m, (assignor, topics) in self.members.items()}
        leader = next(iter(self.members.values()))[0]
        answer = leader.assign(self.cluster, metadata)
        for member, (assignor, _) in self.members.items():
            assignor.on_assignment(answer[member])
        return {m: set(a.partitions()) for m, a in answer.items()}


def tasks(partitions: set[TopicPartition]) -> set[int]:
    return {tp.partition for tp in partitions}


def by_task(owners: Owners) -> Assignment:
    return {m: sorted(tasks(ps)) for m, ps in owners.items()}


def task_moves(before: Owners, after: Owners) -> int:
    return moves(by_task(before), by_task(after))


def assert_co_partitioned(owners: Owners, cluster: Cluster) -> None:
    """Every partition has exactly one owner, and p of every topic that has it the same."""
    held = [tp for ps in owners.values() for tp in ps]
    everything = {TopicPartition(t, p) for t, n in cluster.counts.items() for p in range(n)}
    assert len(held) == len(set(held)) and set(held) == everything
    for member, partitions in owners.items():
        expected = {
            TopicPartition(t, p) for p in tasks(partitions) for t in cluster.counts if p < cluster.counts[t]
        }
        assert partitions == expected, member


def three_on_two_topics() -> tuple[Group, Owners]:
    group = Group(Cluster({"interactions": 6, "interactions.backfill": 6}))
    for member in "ABC":
        group.join(member)
    return group, group.rebalance()


def test_each_member_gets_the_same_partition_numbers_of_both_topics() -> None:
    group, owners = three_on_two_topics()
    assert_co_partitioned(owners, group.cluster)
    for partitions in owners.values():
        by_topic = {t: {tp.partition for tp in partitions if tp.topic == t} for t in group.cluster.counts}
        assert by_topic["interactions"] == by_topic["interactions.backfill"]
        assert len(by_topic["interactions"]) == 2


def test_the_user_data_holds_the_last_assignment_as_tasks() -> None:
    assignor = member_assignors()[COPARTITIONED]
    assignor.on_assignment(_assignment([0, 3], ("interactions", "interactions.backfill")))
    metadata = assignor.metadata(["interactions", "interactions.backfill"])
    assert metadata.subscription == ["interactions", "interactions.backfill"]  # the real topics
    previous = StickyAssignorUserDataV1.decode(metadata.user_data).previous_assignment
    assert [(topic, list(ps)) for topic, ps in previous] == [(TASKS, [0, 3])]  # each number once
    assert assignor.member_assignment == [  # the member itself keeps the real partitions
        TopicPartition("interactions", 0),
        TopicPartition("interactions", 3),
        TopicPartition("interactions.backfill", 0),
        TopicPartition("interactions.backfill", 3),
    ]


def test_when_a_member_leaves_the_survivors_keep_all_their_tasks() -> None:
    group, before = three_on_two_topics()
    group.leave("C")
    after = group.rebalance()
    assert_co_partitioned(after, group.cluster)
    for survivor in "AB":
        assert before[survivor] <= after[survivor]
        assert len(tasks(after[survivor])) == 3
    assert task_moves(before, after) == 2  # C's two tasks, nothing else


def test_a_member_joining_moves_the_fewest_tasks() -> None:
    group, before = three_on_two_topics()
    group.join("D")
    after = group.rebalance()
    assert_co_partitioned(after, group.cluster)
    # 6 tasks over 4 members: 2, 2, 1, 1; the least that can move is one task to D
    assert task_moves(before, after) == 1 and len(tasks(after["D"])) == 1
    assert sum(len(after[m] - before[m]) for m in "ABC") == 0
    assert sorted(len(tasks(ps)) for ps in after.values()) == [1, 1, 2, 2]


def test_topics_of_different_partition_counts_go_with_the_task_of_each_number() -> None:
    group = Group(Cluster({"six": 6, "four": 4}))
    for member in "ABC":
        group.join(member)
    owners = group.rebalance()
    assert_co_partitioned(owners, group.cluster)  # task 5 holds six/5 only, task 0 six/0 and four/0
    assert sorted(len(tasks(ps)) for ps in owners.values()) == [2, 2, 2]  # 6 tasks, the larger count


def test_on_a_single_topic_it_moves_what_plain_sticky_moves() -> None:
    def scenario(strategy: Callable[[], Any]) -> list[int]:
        group = Group(Cluster(12), strategy)
        for member in "ABC":
            group.join(member)
        first = group.rebalance()
        group.leave("C")
        without = group.rebalance()
        group.join("C")
        back = group.rebalance()
        group.join("D")
        four = group.rebalance()
        return [task_moves(first, without), task_moves(without, back), task_moves(back, four)]

    def plain_sticky() -> Any:  # a class of its own per member, as member_assignors() makes them
        return type("Sticky", (StickyPartitionAssignor,), {"member_assignment": None, "generation": -1})

    assert scenario(lambda: member_assignors()[COPARTITIONED]) == scenario(plain_sticky) == [4, 4, 3]


def test_a_member_not_reading_a_topic_never_splits_a_number(caplog: pytest.LogCaptureFixture) -> None:
    """During a deploy adding a topic, an old member holds tasks it reads one topic of: the
    new topic's partition waits for it rather than going to a second member."""
    group = Group(Cluster({"interactions": 6, "interactions.backfill": 6}))
    group.join("old", ["interactions"])
    group.join("new")
    with caplog.at_level(logging.WARNING):
        owners = group.rebalance()
    assert tasks(owners["old"]).isdisjoint(tasks(owners["new"]))
    assert {tp.topic for tp in owners["old"]} == {"interactions"}
    assert len(tasks(owners["old"])) == len(tasks(owners["new"])) == 3
    assert "3 partitions left unassigned" in caplog.text


def test_no_subscribed_topic_in_the_metadata_assigns_nothing() -> None:
    group = Group(Cluster({}))
    group.join("A", ["missing"])
    assert group.rebalance() == {"A": set()}
