"""The topology file's schema: frozen pydantic models, unknown keys rejected.

Every leaf field carries a one-sentence ``description`` and every model a docstring:
``scripts/gen_topology_docs.py`` turns them into docs/topology.md (regenerate it after a
change; a unit test fails while it is stale)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class Node(BaseModel):
    """Base of every section: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Credits(Node):
    """Events consumed but not yet finished, counted and in bytes (key, value and headers);
    the source holds a topic at either high watermark (pausing it if held long), takes from
    it again once at or below both low ones. A record larger than the bytes bound is taken
    when nothing of its topic is in flight, and passes alone."""

    high_watermark: int = Field(
        20_000, gt=0, description="per topic: stop taking from it at this many unfinished events"
    )
    low_watermark: int = Field(10_000, ge=0, description="per topic: take from it again at this many")
    # 20,000 events of up to max_event_bytes (64 KiB) would be 1.25 GiB a topic, above the
    # manifest's 1 GiB; a few hundred bytes an event (the usual) stay bound by the count.
    high_watermark_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="per topic: stop taking from it at this many bytes of unfinished events "
        "(key, value, headers); overshot by at most one poll",
    )
    low_watermark_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="per topic: take from it again at this many bytes (and at low_watermark events)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Credits:
        """low_watermark must be below high_watermark, low_watermark_bytes below
        high_watermark_bytes."""
        if self.low_watermark >= self.high_watermark:
            raise ValueError("low_watermark must be below high_watermark")
        if self.low_watermark_bytes >= self.high_watermark_bytes:
            raise ValueError("low_watermark_bytes must be below high_watermark_bytes")
        return self


class Tls(Node):
    """TLS to a server: which authorities to trust, and this client's own certificate for
    mutual TLS. Paths are read at start; a file that cannot be read stops the process."""

    ca_file: Path | None = Field(None, description="PEM file of the authorities to trust; none: the system's")
    cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS), with key_file")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    key_password: SecretStr | None = Field(
        None, description="password of key_file (prefer key_password_file)"
    )
    key_password_file: Path | None = Field(None, description="file holding the password of key_file")
    check_hostname: bool = Field(True, description="check that the server's certificate names its host")

    @model_validator(mode="after")
    def _pairs(self) -> Tls:
        """cert_file and key_file go together; a password comes from one place."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.key_password is not None and self.key_password_file is not None:
            raise ValueError("key_password and key_password_file: give one")
        return self


class Sasl(Node):
    """SASL authentication to Kafka. Secrets come from the environment (``${NAME}``) or from
    mounted files (``*_file``), never from the YAML itself."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism"
    )
    username: str | None = Field(None, description="user (PLAIN, SCRAM)")
    password: SecretStr | None = Field(None, description="password (PLAIN, SCRAM); prefer password_file")
    password_file: Path | None = Field(None, description="file holding the password (PLAIN, SCRAM)")
    oauth_token_file: Path | None = Field(
        None, description="OAUTHBEARER: file holding the token, read again when it changes"
    )
    oauth_token_command: list[str] | None = Field(
        None, description="OAUTHBEARER: command whose output is the token, run again after oauth_token_ttl_s"
    )
    oauth_token_ttl_s: float = Field(
        300.0, gt=0, description="OAUTHBEARER: how long a command's token is used"
    )

    @model_validator(mode="after")
    def _credentials(self) -> Sasl:
        """PLAIN and SCRAM need a username and one password; OAUTHBEARER one token source."""
        if self.mechanism == "OAUTHBEARER":
            if (self.oauth_token_file is None) == (self.oauth_token_command is None):
                raise ValueError("OAUTHBEARER needs one of oauth_token_file and oauth_token_command")
        else:
            if not self.username:
                raise ValueError(f"{self.mechanism} needs a username")
            if (self.password is None) == (self.password_file is None):
                raise ValueError(f"{self.mechanism} needs one of password and password_file")
        return self


def bootstrap_problem(servers: str) -> str | None:
    """Why ``servers`` is not a comma-separated list of ``host:port`` (port 1-65535, an IPv6
    host in brackets), or None: a bad port would otherwise fail only inside the clients."""
    for entry in servers.split(","):
        host, colon, port = entry.strip().rpartition(":")
        where = f"{entry.strip()!r}" if entry.strip() else "an empty entry"
        if not colon or not host.strip("[]"):
            return f"{where} is not host:port"
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65_535:
            return f"{where}: the port must be a number from 1 to 65535"
    return None


class Broker(Node):
    """The Kafka cluster (env PIPELINE_BOOTSTRAP_SERVERS overrides the address) and how to
    connect to it: every Kafka client of the project takes these."""

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers: host:port, comma-separated"
    )
    client_id: str = Field(
        "recommendation-pipeline", description="Kafka client id of the consumer (the producers add -sink)"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    tls: Tls = Field(Tls(), description="TLS settings (SSL, SASL_SSL)")
    sasl: Sasl | None = Field(None, description="SASL settings (SASL_PLAINTEXT, SASL_SSL)")
    start_timeout_ms: int = Field(
        15_000,
        gt=0,
        description="`pipeline run` checks the broker first, before it waits for anything else: "
        "when no bootstrap server answers within this, it exits 2 with one line naming each address "
        "and why (connection refused, no answer, not Kafka). Once started, an outage is waited out",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, servers: str) -> str:
        if (problem := bootstrap_problem(servers)) is not None:
            raise ValueError(problem)
        return servers

    @model_validator(mode="after")
    def _protocol_fits(self) -> Broker:
        """A SASL protocol needs a sasl section; a sasl section needs a SASL protocol."""
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and self.sasl is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs a sasl section")
        if not uses_sasl and self.sasl is not None:
            raise ValueError(
                f"a sasl section needs security_protocol SASL_PLAINTEXT or SASL_SSL, "
                f"not {self.security_protocol}"
            )
        return self


class Source(Node):
    """The Kafka consumer group member that reads the input topics, with backpressure."""

    id: str = Field("source", description="a name for this node (informational)")
    topics: list[str] = Field(
        min_length=1, description="input topics; each has its own credits and an equal share of each poll"
    )
    group_id: str = Field(
        min_length=1, description="consumer group: processes with the same group_id share the partitions"
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a partition without a committed offset starts"
    )
    max_poll_records: int = Field(2_000, gt=0, description="records per fetch, shared equally by the topics")
    fetch_max_wait_ms: int = Field(
        50,
        ge=0,
        description="broker's wait for data per fetch (Kafka answers as soon as data is there; the "
        "embedded Tansu broker always waits this long, so the dev stack sets 5)",
    )
    max_event_bytes: int = Field(65_536, gt=0, description="larger events are dead-lettered (`oversized`)")
    commit_interval_ms: int = Field(500, gt=0, description="how often finished offsets are committed")
    drain_timeout_ms: int = Field(
        10_000, gt=0, description="bound on draining revoked partitions and on shutdown"
    )
    stall_after_ms: int = Field(
        30_000,
        gt=0,
        description="lag (or work in flight) with no event finished this long: logged as STALLED, "
        "`/readyz` answers 503",
    )
    session_timeout_ms: int = Field(10_000, gt=0, description="no heartbeat this long: out of the group")
    heartbeat_interval_ms: int = Field(
        3_000, gt=0, description="heartbeat period to the group coordinator (below session_timeout_ms)"
    )
    max_poll_interval_ms: int = Field(
        300_000,
        gt=0,
        description="no poll this long: out of the group (the source pauses and polls when held long)",
    )
    offer_round_robin: bool = Field(
        True,
        description="offer round robin after the co-partitioned assignment, so that a rolling deploy "
        "from a release without it keeps one group (the embedded broker holds every join half a "
        "session timeout per strategy offered: its tests and benchmarks turn this off)",
    )
    credits: Credits = Credits()

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> Source:
        """heartbeat_interval_ms must be below session_timeout_ms."""
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


class Validation(Node):
    """Policy for event timestamps: outside these bounds an event is a dead letter."""

    max_future_skew_ms: int = Field(
        300_000,
        ge=0,
        description="events stamped further in the future are dead-lettered (`future_timestamp`)",
    )
    max_age_ms: int = Field(
        30 * 24 * 3_600_000, gt=0, description="older events are dead-lettered (`too_old`)"
    )
    require_key: bool = Field(
        False, description="dead-letter records without a key (`missing_key`; per-user order needs one)"
    )
    age_reference: Literal["wall_clock", "replay"] = Field(
        "wall_clock",
        description="what `max_age_ms` (and `max_lateness_ms`) are measured from: the wall clock, or "
        "for records a `pipeline replay` sent, the newest event time of that replay so far "
        "(a backfill of years-old history); other records keep the wall clock",
    )


class WindowSpec(Node):
    """Groups events into per-user windows: a window closes at whichever bound comes first."""

    id: str = Field("window", description="a name for this node (informational)")
    max_ms: int = Field(20, gt=0, description="a window never stays open longer than this")
    max_events: int = Field(4_096, gt=0, description="a window closes at this many events")
    history_length: int = Field(
        16, gt=0, description="items per user sent to the model as history (must match the model)"
    )
    remembered_users: int = Field(
        100_000, ge=0, description="users whose recent items are kept across windows (LRU)"
    )
    history_cache_mb: float = Field(
        64.0,
        gt=0,
        description="memory for remembered users' items, packed: ~430 B a user at 16 items "
        "(100k users ≈ 43 MB); the least recent are forgotten first",
    )
    history_order: Literal["event_time", "arrival"] = Field(
        "event_time", description="out-of-order events take their place by timestamp, or by arrival"
    )
    late_policy: Literal["include", "dead_letter"] = Field(
        "include", description="a late event is included, or dead-lettered (`late_event`)"
    )
    max_lateness_ms: int = Field(60_000, gt=0, description="older than this at arrival: late")


class BatchSpec(Node):
    """Groups the windows' per-user requests into inference batches, per lane."""

    id: str = Field("batch", description="a name for this node (informational)")
    max_size: int = Field(128, gt=0, description="users per inference request")


class LaneMatch(Node):
    """Matches an event by a field, a header or its source topic (all given must hold)."""

    field: Literal["type", "event_id"] | None = Field(None, description="event field compared with values")
    header: str | None = Field(None, description="record header compared with values")
    topics: list[str] = Field([], description="source topics that match")
    values: list[str] = Field([], description="accepted values of field or header")

    @model_validator(mode="after")
    def _something(self) -> LaneMatch:
        """A match needs a field, a header or topics; field and header need values."""
        if self.field is None and self.header is None and not self.topics:
            raise ValueError("a match needs a field, a header or topics")
        if (self.field is not None or self.header is not None) and not self.values:
            raise ValueError("field and header matches need values")
        return self


class Lane(Node):
    """A priority class of requests, most important first: a request goes to the first lane
    any of its events matches, the last lane takes the rest."""

    id: str = Field(min_length=1, description="lane name, in metric labels and the output's `lane`")
    match: LaneMatch | None = Field(
        None, description="which requests this lane takes; none: all the rest (only the last lane)"
    )
    weight: float = Field(1.0, gt=0, description="share of dispatch capacity")
    max_wait_ms: int = Field(
        1_000, gt=0, description="bound on a batch's wait for a slot: older batches are served first"
    )
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

    enabled: bool = Field(False, description="let the controller move the three knobs")
    target_p99_ms: float = Field(50.0, gt=0, description="the p99 latency the controller aims at")
    interval_ms: int = Field(
        500,
        gt=0,
        description="how often the controller (and the lane guard, which runs whenever a lane has "
        "p99_bound_ms) steps",
    )
    min_batch: int = Field(8, gt=0, description="smallest batch size")
    max_batch: int = Field(256, gt=0, description="largest batch size")
    min_window_ms: int = Field(2, gt=0, description="shortest window bound")
    max_window_ms: int = Field(50, gt=0, description="longest window bound")
    min_in_flight: int = Field(1, gt=0, description="fewest inference requests outstanding")
    max_in_flight: int = Field(16, gt=0, description="most inference requests outstanding")

    @model_validator(mode="after")
    def _ordered(self) -> Adaptive:
        """Each min_ bound must not exceed its max_ bound."""
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

    max_attempts: int = Field(4, ge=1, description="attempts per request, the first included")
    backoff_ms: int = Field(50, ge=0, description="first backoff; it doubles per attempt, with full jitter")
    max_backoff_ms: int = Field(2_000, ge=0, description="longest backoff")
    budget_ratio: float = Field(
        0.2, ge=0, description="retries per first attempt, at most, over the last 10 s"
    )
    budget_min_per_s: float = Field(10.0, ge=0, description="retries always allowed per second")


class CircuitBreakerSpec(Node):
    """Stops sending to a failing server; requests wait (holding their credits) for a probe."""

    failure_threshold: int = Field(
        5, ge=1, description='consecutive failures that open it (one "server unreachable" does)'
    )
    open_ms: int = Field(500, gt=0, description="wait before the first probe")
    max_open_ms: int = Field(2_000, gt=0, description="longest wait between probes")


class Deadline(Node):
    """An event's budget ends end_to_end_ms after its Kafka timestamp."""

    end_to_end_ms: int = Field(
        30_000,
        gt=0,
        description="an event's budget from its Kafka timestamp: Triton's per-request timeout and the "
        "client-side wait",
    )
    stale_policy: Literal["dead_letter", "best_effort"] = Field(
        "dead_letter",
        description="past the budget: dead letter (`deadline_exceeded`), or infer anyway (`best_effort`)",
    )


class Model(Node):
    """The Triton model and the client's pool of gRPC streams to it."""

    id: str = Field("model", description="a name for this node (informational)")
    name: str = Field(min_length=1, description="model name in Triton's repository")
    version: str = Field("", description="model version; empty: the latest the server has")
    url: str = Field(
        "127.0.0.1:8001", min_length=1, description="Triton's gRPC address (env PIPELINE_TRITON_URL)"
    )
    top_k: int = Field(10, gt=0, le=1_000, description="items per recommendation (must match the model)")
    streams: int = Field(2, gt=0, le=64, description="pooled bidirectional gRPC streams (ModelStreamInfer)")
    max_in_flight: int = Field(
        8, gt=0, description="inference requests outstanding at once (when not adaptive)"
    )
    timeout_ms: int = Field(2_000, gt=0, description="client-side bound per attempt")
    max_split_requests: int = Field(
        32,
        ge=0,
        description="extra requests a batch the model refuses as invalid may be split into to find "
        "its bad rows (about 2 log2(rows) per bad row); past it the rest of what was refused is "
        "dead-lettered `invalid_argument`",
    )
    recycle_stream_after: int = Field(100_000, gt=0, description="requests before a stream is replaced")
    keepalive_ms: int = Field(
        300_000,
        ge=10_000,
        description="gRPC keepalive ping period. Triton's default server policy closes a connection "
        "(GOAWAY too_many_pings) pinged more often than every 300 s while idle: go lower only for "
        "servers started with a lower --grpc-http2-min-recv-ping-interval-without-data",
    )
    tls: Tls | None = Field(None, description="TLS to Triton (--grpc-use-ssl); none: plaintext gRPC")
    headers: dict[str, SecretStr] = Field(
        {}, description="extra gRPC request headers, e.g. a token for a gateway in front of Triton"
    )
    start_timeout_ms: int = Field(
        300_000,
        gt=0,
        description="how long `pipeline run` waits at start for Triton to serve the model and answer "
        "the model check (a rolling deploy or a restart of Triton, models still loading). After "
        "10 s it joins the group meanwhile and holds consumption (`/startupz` 200 once joined, "
        "`/readyz` 503), warning every 30 s with `model.url` and the last answer; past this, it "
        "exits 2 naming `model.url`. An outage after the start is the circuit breaker's to wait out",
    )
    retry: Retry = Retry()
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec()


class Sink(Node):
    """The producers of recommendations and dead letters (one per lane); a record counts once
    the broker acknowledged it."""

    id: str = Field("sink", description="a name for this node (informational)")
    topic: str = Field(min_length=1, description="output topic of recommendations (not an input topic)")
    dead_letter_topic: str = Field(
        min_length=1, description="output topic of dead letters (not topic, not an input topic)"
    )
    linger_ms: int = Field(5, ge=0, description="producer batching delay")
    compression: Literal["gzip", "none"] = Field("none", description="producer compression")
    carry_headers: list[str] = Field(
        ["traceparent", "tracestate"], description="input headers copied to the recommendation"
    )

    @model_validator(mode="after")
    def _distinct(self) -> Sink:
        """dead_letter_topic must differ from topic."""
        if self.topic == self.dead_letter_topic:
            raise ValueError("dead_letter_topic must differ from topic")
        return self


class DeadLetterBudgetSpec(Node):
    """Holds consumption (and readiness) while more than max_share of the recently finished
    events were dead-lettered for one model-side reason (`invalid_argument`, `bad_output`,
    `retries_exhausted`, `model_not_found`, ...): a broken model must not drain the backlog into
    the dead-letter topic."""

    enabled: bool = Field(True, description="trip the budget at all")
    max_share: float = Field(0.5, gt=0, le=1, description="share of finished events, one reason")
    window_ms: int = Field(30_000, gt=0, description="the recent events judged")
    min_events: int = Field(100, gt=0, description="judge only with at least this many finished")
    hold_ms: int = Field(30_000, gt=0, description="first hold; doubles on trips in a row")
    max_hold_ms: int = Field(600_000, gt=0, description="longest hold")


class TracingSpec(Node):
    """OpenTelemetry spans of each recommendation (recommend, window, infer, produce) in its
    input's trace; needs the `tracing` extra. The exporter takes the standard OTEL_* variables."""

    enabled: bool = Field(False, description="make spans (the output's traceparent is then its produce span)")
    exporter: Literal["otlp", "console"] = Field(
        "otlp", description="otlp: OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT; console: stdout, for a try"
    )
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of the traces that start here to record (an input's flag rules)",
    )
    service_name: str = Field(
        "recommendation-pipeline",
        min_length=1,
        description="service.name of the spans (OTEL_SERVICE_NAME rules)",
    )


class Operations(Node):
    """How the process is observed."""

    metrics_port: int = Field(
        0,
        ge=0,
        le=65_535,
        description="serves `/metrics` and the probes `/livez` (`/healthz`), `/startupz`, `/readyz` on this "
        "port (env PIPELINE_METRICS_PORT); 0: no endpoint",
    )
    bind: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address of the metrics/health endpoint (env PIPELINE_OPERATIONS_BIND; "
        "0.0.0.0: every interface)",
    )
    liveness_stuck_after_ms: int = Field(
        60_000,
        gt=0,
        description="a background loop with no round this long (or 3 of its intervals, if longer), or the "
        "consumer with no poll this long, fails `/livez` (the default: twice source.stall_after_ms's, so a "
        "stall fails readiness first)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    tracing: TracingSpec = TracingSpec()


class StateSpec(Node):
    """Each user's recent items (the model's input and exclusion list), durable: a local
    store per input partition on disk (RocksDB, a byte-bounded cache in front:
    `window.history_cache_mb`) and a compacted changelog topic it is restored from when a
    partition is assigned. Unset `dir`: kept in memory only (lost at every restart)."""

    dir: Path | None = Field(
        None, description="where the partitions' stores live (env PIPELINE_STATE_DIR); none: memory only"
    )
    changelog_topic: str | None = Field(
        None,
        min_length=1,
        description="compacted topic the stores are restored from, made at start with the input's "
        "partition count; none: `<name>-user-histories`",
    )
    changelog_replication_factor: int = Field(
        1, ge=1, description="replicas of the changelog the pipeline makes (3 on a production cluster)"
    )
    restore_stall_ms: int = Field(
        30_000, gt=0, description="a restore that reads nothing this long is retried (a broker away)"
    )
    restore_attempts: int = Field(
        5,
        gt=0,
        description="tries of a partition's restore (backoff doubling from 1 s); then the process stops",
    )


class Arm(Node):
    """One arm of the experiment: a Triton model version and the share of users it serves,
    chosen by a sticky hash of the user id. A shadow arm is scored on copies of the live
    requests under its own bounds (never at the live arms' expense), judged against the same
    outcomes, and never emitted."""

    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="arm name, in metric labels and the output's `model.arm`",
    )
    version: str = Field(min_length=1, description="the Triton model version this arm is served by")
    share: float = Field(0.0, ge=0, le=1, description="share of users (live arms' shares add up to 1)")
    shadow: bool = Field(False, description="scored on copies of live requests, never emitted (share 0)")
    max_in_flight: int = Field(2, gt=0, description="shadow: its own requests outstanding at once")
    max_rows_per_s: float = Field(
        500.0, ge=1, description="shadow: rows scored a second at most; the rest are skipped (counted)"
    )


class Guard(Node):
    """The guarded rollout: an arm whose hit@K is below the control's by more than `margin`
    (the difference's one-sided lower confidence bound above it), after at least
    `min_outcomes` outcomes each, or whose p99 is over `p99_bound_ms`, is served by the
    control arm from then on (share 0), logged and counted."""

    enabled: bool = Field(True, description="judge the arms at all")
    margin: float = Field(
        0.02,
        gt=0,
        le=1,
        description="hit@K below the control's by more than this (judged every interval: a margin "
        "keeps the repeated looks from stopping an equal arm)",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="one-sided confidence that it is below")
    min_outcomes: int = Field(500, gt=0, description="judged outcomes each arm needs before a verdict")
    p99_bound_ms: float | None = Field(
        None,
        gt=0,
        description="an arm's p99 round trip to Triton (its last 1,000 answered requests, at least "
        "200) over this, while the control's is not, stops it",
    )
    interval_ms: int = Field(5_000, gt=0, description="how often the arms are judged")


class Experiment(Node):
    """Model versions compared on live traffic: each user is served by one arm for as long as
    the experiment (its id) stands; every output carries its arm and version."""

    id: str = Field(
        min_length=1, description="experiment name: it seeds the users' hash (a new id reshuffles them)"
    )
    control: str | None = Field(
        None, description="the arm others are judged against and fall back to; none: the first live arm"
    )
    arms: list[Arm] = Field(min_length=1, description="the arms, live and shadow")
    guard: Guard = Guard()

    @model_validator(mode="after")
    def _arms(self) -> Experiment:
        """Arm ids unique; live shares add up to 1; shadows have no share; the control is a
        live arm."""
        ids = [arm.id for arm in self.arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"arm ids must be unique: {ids}")
        live = [arm for arm in self.arms if not arm.shadow]
        if not live:
            raise ValueError("an experiment needs a live (not shadow) arm")
        if any(arm.share for arm in self.arms if arm.shadow):
            raise ValueError("a shadow arm has no share (it is never emitted)")
        if abs(sum(arm.share for arm in live) - 1.0) > 1e-6:
            raise ValueError(f"the live arms' shares add up to {sum(a.share for a in live):g}, not 1")
        if self.control is not None and self.control not in {arm.id for arm in live}:
            raise ValueError(f"control {self.control!r} is not a live arm: {[a.id for a in live]}")
        return self

    @property
    def control_arm(self) -> Arm:
        """The named control, or the first live arm (a shadow is never the control)."""
        wanted = self.control
        return next(a for a in self.arms if (a.id == wanted if wanted else not a.shadow))


class Outcomes(Node):
    """Online quality: each user's latest recommendation (per arm) is joined with what the
    user does next, in event time; counted per model version and arm (`pipeline_outcomes_*`)."""

    enabled: bool = Field(True, description="join outcomes at all")
    attribution_ms: int = Field(
        1_800_000, gt=0, description="a next interaction later than this after it does not count"
    )
    remembered_users: int = Field(
        100_000, gt=0, description="users whose latest recommendation is kept (least recent forgotten)"
    )
    memory_mb: float = Field(
        32.0,
        gt=0,
        description="memory for the recommendations waiting for an outcome and the events logged "
        "meanwhile (estimated, packed: ~630 B a user waiting for one of 10 items); the least "
        "recent users are forgotten first",
    )
    examples_topic: str | None = Field(
        None,
        min_length=1,
        description="topic of joined examples (a recommendation, the user's next interaction, the "
        "outcome), each also an interaction `pipeline train --topic` reads; none: not written",
    )
    durable: bool = Field(
        True,
        description="with state.dir: keep each user's latest recommendation waiting for its outcome "
        "in the durable user state, so that a restart, a rebalance or the memory bound leaves it "
        "judged; costs a changelog record per answered user and round (docs/benchmarks.md)",
    )


class Topology(Node):
    """One pipeline: a source, its operators, one model and a sink."""

    name: str = Field(min_length=1, description="pipeline name, in the log")
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
    state: StateSpec = StateSpec()
    outcomes: Outcomes = Outcomes()
    experiment: Experiment | None = None

    @model_validator(mode="after")
    def _lanes(self) -> Topology:
        """Lane ids must be unique; only the last lane may omit match (it takes the rest)."""
        ids = [lane.id for lane in self.lanes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"lane ids must be unique: {ids}")
        if any(lane.match is None for lane in self.lanes[:-1]):
            raise ValueError("only the last lane may omit 'match' (it takes the rest)")
        return self

    @model_validator(mode="after")
    def _guard_reads_outcomes(self) -> Topology:
        """An experiment's guard judges outcomes: it needs the outcome join on."""
        if self.experiment is not None and self.experiment.guard.enabled and not self.outcomes.enabled:
            raise ValueError("experiment.guard needs outcomes.enabled (or guard.enabled: false)")
        return self

    @model_validator(mode="after")
    def _versions_in_one_place(self) -> Topology:
        """With an experiment, the arms name the versions: model.version stays empty."""
        if self.experiment is not None and self.model.version:
            raise ValueError("model.version and experiment: the arms name the versions (leave it empty)")
        return self

    @model_validator(mode="after")
    def _no_loops(self) -> Topology:
        """Neither sink topic nor the changelog may be an input topic."""
        outputs = {self.sink.topic, self.sink.dead_letter_topic, self.changelog_topic}
        if self.outcomes.examples_topic is not None:
            if self.outcomes.examples_topic in outputs:
                raise ValueError("outcomes.examples_topic must differ from the sink's and state's topics")
            outputs.add(self.outcomes.examples_topic)
        looped = outputs.intersection(self.source.topics)
        if looped:
            raise ValueError(f"source.topics and sink topics overlap: {sorted(looped)}")
        return self

    @property
    def changelog_topic(self) -> str:
        return self.state.changelog_topic or f"{self.name}-user-histories"
