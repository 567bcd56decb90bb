"""Partition moves on the real broker when one of three group members restarts, and when a
fourth joins: the pipeline's strategies (sticky first) against aiokafka's default round
robin. Plain consumer-group members on the embedded broker (Tansu), one topic of 12
partitions; a move is a partition whose owner after the change differs from before it.

    python scripts/bench_assignment.py [--out docs/bench_assignment]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from pipeline.devstack.broker import EmbeddedBroker
from pipeline.kafka_io import ensure_topics
from pipeline.sources.assignment import member_assignors
from pipeline.topology.schema import Broker

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 12
SETTLE_S = 30.0  # bound on a rebalance settling (Tansu answers a join after half the session)
Owners = dict[int, str]


class Member:
    def __init__(
        self, name: str, bootstrap: str, topic: str, group: str, strategies: tuple[Any, ...]
    ) -> None:
        self.name = name
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=2_000,
            partition_assignment_strategy=strategies,
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:  # a member polls to keep its place and to take part in rebalances
            await self.consumer.getmany(timeout_ms=200)

    def partitions(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()  # leaves the group at once


async def settled(members: list[Member], expected_members: int) -> Owners:
    """Owners once every partition has exactly one owner among ``members``."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        owners: dict[int, list[str]] = {}
        for m in members:
            for p in m.partitions():
                owners.setdefault(p, []).append(m.name)
        spread = {len(m.partitions()) for m in members}
        whole = len(owners) == PARTITIONS and all(len(o) == 1 for o in owners.values())
        if whole and 0 not in spread and len(members) == expected_members:
            return {p: o[0] for p, o in owners.items()}
        await asyncio.sleep(0.2)
    raise TimeoutError("the group did not settle")


def moves(before: Owners, after: Owners) -> int:
    return sum(1 for p, owner in after.items() if before.get(p) != owner)


async def scenario(bootstrap: str, strategies_of: Any) -> dict[str, int]:
    topic, group = f"assign-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await ensure_topics(Broker(bootstrap_servers=bootstrap), [topic], PARTITIONS)

    def member(name: str) -> Member:
        return Member(name, bootstrap, topic, group, strategies_of())

    members = [member(n) for n in "ABC"]
    for m in members:
        await m.start()
    first = await settled(members, 3)
    restarted = members.pop(2)
    await restarted.stop()
    without = await settled(members, 2)
    members.append(member("C"))
    await members[-1].start()
    back = await settled(members, 3)
    members.append(member("D"))
    await members[-1].start()
    four = await settled(members, 4)
    for m in members:
        await m.stop()
    stayed = {p for p, o in first.items() if o in "AB"}
    return {
        "restart: moves (leave + rejoin)": moves(first, without) + moves(without, back),
        "restart: partitions of the members that stayed up that moved": sum(
            1 for p in stayed if back[p] != first[p]
        ),
        "a fourth joins: moves": moves(back, four),
    }


async def measure() -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="assign-") as workdir:
        broker = EmbeddedBroker(Path(workdir))
        with broker.running(broker.listening, 30, "listening"):
            return {
                "sticky (the pipeline's)": await scenario(broker.bootstrap, member_assignors),
                "round robin (aiokafka's default)": await scenario(
                    broker.bootstrap, lambda: (RoundRobinPartitionAssignor,)
                ),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_assignment")
    args = parser.parse_args(argv)
    results = asyncio.run(measure())
    rows = list(next(iter(results.values())))
    lines = [
        "# Partition moves by assignment strategy",
        "",
        "`python scripts/bench_assignment.py`: three members of one group on the embedded broker,",
        f"one topic of {PARTITIONS} partitions; C stops (leaves the group) and a new process C",
        "joins; then a fourth member D joins.",
        "",
        "| strategy | " + " | ".join(rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    lines += [f"| {name} | " + " | ".join(str(r[k]) for k in rows) + " |" for name, r in results.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
