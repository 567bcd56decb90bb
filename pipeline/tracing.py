"""OpenTelemetry spans of each recommendation, in the trace its input's `traceparent` names:

    recommend (CONSUMER: the input's produce time → the output's broker ack)
    ├── window   (the window the input was grouped in: open → close)
    ├── infer    (the batch's Triton request: dispatched → answered; model, rows, attempts)
    └── produce  (PRODUCER: handed to the producer → acknowledged); its context is the
                 output's `traceparent`, so a consumer of the recommendations continues it

An inference failure's dead letter gets the same spans with an error status. Spans are made
after the fact from times the pipeline keeps anyway, so the dataflow carries no context; the
produce and recommend spans stay open until the broker's answer.

Optional: `operations.tracing.enabled` needs the `tracing` extra (opentelemetry-sdk and the
OTLP/HTTP exporter, configured by the standard OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME
variables). Export runs on the SDK's thread from a bounded queue: a slow collector loses
spans, never slows the pipeline. Disabled (the default), nothing here runs."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import Fatal
from pipeline.events import BatchOutcome, DeadLetter, Headers, OutputRecord, UserRequest

if TYPE_CHECKING:
    from pipeline.topology.schema import TracingSpec

log = logging.getLogger(__name__)

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_MS = 1_000_000  # ns per ms


class TracingUnavailable(Fatal):
    """`operations.tracing.enabled` without the tracing extra installed (exit 2 at start)."""

    exit_code = 2
    reason = "tracing_unavailable"


@dataclass
class OpenSpans:
    """What an output's broker answer ends: its produce span, then its recommend span."""

    produce: Any
    recommend: Any


class Tracing:
    def __init__(self, provider: Any, owned: bool) -> None:
        # imported here, once: the module loads without the extra, and outputs are many
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._kind = SpanKind
        self._error = lambda why: Status(StatusCode.ERROR, why)
        self._provider = provider
        self._owned = owned  # built here from the topology: shut down (flushed) here too
        self._tracer = provider.get_tracer("pipeline")
        self._propagator = TraceContextTextMapPropagator()

    def _span(self, name: str, parent: Any, start_ms: float, **options: Any) -> Any:
        return self._tracer.start_span(name, context=parent, start_time=int(start_ms * _MS), **options)

    def _open(
        self,
        sources: Headers,
        outcome: BatchOutcome,
        first_ms: float,
        now_ms: float,
        topic: str,
        headers: Headers,
    ) -> tuple[Headers, OpenSpans]:
        """The spans of one output up to its send, and its ``headers`` with the trace
        context replaced by the produce span's (``sources``: the input's headers)."""
        carrier = {k: v.decode("latin-1") for k, v in sources if k in TRACE_HEADERS and v is not None}
        parent = self._propagator.extract(carrier)
        batch = outcome.batch
        recommend = self._span(
            "recommend",
            parent,
            min(first_ms, batch.window_start_ms),
            kind=self._kind.CONSUMER,
            attributes={"messaging.system": "kafka", "pipeline.lane": batch.lane},
        )
        inside = self._trace.set_span_in_context(recommend)
        window = self._span("window", inside, batch.window_start_ms)
        window.end(end_time=int(max(batch.window_end_ms, batch.window_start_ms) * _MS))
        if outcome.completed_ms > 0:
            infer = self._span(
                "infer",
                inside,
                outcome.dispatched_ms,
                kind=self._kind.CLIENT,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": "inference.GRPCInferenceService",
                    "rpc.method": "ModelStreamInfer",
                    "pipeline.model.name": outcome.model_name,
                    "pipeline.model.version": outcome.model_version,
                    "pipeline.batch.rows": len(batch.requests),
                    "pipeline.attempts": outcome.attempts,
                },
            )
            infer.end(end_time=int(outcome.completed_ms * _MS))
        produce = self._span(
            "produce",
            inside,
            now_ms,
            kind=self._kind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
            },
        )
        out: dict[str, str] = {}
        self._propagator.inject(out, context=self._trace.set_span_in_context(produce))
        kept = (h for h in headers if h[0] not in TRACE_HEADERS)
        return (*kept, *((k, v.encode()) for k, v in out.items())), OpenSpans(produce, recommend)

    def recommendation(
        self, row: UserRequest, outcome: BatchOutcome, carried: Headers, now_ms: float, topic: str
    ) -> tuple[Headers, OpenSpans]:
        """Headers for the output (the carried ones, trace context replaced) and its open spans."""
        latest = row.events[-1].source
        first_ms = min(e.source.timestamp_ms for e in row.events)
        headers, spans = self._open(latest.headers, outcome, first_ms, now_ms, topic, carried)
        spans.recommend.set_attributes(
            {
                "messaging.source.name": latest.topic,
                "messaging.destination.partition.id": str(latest.partition),
                "messaging.kafka.offset": latest.offset,
                "pipeline.user_id": row.user_id,
                "pipeline.source_count": len(row.events),
            }
        )
        return headers, spans

    def dead_letter(
        self, dead: DeadLetter, outcome: BatchOutcome, headers: Headers, now_ms: float, topic: str
    ) -> tuple[Headers, OpenSpans]:
        """A failed inference's dead letter: the same spans, the recommend span an error."""
        src = dead.record
        headers, spans = self._open(src.headers, outcome, src.timestamp_ms, now_ms, topic, headers)
        spans.recommend.set_attributes({"pipeline.dead_letter.reason": dead.reason})
        spans.recommend.set_status(self._error(f"{dead.reason}: {dead.detail}"[:256]))
        return headers, spans

    def finish(
        self,
        records: Iterable[OutputRecord],
        written: Iterable[OutputRecord],
        kept: Iterable[OutputRecord] | None = None,
    ) -> None:
        """The write is over: written records end well; refused ones (dead-lettered instead)
        end in error; records not ``kept`` (their partition was revoked: the new owner redoes
        them) and those of a write cut short end in error too, each saying so."""
        ok = {id(rec) for rec in written}
        sent = {id(rec) for rec in kept} if kept is not None else None
        for rec in records:
            spans = rec.trace
            if not isinstance(spans, OpenSpans):
                continue
            if id(rec) not in ok:
                if sent is not None and id(rec) not in sent:
                    why = "not written: its partition was revoked (the new owner redoes it)"
                elif not written:
                    why = "not written: the write did not finish"
                else:
                    why = "refused by the broker: dead-lettered"
                spans.produce.set_status(self._error(why))
                spans.recommend.set_status(self._error(why))
            spans.produce.end()
            spans.recommend.end()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued within ``timeout_s``, then stop the exporter; blocking: run it
        in a thread. What a slow collector has not taken by then is lost (logged by the SDK)."""
        if not self._owned:
            return

        def flush_and_stop() -> None:
            self._provider.force_flush(timeout_millis=int(timeout_s * 1000))
            self._provider.shutdown()  # joins the export thread: may outlast the bound

        # a daemon thread: an export stuck past the bound cannot hold the process's exit
        stopping = threading.Thread(target=flush_and_stop, name="span-export-stop", daemon=True)
        stopping.start()
        stopping.join(timeout_s)
        if stopping.is_alive():
            log.warning("span export did not finish within %.0f s: the rest of the spans are lost", timeout_s)


def from_spec(spec: TracingSpec, provider: Any = None) -> Tracing | None:
    """The topology's tracing, or None when disabled. ``provider``: an SDK TracerProvider
    to use instead of one built here (tests give one with an in-memory exporter)."""
    if not spec.enabled:
        return None
    if provider is not None:
        return Tracing(provider, owned=False)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingUnavailable(
            "operations.tracing.enabled needs the tracing extra: "
            f"pip install 'recommendation-pipeline[tracing]' ({exc})"
        ) from exc
    exporter: Any
    if spec.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailable(
                "operations.tracing.exporter otlp needs the tracing extra: "
                f"pip install 'recommendation-pipeline[tracing]' ({exc})"
            ) from exc
        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _CERTIFICATE
    # The input's sampled flag decides; a trace that starts here is sampled at sample_ratio.
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": spec.service_name}
    built = TracerProvider(
        resource=Resource.create(named),
        sampler=ParentBased(TraceIdRatioBased(spec.sample_ratio)),
        shutdown_on_exit=False,  # the runtime flushes it at stop, bounded
    )
    built.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing: %s exporter, sample ratio %.3g for traces that start here", spec.exporter, spec.sample_ratio
    )
    return Tracing(built, owned=True)
