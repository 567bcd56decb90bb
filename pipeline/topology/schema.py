"""The topology file's schema: frozen pydantic models, unknown keys rejected, every node with
a stable ``id`` used in logs and metric labels."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Credits(Node):
    """Events consumed but not yet finished; the source pauses at high, resumes at low."""

    high_watermark: int = Field(20_000, gt=0)
    low_watermark: int = Field(10_000, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Credits:
        if self.low_watermark >= self.high_watermark:
            raise ValueError("low_watermark must be below high_watermark")
        return self


class Broker(Node):
    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    client_id: str = "recommendation-pipeline"


class Source(Node):
    id: str = "source"
    topics: list[str] = Field(min_length=1)
    group_id: str = Field(min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(2_000, gt=0)
    fetch_max_wait_ms: int = Field(50, ge=0, description="broker's wait for data per fetch")
    max_event_bytes: int = Field(65_536, gt=0)
    commit_interval_ms: int = Field(500, gt=0)
    drain_timeout_ms: int = Field(10_000, gt=0)
    stall_after_ms: int = Field(30_000, gt=0, description="lag without progress this long: stalled")
    session_timeout_ms: int = Field(10_000, gt=0, description="no heartbeat this long: out of the group")
    heartbeat_interval_ms: int = Field(3_000, gt=0)
    max_poll_interval_ms: int = Field(
        300_000, gt=0, description="no poll this long: out of the group (the source polls while paused)"
    )
    credits: Credits = Credits()

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> Source:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


class Validation(Node):
    """Policy for event timestamps: outside these bounds an event is a dead letter."""

    max_future_skew_ms: int = Field(300_000, ge=0)
    max_age_ms: int = Field(30 * 24 * 3_600_000, gt=0)
    require_key: bool = Field(
        False, description="dead-letter records without a key (per-user order needs one)"
    )


class WindowSpec(Node):
    id: str = "window"
    max_ms: int = Field(20, gt=0, description="a window never stays open longer than this")
    max_events: int = Field(4_096, gt=0)
    history_length: int = Field(16, gt=0, description="items per user sent as history")
    remembered_users: int = Field(100_000, ge=0, description="users whose recent items are kept")
    history_cache_mb: float = Field(
        64.0, gt=0, description="memory for remembered users' items (~430 B a user at 16 items)"
    )
    history_order: Literal["event_time", "arrival"] = Field(
        "event_time", description="out-of-order events take their place by timestamp, or by arrival"
    )
    late_policy: Literal["include", "dead_letter"] = "include"
    max_lateness_ms: int = Field(60_000, gt=0, description="older than this at arrival: late")


class BatchSpec(Node):
    id: str = "batch"
    max_size: int = Field(128, gt=0, description="users per inference request")


class LaneMatch(Node):
    """Matches an event by a field, a header or its source topic (all given must hold)."""

    field: Literal["type", "event_id"] | None = None
    header: str | None = None
    topics: list[str] = []
    values: list[str] = []

    @model_validator(mode="after")
    def _something(self) -> LaneMatch:
        if self.field is None and self.header is None and not self.topics:
            raise ValueError("a match needs a field, a header or topics")
        if (self.field is not None or self.header is not None) and not self.values:
            raise ValueError("field and header matches need values")
        return self


class Lane(Node):
    id: str = Field(min_length=1)
    match: LaneMatch | None = None  # None: takes everything (only the last lane)
    weight: float = Field(1.0, gt=0, description="share of dispatch capacity")
    max_wait_ms: int = Field(1_000, gt=0, description="bound on a batch's wait for a slot")
    max_in_flight: int = Field(8, gt=0, description="this lane's own in-flight budget")
    triton_priority: int = Field(
        0, ge=0, description="Triton request priority (1 first; 0: the model's default)"
    )
    max_batch: int | None = Field(
        None, gt=0, description="this lane's batches at most this many users (default: batch.max_size)"
    )
    p99_bound_ms: float | None = Field(
        None, gt=0, description="protect this lane: ration the lanes below it while its p99 exceeds this"
    )
    stale_policy: Literal["dead_letter", "best_effort"] | None = Field(
        None, description="past the deadline in this lane (default: deadline.stale_policy)"
    )
    min_rate: float = Field(50.0, gt=0, description="rows/s this lane keeps when rationed")
    rate_step: float = Field(100.0, gt=0, description="rows/s a ration grows per interval")


class Adaptive(Node):
    """Batch size, window time bound and in-flight limit follow the measured latency."""

    enabled: bool = False
    target_p99_ms: float = Field(50.0, gt=0)
    interval_ms: int = Field(500, gt=0)
    min_batch: int = Field(8, gt=0)
    max_batch: int = Field(256, gt=0)
    min_window_ms: int = Field(2, gt=0)
    max_window_ms: int = Field(50, gt=0)
    min_in_flight: int = Field(1, gt=0)
    max_in_flight: int = Field(16, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Adaptive:
        for low, high in (
            ("min_batch", "max_batch"),
            ("min_window_ms", "max_window_ms"),
            ("min_in_flight", "max_in_flight"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not exceed {high}")
        return self


class Retry(Node):
    """The failure budget of recoverable errors."""

    max_attempts: int = Field(4, ge=1)
    backoff_ms: int = Field(50, ge=0)
    max_backoff_ms: int = Field(2_000, ge=0)
    budget_ratio: float = Field(0.2, ge=0, description="retries per first attempt, at most")
    budget_min_per_s: float = Field(10.0, ge=0, description="retries always allowed per second")


class CircuitBreakerSpec(Node):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open it")
    open_ms: int = Field(500, gt=0, description="wait before the first probe")
    max_open_ms: int = Field(2_000, gt=0, description="longest wait between probes")


class Deadline(Node):
    """An event's budget ends end_to_end_ms after its Kafka timestamp."""

    end_to_end_ms: int = Field(30_000, gt=0)
    stale_policy: Literal["dead_letter", "best_effort"] = "dead_letter"


class Model(Node):
    id: str = "model"
    name: str = Field(min_length=1)
    version: str = ""  # empty: the latest the server has
    url: str = Field("127.0.0.1:8001", min_length=1)
    top_k: int = Field(10, gt=0, le=1_000)
    streams: int = Field(2, gt=0, le=64)
    max_in_flight: int = Field(8, gt=0, description="inference requests outstanding at once")
    timeout_ms: int = Field(2_000, gt=0)
    recycle_stream_after: int = Field(100_000, gt=0, description="requests per stream")
    keepalive_ms: int = Field(
        300_000,
        ge=10_000,
        description="gRPC keepalive ping period. Triton's default server policy closes a connection "
        "(GOAWAY too_many_pings) pinged more often than every 300 s while idle: go lower only for "
        "servers started with a lower --grpc-http2-min-recv-ping-interval-without-data",
    )
    retry: Retry = Retry()
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec()


class Sink(Node):
    id: str = "sink"
    topic: str = Field(min_length=1)
    dead_letter_topic: str = Field(min_length=1)
    linger_ms: int = Field(5, ge=0)
    compression: Literal["gzip", "none"] = "none"
    carry_headers: list[str] = ["traceparent", "tracestate"]

    @model_validator(mode="after")
    def _distinct(self) -> Sink:
        if self.topic == self.dead_letter_topic:
            raise ValueError("dead_letter_topic must differ from topic")
        return self


class DeadLetterBudgetSpec(Node):
    """Hold consumption when most recent events are dead-lettered for one model-side reason."""

    enabled: bool = True
    max_share: float = Field(0.5, gt=0, le=1, description="share of finished events, one reason")
    window_ms: int = Field(30_000, gt=0)
    min_events: int = Field(100, gt=0, description="judge only with at least this many finished")
    hold_ms: int = Field(30_000, gt=0, description="first hold; doubles on trips in a row")
    max_hold_ms: int = Field(600_000, gt=0)


class Operations(Node):
    metrics_port: int = Field(0, ge=0, le=65_535, description="0: no metrics endpoint")
    bind: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address of the metrics/health endpoint (0.0.0.0: every interface)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Topology(Node):
    name: str = Field(min_length=1)
    broker: Broker = Broker()
    source: Source
    validation: Validation = Validation()
    window: WindowSpec = WindowSpec()
    batch: BatchSpec = BatchSpec()
    deadline: Deadline = Deadline()
    lanes: list[Lane] = Field(default_factory=lambda: [Lane(id="default")], min_length=1)
    adaptive: Adaptive = Adaptive()
    model: Model
    sink: Sink
    dead_letter_budget: DeadLetterBudgetSpec = DeadLetterBudgetSpec()
    operations: Operations = Operations()

    @model_validator(mode="after")
    def _lanes(self) -> Topology:
        ids = [lane.id for lane in self.lanes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"lane ids must be unique: {ids}")
        if any(lane.match is None for lane in self.lanes[:-1]):
            raise ValueError("only the last lane may omit 'match' (it takes the rest)")
        return self

    @model_validator(mode="after")
    def _no_loops(self) -> Topology:
        outputs = {self.sink.topic, self.sink.dead_letter_topic}
        looped = outputs.intersection(self.source.topics)
        if looped:
            raise ValueError(f"source.topics and sink topics overlap: {sorted(looped)}")
        return self
