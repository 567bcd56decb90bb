"""OpenTelemetry spans of the outputs (pipeline/tracing.py) with the SDK's in-memory exporter:
the span tree, the times it is built from, the trace context the output carries on, a refused
output's error status, sampling followed from the input, and the missing extra at start."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pipeline import tracing
from pipeline.events import BatchOutcome, Recommendations, SinkBatch
from pipeline.operators.enrich import OutputSpec, dead_letter_record, outcome_batch
from pipeline.testing.builders import dead_letter, event, inference_batch, user_request
from pipeline.topology.schema import TracingSpec

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INPUT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{INPUT_SPAN}-01".encode()
NOT_SAMPLED = f"00-{TRACE_ID}-{INPUT_SPAN}-00".encode()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def spec(exporter: InMemorySpanExporter) -> OutputSpec:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = tracing.from_spec(TracingSpec(enabled=True), provider)
    return OutputSpec("recommendations", "interactions.dlq", tracing=traced)


def _outcome(now: float, traceparent: bytes | None, fail: bool = False) -> BatchOutcome:
    headers = (("traceparent", traceparent), ("x-tenant", b"a")) if traceparent else (("x-tenant", b"a"),)
    row = user_request(event(5, user=7, ts=int(now) - 900, headers=headers))
    batch = inference_batch(row, window_start_ms=int(now) - 300, window_end_ms=int(now) - 200, lane="fast")
    answers = [] if fail else [(row, Recommendations((1, 2), (0.9, 0.5)))]
    failures = [dead_letter(row.events[0].source, reason="invalid_argument", detail="bad")] if fail else []
    return BatchOutcome(
        batch,
        answers=answers,
        failures=failures,
        model_name="recommender",
        model_version="1",
        dispatched_ms=now - 150,
        completed_ms=now - 50,
    )


def _written(spec: OutputSpec, traceparent: bytes | None, fail: bool = False) -> SinkBatch:
    """An outcome made into outputs now, and every output acknowledged."""
    sink = outcome_batch(_outcome(time.time() * 1000.0, traceparent, fail), spec)
    assert spec.tracing is not None
    spec.tracing.finish(sink.records, sink.records)
    return sink


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def _ms(ns: int | None) -> float:
    assert ns is not None
    return ns / 1e6


def test_a_recommendation_continues_its_inputs_trace_as_recommend_window_infer_produce(
    spec: OutputSpec, exporter: InMemorySpanExporter
) -> None:
    now = time.time() * 1000.0
    sink = outcome_batch(_outcome(now, SAMPLED), spec)
    # window and infer are over already; recommend and produce wait for the broker's answer
    assert {s.name for s in exporter.get_finished_spans()} == {"window", "infer"}
    assert spec.tracing is not None
    spec.tracing.finish(sink.records, sink.records)

    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {"recommend", "window", "infer", "produce"}
    recommend = spans["recommend"]
    assert recommend.parent is not None and f"{recommend.parent.span_id:016x}" == INPUT_SPAN
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {TRACE_ID}
    for child in ("window", "infer", "produce"):
        assert spans[child].parent is not None and spans[child].parent.span_id == recommend.context.span_id
    assert recommend.kind == SpanKind.CONSUMER and spans["produce"].kind == SpanKind.PRODUCER
    # built from the times the pipeline kept: the input's produce time, the window, the request
    assert _ms(recommend.start_time) == pytest.approx(now - 900, abs=1)
    assert _ms(spans["window"].start_time) == pytest.approx(now - 300, abs=1)
    assert _ms(spans["window"].end_time) == pytest.approx(now - 200, abs=1)
    assert _ms(spans["infer"].start_time) == pytest.approx(now - 150, abs=1)
    assert _ms(spans["infer"].end_time) == pytest.approx(now - 50, abs=1)
    assert (
        spans["infer"].attributes is not None
        and spans["infer"].attributes["pipeline.model.name"] == "recommender"
    )
    assert recommend.attributes is not None and recommend.attributes["pipeline.lane"] == "fast"
    assert recommend.status.status_code == StatusCode.UNSET

    # the output's traceparent is the produce span: a consumer of recommendations continues it
    headers = dict(sink.records[0].headers)
    produce = spans["produce"].context
    assert headers["traceparent"] == f"00-{TRACE_ID}-{produce.span_id:016x}-01".encode()
    assert "x-tenant" not in headers  # not among carry_headers: tracing adds only its context


def test_a_refused_output_ends_its_spans_in_error(spec: OutputSpec, exporter: InMemorySpanExporter) -> None:
    sink = outcome_batch(_outcome(time.time() * 1000.0, SAMPLED), spec)
    assert spec.tracing is not None
    instead = dead_letter_record(dead_letter(reason="output_refused"), "interactions.dlq")
    spec.tracing.finish(sink.records, written=[instead])  # the broker refused it: dead-lettered
    spans = _by_name(exporter.get_finished_spans())
    assert spans["produce"].status.status_code == StatusCode.ERROR
    assert spans["recommend"].status.description == "refused by the broker: dead-lettered"


def test_outputs_not_written_end_their_spans_saying_why(
    spec: OutputSpec, exporter: InMemorySpanExporter
) -> None:
    """Dropped (their partition was revoked) or cut short (the write failed or a stop came):
    the spans end in error instead of staying open with their children already exported."""
    assert spec.tracing is not None
    revoked = outcome_batch(_outcome(time.time() * 1000.0, SAMPLED), spec)
    spec.tracing.finish(revoked.records, written=[], kept=[])
    cut_short = outcome_batch(_outcome(time.time() * 1000.0, SAMPLED), spec)
    spec.tracing.finish(cut_short.records, written=[])
    ends = [s.status.description for s in exporter.get_finished_spans() if s.name == "recommend"]
    assert ends == [
        "not written: its partition was revoked (the new owner redoes it)",
        "not written: the write did not finish",
    ]


def test_an_inference_failures_dead_letter_is_traced_as_an_error(
    spec: OutputSpec, exporter: InMemorySpanExporter
) -> None:
    sink = _written(spec, SAMPLED, fail=True)
    spans = _by_name(exporter.get_finished_spans())
    assert spans["recommend"].status.status_code == StatusCode.ERROR
    assert spans["recommend"].attributes is not None
    assert spans["recommend"].attributes["pipeline.dead_letter.reason"] == "invalid_argument"
    headers = dict(sink.records[0].headers)
    assert headers["dlq.reason"] == b"invalid_argument"  # the dead letter's own headers stay
    assert headers["traceparent"].split(b"-")[1] == TRACE_ID.encode()


def test_an_input_without_trace_context_starts_a_trace(
    spec: OutputSpec, exporter: InMemorySpanExporter
) -> None:
    sink = _written(spec, None)
    spans = _by_name(exporter.get_finished_spans())
    assert spans["recommend"].parent is None
    trace_id = f"{spans['recommend'].context.trace_id:032x}"
    assert dict(sink.records[0].headers)["traceparent"].split(b"-")[1] == trace_id.encode()


def test_an_unsampled_input_records_no_span_but_passes_its_flag_on(
    spec: OutputSpec, exporter: InMemorySpanExporter
) -> None:
    sink = _written(spec, NOT_SAMPLED)
    assert exporter.get_finished_spans() == ()
    _, trace_id, span_id, flags = dict(sink.records[0].headers)["traceparent"].split(b"-")
    assert (trace_id, flags) == (TRACE_ID.encode(), b"00") and span_id != INPUT_SPAN.encode()


def test_disabled_tracing_makes_nothing() -> None:
    assert tracing.from_spec(TracingSpec()) is None


def test_enabled_without_the_extra_stops_at_start_with_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def without_sdk(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_sdk)
    with pytest.raises(
        tracing.TracingUnavailable, match=r"pip install 'recommendation-pipeline\[tracing\]'"
    ) as err:
        tracing.from_spec(TracingSpec(enabled=True))
    assert err.value.exit_code == 2


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP trace receiver on a free local port: what the exporter posts, decoded."""
    received: list[ExportTraceServiceRequest] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_built_provider_exports_over_otlp_and_flushes_at_shutdown(
    collector: tuple[str, list[ExportTraceServiceRequest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    traced = tracing.from_spec(TracingSpec(enabled=True, service_name="recs-test"))
    assert traced is not None
    spec = OutputSpec("recommendations", "interactions.dlq", tracing=traced)
    sink = outcome_batch(_outcome(time.time() * 1000.0, SAMPLED), spec)
    traced.finish(sink.records, sink.records)
    traced.shutdown()  # the batch processor's queue goes out now, not lost at exit
    names, services = [], set()
    for request in received:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            services.add(attributes["service.name"])
            names += [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert sorted(names) == ["infer", "produce", "recommend", "window"]
    assert services == {"recs-test"}
