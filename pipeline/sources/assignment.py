"""How the group spreads partitions over its members: co-partitioned and sticky, as Kafka
Streams does with its tasks.

Co-partitioned: per-user state lives per partition NUMBER. A user's events carry the same
key in every input topic and the input topics share a partition count, so they land on
the same partition number in each (`interactions` p and `interactions.backfill` p). If
partition p of one topic went to one member and p of another to a second, both would
update the users of p. So partition number p is one task, and a member gets p of every
topic it reads or of none.

Sticky: a member that stays up keeps its tasks when another joins, leaves or restarts, so
its per-partition work and its users' state stay where they are; aiokafka's default round
robin deals every partition anew on each rebalance.

`CoPartitionedStickyAssignor` runs aiokafka's StickyPartitionAssignor (a port of Kafka's)
on a virtual single-topic cluster whose partitions are the task numbers, then expands each
member's tasks into the real partitions. It keeps each member's last assignment in class
attributes as its parent does: each consumer gets a subclass of its own, so that two
members in one process never share it.

Offered in this order: co-partitioned sticky; round robin (unless `source.offer_round_robin`
is off), for a rolling deploy from a release that offered only round robin: the group uses
one that every member offers. No more: the embedded broker (Tansu) holds a group join half a
session timeout for each strategy a member offers, so each one slows every rebalance there."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import cast

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)

TASKS = "tasks"  # the virtual topic: its partition p stands for partition p of every topic


class TaskCluster:
    """The cluster the sticky algorithm sees: one topic whose partitions are the task
    numbers 0..N-1. StickyAssignmentExecutor reads only `topics()` and
    `partitions_for_topic()`."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks

    def topics(self) -> set[str]:
        return {TASKS}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.tasks)) if topic == TASKS else None


def as_tasks(partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
    """Partitions as the tasks they belong to (their numbers on the virtual topic)."""
    return [TopicPartition(TASKS, p) for p in sorted({tp.partition for tp in partitions})]


class CoPartitionedStickyAssignor(StickyPartitionAssignor):
    """Sticky over partition numbers: partition p of every subscribed topic goes to the
    member that holds task p."""

    # its own protocol name: its user data holds tasks, not the partitions plain sticky
    # members send, and the group never mixes members of two protocols
    name = "copartitioned-sticky"

    @classmethod
    def _metadata(
        cls,
        topics: Iterable[str],
        member_assignment_partitions: list[TopicPartition] | None,
        generation: int = -1,
    ) -> ConsumerProtocolMemberMetadata:
        """`metadata()` (inherited) sends the member's last assignment through here: as
        tasks, so the leader's sticky run sees what it held of the virtual topic. The
        subscription stays the real topics, which the leader expands the tasks into."""
        held = None if member_assignment_partitions is None else as_tasks(member_assignment_partitions)
        return super()._metadata(topics, held, generation)

    @classmethod
    def assign(
        cls,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """The parent's sticky run over tasks 0..N-1 (N: the largest partition count of
        the subscribed topics), then each member's task p as partition p of every topic
        it subscribes to that has one."""
        partitions: dict[str, set[int]] = {}  # the subscribed topics the cluster knows
        for topic in sorted({t for metadata in members.values() for t in metadata.subscription}):
            if found := cluster.partitions_for_topic(topic):
                partitions[topic] = found
        tasks = max(map(len, partitions.values()), default=0)

        # every member can take any task; its user data already names tasks
        on_tasks = {
            member: ConsumerProtocolMemberMetadata(metadata.version, [TASKS], metadata.user_data)
            for member, metadata in members.items()
        }
        # the executor only reads topics() and partitions_for_topic()
        by_task = super().assign(cast(ClusterMetadata, TaskCluster(tasks)), on_tasks)

        assignment: dict[str, ConsumerProtocolMemberAssignment] = {}
        taken = 0
        for member, metadata in members.items():
            held = {p for _, ps in by_task[member].assignment for p in ps}
            real = [
                (topic, sorted(held & partitions[topic]))
                for topic in sorted(set(metadata.subscription) & partitions.keys())
                if held & partitions[topic]
            ]
            taken += sum(len(ps) for _, ps in real)
            assignment[member] = ConsumerProtocolMemberAssignment(cls.version, real, b"")
        if (left := sum(map(len, partitions.values())) - taken) > 0:
            # members read different topics (a deploy adding or removing one): a topic's
            # partition p waits for a holder of task p that reads it, rather than going to
            # another member that would then share the users of p
            log.warning(
                "%d partitions left unassigned: their task's member does not subscribe to their topic",
                left,
            )
        return assignment


def _of_this_member(assignor: type[StickyPartitionAssignor]) -> type[StickyPartitionAssignor]:
    """A subclass of its own: the last assignment lives in class attributes."""
    return type(
        f"{assignor.__name__}OfThisMember",
        (assignor,),
        {"member_assignment": None, "generation": StickyPartitionAssignor.DEFAULT_GENERATION_ID},
    )


def member_assignors(round_robin: bool = True) -> tuple[type[AbstractPartitionAssignor], ...]:
    """The strategies one group member offers, most preferred first."""
    mine = _of_this_member(CoPartitionedStickyAssignor)
    return (mine, RoundRobinPartitionAssignor) if round_robin else (mine,)
