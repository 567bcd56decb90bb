"""The group's assignment strategy: sticky first. Rebalances simulated on the assignors
themselves (the broker only relays their metadata): partition moves when one of three
members restarts, and when a fourth joins, against aiokafka's default round robin."""

from __future__ import annotations

from typing import Any

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.structs import TopicPartition

from pipeline.sources.assignment import member_assignors

Assignment = dict[str, list[int]]


class Cluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def topics(self) -> set[str]:
        return {"t"}


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


def test_sticky_is_offered_first_and_round_robin_kept_for_rolling_deploys() -> None:
    assert [a.name for a in member_assignors()] == ["sticky", "roundrobin"]


def test_each_member_keeps_its_own_last_assignment() -> None:
    one, two = member_assignors()[0], member_assignors()[0]
    one.on_assignment(_assignment([1, 2]))
    assert one.member_assignment == [TopicPartition("t", 1), TopicPartition("t", 2)]
    assert two.member_assignment is None  # not shared through the class


def _assignment(partitions: list[int]) -> Any:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    return ConsumerProtocolMemberAssignment(0, [("t", partitions)], b"")


def test_a_restart_moves_only_the_restarted_members_share_twice() -> None:
    sticky, first, back = restart_one_of_three(member_assignors()[0])
    round_robin, _, _ = restart_one_of_three(RoundRobinPartitionAssignor)
    assert sticky == 8  # its 4 partitions out to the others, 4 back to it
    assert round_robin == 16
    for survivor in "AB":  # the members that stayed up keep most of what they had
        assert len(set(first[survivor]) & set(back[survivor])) >= 3


def test_a_member_joining_takes_its_share_and_nothing_else_moves() -> None:
    strategy = member_assignors()[0]
    three = rebalance(strategy, {"A": None, "B": None, "C": None})
    four = rebalance(strategy, {**three, "D": None})
    assert moves(three, four) == 3 and len(four["D"]) == 3
    rr_three = rebalance(RoundRobinPartitionAssignor, {"A": None, "B": None, "C": None})
    rr_four = rebalance(RoundRobinPartitionAssignor, {"A": None, "B": None, "C": None, "D": None})
    assert moves(rr_three, rr_four) > moves(three, four)
