"""The pipeline's ends: where records come from, where outputs go, which server answers.
``on_kafka_and_triton`` builds the real ones from the topology; the testing kit
(``pipeline/testing/``) builds in-memory ones, and the runtime cannot tell them apart."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from pipeline import topics_check, wiring
from pipeline.metrics import Metrics
from pipeline.security import grpc_credentials, grpc_metadata
from pipeline.sinks import Sink
from pipeline.sinks.kafka import KafkaSink
from pipeline.sources import Source
from pipeline.sources.kafka import KafkaSource
from pipeline.sources.partitions import Partitions
from pipeline.state.changelog import ChangelogReader, KafkaChangelog
from pipeline.topology.schema import Topology
from pipeline.triton import InferenceServer
from pipeline.triton.streams import StreamPool


class Ends(NamedTuple):
    source: Source
    sink: Sink
    server: InferenceServer
    # Before anything waits on the model: a misconfigured connection (refused credentials,
    # an untrusted certificate) or a broker that does not answer within its bound raises;
    # True once the input side answered.
    check_connection: Callable[[], Coroutine[Any, Any, bool]]
    changelog: ChangelogReader | None = None  # where durable state is restored from (state.dir set)


EndsFactory = Callable[[Topology, Partitions, Metrics], Ends]


def on_kafka_and_triton(t: Topology, partitions: Partitions, metrics: Metrics) -> Ends:
    """The broker's clients first: a misconfigured broker is the first thing reported."""
    source = KafkaSource(t.source, t.broker, partitions, metrics)
    sink = KafkaSink(  # producers made at start; a revoked input's records are not retried
        t.sink, t.broker, wiring.sink_lanes(t), metrics=metrics, owned=partitions.is_current
    )
    model = t.model
    server = StreamPool(
        model.url,
        model.streams,
        model.recycle_stream_after,
        model.keepalive_ms,
        grpc_credentials(model.tls) if model.tls is not None else None,  # unreadable: exit 2
        grpc_metadata(model.headers),
    )
    changelog = (
        KafkaChangelog(t.broker, t.changelog_topic, t.state.changelog_replication_factor)
        if t.state.dir is not None
        else None
    )
    # refused credentials, an untrusted certificate, no broker answering within
    # broker.start_timeout_ms, a topic that does not exist: exit 2
    return Ends(source, sink, server, lambda: topics_check.check_broker(t), changelog)
