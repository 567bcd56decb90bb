"""OpenTelemetry on the real broker and Triton: every recommendation's spans are exported (the
SDK's in-memory exporter), in its input's trace, and the output record's `traceparent` names
its produce span, so a consumer of the recommendations continues the same trace."""

from __future__ import annotations

import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pipeline.devstack.dev import live_events
from pipeline.recsys.generator import GeneratorConfig
from tests.integration.harness import RawIn, fresh_topology, read_values, run_until_accounted

EVENTS = 300


async def test_each_recommendation_is_traced_from_its_input_to_its_ack(stack) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    topology = fresh_topology(stack, operations={"tracing": {"enabled": True}})
    trace_of: dict[str, tuple[str, str]] = {}  # event id → (trace id, the input's span id)
    records: list[RawIn] = []
    for i, event in enumerate(live_events(GeneratorConfig(seed=21), EVENTS)):
        trace_id, span_id = f"{i + 1:032x}", f"{i + 1:016x}"
        trace_of[str(event["event_id"])] = (trace_id, span_id)
        headers = [("traceparent", f"00-{trace_id}-{span_id}-01".encode())]
        records.append((str(event["user_id"]).encode(), orjson.dumps(event), headers))
    records.append((b"k", b"{broken", []))  # a parse dead letter: no inference, no span

    run = await run_until_accounted(topology, records, tracer_provider=provider)
    assert run.ledger.summary()["lost"] == 0

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    outputs = await read_values(topology, topology.sink.topic)
    assert outputs
    for output in outputs:
        doc = orjson.loads(output.value)
        latest = doc["sources"][-1]["event_id"]  # the header continues the latest input's trace
        trace_id, input_span = trace_of[latest]
        _, header_trace, header_span, flags = dict(output.headers)["traceparent"].decode().split("-")
        assert (header_trace, flags) == (trace_id, "01")
        produce = by_id[int(header_span, 16)]
        assert produce.name == "produce" and produce.status.status_code == StatusCode.UNSET
        assert produce.parent is not None
        recommend = by_id[produce.parent.span_id]
        assert recommend.name == "recommend"
        assert recommend.parent is not None and f"{recommend.parent.span_id:016x}" == input_span
        children = sorted(s.name for s in spans if s.parent and s.parent.span_id == recommend.context.span_id)
        assert children == ["infer", "produce", "window"]
        assert recommend.end_time is not None and produce.end_time is not None
        assert recommend.end_time >= produce.end_time  # acknowledged, then the recommendation ends
    assert sum(s.name == "recommend" for s in spans) == len(outputs)
    infer = [s for s in spans if s.name == "infer"]
    assert infer and all(
        s.attributes and s.attributes["pipeline.model.name"] == topology.model.name for s in infer
    )
