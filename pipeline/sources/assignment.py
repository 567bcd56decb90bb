"""How the group spreads partitions over its members: sticky first. A member that stays
up keeps its partitions when another joins, leaves or restarts, so its per-partition work
(and, with state, its users' state) stays where it is; aiokafka's default round robin
deals every partition anew on each rebalance.

aiokafka's own StickyPartitionAssignor (a port of Kafka's) keeps each member's last
assignment in class attributes: each consumer gets a subclass of its own, so that two
members in one process never share it. Round robin stays listed second: during a rolling
deploy from a release that offered only round robin, the group uses what every member
offers."""

from __future__ import annotations

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor


def member_assignors() -> tuple[type[AbstractPartitionAssignor], ...]:
    """The strategies one group member offers, most preferred first."""
    sticky = type(
        "StickyPartitionAssignorOfThisMember",
        (StickyPartitionAssignor,),
        {"member_assignment": None, "generation": StickyPartitionAssignor.DEFAULT_GENERATION_ID},
    )
    return (sticky, RoundRobinPartitionAssignor)
