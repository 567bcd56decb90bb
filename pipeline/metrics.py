"""Prometheus metrics of one pipeline instance, in a registry of its own (so that tests can
run several pipelines in one process). Names follow the source article where it names them:
``inference_duration`` by model and status, ``request_queue_size`` (alert at 1000)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_consumed = Counter(
            "pipeline_events_consumed",
            "Records taken from the source topics",
            ["topic"],
            registry=r,
        )
        self.events_finished = Counter(
            "pipeline_events_finished",
            "Events finished: recommended or dead-lettered, and acked",
            registry=r,
        )
        self.recommendations = Counter(
            "pipeline_recommendations",
            "Recommendation events acknowledged by the broker",
            registry=r,
        )
        self.dead_letters = Counter(
            "pipeline_dead_letters",
            "Events written to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.duplicate_events = Counter(
            "pipeline_duplicate_events",
            "Events whose id repeated inside a window (coalesced)",
            registry=r,
        )
        self.inference_duration = Histogram(
            "inference_duration_seconds",
            "Triton round trip per request attempt",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "pipeline_end_to_end_seconds",
            "Kafka timestamp of the source event to output ack",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_latency = Histogram(
            "pipeline_batch_latency_seconds",
            "Window open to inference outcome, per lane",
            ["lane"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.knobs = Gauge(
            "pipeline_adaptive_knob",
            "Batch size, window ms and in-flight limit in force",
            ["knob"],
            registry=r,
        )
        self.lane_rate = Gauge(
            "pipeline_lane_rate_limit_rows_per_second",
            "A lane's ration set by the lane guard (-1: not rationed)",
            ["lane"],
            registry=r,
        )
        self.retries = Counter(
            "pipeline_inference_retries",
            "Inference attempts retried",
            ["model", "reason"],
            registry=r,
        )
        self.request_state = Gauge(
            "inference_requests_in_state",
            "Inference requests now in each lifecycle state",
            ["state"],
            registry=r,
        )
        self.request_state_entered = Gauge(
            "inference_requests_entered_state",
            "Inference requests that ever entered each state",
            ["state"],
            registry=r,
        )
        self.request_queue_size = Gauge(
            "request_queue_size", "Batches waiting for an inference slot", registry=r
        )
        self.in_flight_events = Gauge(
            "pipeline_in_flight_events", "Events consumed and not yet finished", registry=r
        )
        self.loop_restarts = Counter(
            "pipeline_background_loop_restarts_total",
            "Background loops (commits, watchdog, adaptive, lane guard) restarted after an exception",
            ["loop"],
            registry=r,
        )
        self.dead_letter_hold = Gauge(
            "pipeline_dead_letter_budget_holding",
            "1 while the dead-letter budget holds consumption (most events failing for one model reason)",
            registry=r,
        )
        self.dead_letter_trips = Counter(
            "pipeline_dead_letter_budget_trips_total",
            "Times the dead-letter budget tripped, by the dominant reason",
            ["reason"],
            registry=r,
        )
        self.sink_errors = Counter(
            "pipeline_sink_errors_total",
            "Records the broker refused, by topic and error (retriable ones are re-sent)",
            ["topic", "error"],
            registry=r,
        )
        self.undecodable_records = Counter(
            "pipeline_undecodable_records_total",
            "Records the Kafka client could not decode, dead-lettered and stepped past",
            ["topic"],
            registry=r,
        )
        self.paused = Gauge(
            "pipeline_source_paused", "1 while the source is paused by backpressure", registry=r
        )
        self.stalled = Gauge(
            "pipeline_stalled",
            "1 while work waits and nothing finishes (stall watchdog)",
            registry=r,
        )
        self.committed = Counter("pipeline_offset_commits", "Offset commits sent to the broker", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
