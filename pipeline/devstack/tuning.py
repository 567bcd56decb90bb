"""Client settings for the embedded broker (Tansu's memory engine), applied by `pipeline dev`,
the long-run scripts and (the group session) the tests: the shipped topologies are for real
Kafka.

Tansu answers every fetch that returns data by listing all record batches stored for the
partition, and its memory engine never deletes a batch (no retention; DeleteRecords is not
implemented). A fetch's cost grows with the batches stored, so what the broker spends per
second grows with (batches arriving per partition) x (batches stored), i.e. with the square
of the batch rate and linearly with time. Fewer, larger batches are the lever: a producer
that lingers gives a partition at most 1000 / linger_ms batches per second, whatever the
event rate. Measured limits: docs/embedded_broker.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pipeline.topology.schema import Topology


@dataclass(frozen=True)
class BrokerTuning:
    linger_ms: int  # every producer: at most 1000 / linger_ms batches per partition per second
    fetch_max_wait_ms: int  # the pipeline's consumer: Tansu answers a fetch only at max wait
    max_poll_records: int
    follower_fetch_max_wait_ms: int = 1_000  # consumers that only keep the books

    def apply(self, topology: Topology) -> Topology:
        """``topology`` with this tuning on its consumer and its producers."""
        # no member of an earlier release joins its groups; each strategy offered holds a join
        source = topology.source.model_copy(
            update={"fetch_max_wait_ms": self.fetch_max_wait_ms, "offer_round_robin": False}
        )
        sink = topology.sink.model_copy(update={"linger_ms": self.linger_ms})
        return topology.model_copy(update={"source": source, "sink": sink})


# The always-on dev stack. Latency pays for it: an event waits up to linger_ms in the feeder.
EMBEDDED_BROKER = BrokerTuning(linger_ms=100, fetch_max_wait_ms=5, max_poll_records=500)

# Tansu answers a group join only after half the member's session timeout, on every start
# and rejoin (docs/embedded_broker.md). The topologies of tests and
# benchmarks (topology_on_stack) take 6 s, Kafka's own minimum (group.min.session.timeout.ms):
# a 3 s join. `pipeline dev` and the soak keep the shipped timeout.
STACK_GROUP_SESSION: Mapping[str, int] = MappingProxyType(
    {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 2_000}
)
