"""How much memory a topology can hold: every bound it sets, each as a term with the key
that sets it, their sum, and the Kubernetes request and limit that follow.

The in-flight records are bounded in bytes (``source.credits.high_watermark_bytes`` per
input topic, overshot by at most one poll), not by count × ``max_event_bytes``: an event
larger than that is fetched and counted at its real size before parse dead-letters it, and
its dead letter copies it again. Beside them sit the client's fetch buffer, the outputs
waiting for the broker, the Triton requests in flight, the users' histories (in memory, or
RocksDB's cache and write buffers, and the restores' readers), the outcome join and the
shadow arms. The constants measured here are explained in docs/reliability.md
("Memory: what bounds it"), with the measured worst case against the formula."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from pipeline.operators.coalesce import ENTRY_OVERHEAD_BYTES
from pipeline.state.histories import WRITE_BUFFER_BYTES
from pipeline.topology.schema import Topology

MIB = 1 << 20
# What the interpreter and the libraries (aiokafka, gRPC, numpy, RxPY, pydantic, the
# metrics) hold once `pipeline run` is ready: measured RSS, rounded up.
BASELINE_BYTES = 96 * MIB
# Python objects an in-flight event costs beyond its payload bytes (the raw record, the
# parsed event, its place in windows, batches and the offset tracker): measured, rounded up.
EVENT_OVERHEAD_BYTES = 2_048
# An output per event at most: its JSON without the items, then each item with its score.
OUTPUT_BASE_BYTES = 512
OUTPUT_ITEM_BYTES = 48
# A Triton request lives as numpy arrays, as the protobuf message and in gRPC's buffers.
TENSOR_COPIES = 3
ROCKSDB_WRITE_BUFFERS = 2  # histories.py's set_max_write_buffer_number
ROCKSDB_BLOCK_CACHE_BYTES = 32 * MIB  # RocksDB's default per store (histories.py sets none)
PACKED_PAIR_BYTES = 16  # a remembered (ts, item) pair (operators/coalesce.py)
# The smallest changelog record on the wire: a user key (8 B), a history of one pair (16 B)
# and the record's framing in a batch (~8 B): the most records one fetch can decode.
CHANGELOG_RECORD_MIN_BYTES = 32
# A changelog record being restored, as Python holds a fetch of them at once (aiokafka's
# ConsumerRecord, the RawRecord, the ChangelogEntry, the RocksDB write batch's copy):
# measured 562 B with tracemalloc for the smallest record, rounded up.
RESTORE_RECORD_BYTES = 640
DEFAULT_PARTITIONS = 12  # deploy/k8s/scaledobject.yaml: the input topic's partition count
MARGIN = 0.25  # the limit's room above the bound (allocator fragmentation, what is not counted)
ROUND_TO = 64 * MIB  # requests and limits in whole 64 MiB steps


def _consumer_default(name: str) -> int:
    """aiokafka's default for a consumer option the project leaves unset."""
    return int(inspect.signature(AIOKafkaConsumer).parameters[name].default)


FETCH_PARTITION_BYTES = _consumer_default("max_partition_fetch_bytes")
FETCH_MAX_BYTES = _consumer_default("fetch_max_bytes")


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    key: str  # the topology key (or keys) that sets it
    steady: bool = False  # filled in normal running too (a cache), not only under overload


@dataclass(frozen=True)
class MemoryBudget:
    terms: tuple[Term, ...]
    partitions: int  # input partitions one member may hold

    @property
    def total(self) -> int:
        """The bound: every term at once."""
        return sum(term.bytes for term in self.terms)

    @property
    def request(self) -> int:
        """The typical RSS: the baseline and the caches that fill in normal running."""
        return _round_up(sum(term.bytes for term in self.terms if term.steady))

    @property
    def limit(self) -> int:
        """The bound plus the margin."""
        return _round_up(self.total * (1 + MARGIN))

    def term(self, name: str) -> Term:
        return next(term for term in self.terms if term.name == name)


def _round_up(size: float) -> int:
    return math.ceil(size / ROUND_TO) * ROUND_TO


def memory_budget(topology: Topology, partitions: int = DEFAULT_PARTITIONS) -> MemoryBudget:
    """Every memory bound ``topology`` sets for one member holding ``partitions`` input
    partitions (the most it may hold: the input topic's partition count)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    terms = [
        Term(
            "interpreter and libraries", BASELINE_BYTES, "(measured: `pipeline run` ready, idle)", steady=True
        ),
        *_source_terms(topology, partitions),
        *_inference_terms(topology),
        *_history_terms(topology, partitions),
    ]
    if topology.outcomes.enabled:
        terms.append(
            Term("outcome join", int(topology.outcomes.memory_mb * MIB), "outcomes.memory_mb", steady=True)
        )
    return MemoryBudget(tuple(terms), partitions)


def _in_flight_events(t: Topology) -> int:
    """Events one topic can have in flight: its high watermark and one poll beyond it."""
    return t.source.credits.high_watermark + t.source.max_poll_records


def _source_terms(t: Topology, partitions: int) -> list[Term]:
    source, credits = t.source, t.source.credits
    topics = len(source.topics)
    fetch_buffer = min(partitions * FETCH_PARTITION_BYTES, FETCH_MAX_BYTES)
    # A poll hands out what the fetch buffered, max_poll_records at most: each record is as
    # large as it is (max_event_bytes is checked only after, by parse), one partition's
    # fetch at most (a record larger still: not counted, docs/reliability.md).
    poll = min(source.max_poll_records * FETCH_PARTITION_BYTES, fetch_buffer)
    payload = credits.high_watermark_bytes + poll
    events = _in_flight_events(t)
    output = OUTPUT_BASE_BYTES + OUTPUT_ITEM_BYTES * t.model.top_k
    return [
        Term(
            "in-flight payload",
            topics * payload,
            "(source.credits.high_watermark_bytes + one poll: the fetch buffer at most) × source.topics",
        ),
        Term(
            "in-flight event objects",
            topics * events * EVENT_OVERHEAD_BYTES,
            "(source.credits.high_watermark + source.max_poll_records) × source.topics",
        ),
        Term(
            "consumer fetch buffer",
            fetch_buffer,
            f"partitions held ({partitions}) × aiokafka's max_partition_fetch_bytes (1 MiB)",
        ),
        Term(
            "outputs awaiting the broker",
            topics * (payload + events * output),
            "dead letters copy their inputs: the in-flight payload; recommendations: model.top_k",
        ),
    ]


def _rows(t: Topology) -> int:
    """The most users one Triton request can carry."""
    sizes = [t.adaptive.max_batch if t.adaptive.enabled else t.batch.max_size]
    return max(sizes + [lane.max_batch for lane in t.lanes if lane.max_batch is not None])


def _request_bytes(t: Topology) -> int:
    """One Triton request of the largest batch, inputs and answers, every copy."""
    per_row = 8 + 8 * t.window.history_length + (8 + 4) * t.model.top_k
    return _rows(t) * per_row * TENSOR_COPIES


def _inference_terms(t: Topology) -> list[Term]:
    in_flight = max(t.model.max_in_flight, t.adaptive.max_in_flight)  # wiring.dispatch_config
    terms = [
        Term(
            "Triton requests in flight",
            in_flight * _request_bytes(t),
            "max(model.max_in_flight, adaptive.max_in_flight) × batch.max_size, window.history_length",
        )
    ]
    if t.experiment is not None:
        shadows = [arm for arm in t.experiment.arms if arm.shadow]
        if shadows:
            terms.append(
                Term(
                    "shadow arms' requests",
                    sum(arm.max_in_flight for arm in shadows) * _request_bytes(t),
                    "experiment.arms[shadow].max_in_flight",
                )
            )
    return terms


def _history_terms(t: Topology, partitions: int) -> list[Term]:
    w = t.window
    cache = int(w.history_cache_mb * MIB)
    if t.state.dir is None:
        per_user = PACKED_PAIR_BYTES * w.history_length + ENTRY_OVERHEAD_BYTES
        held = min(cache, w.remembered_users * per_user)
        return [
            Term(
                "users' histories (in memory)",
                held,
                "window.history_cache_mb, or window.remembered_users × history_length if less",
                steady=True,
            )
        ]
    rocksdb = partitions * (WRITE_BUFFER_BYTES * ROCKSDB_WRITE_BUFFERS + ROCKSDB_BLOCK_CACHE_BYTES)
    # Every partition assigned restores at once (state/users.py: a task each, on a fresh
    # disk from offset 0), each with a consumer of its own (state/changelog.py read): its
    # fetch buffer, and the records of one fetch decoded (getmany without max_records).
    per_restore = (
        FETCH_PARTITION_BYTES + FETCH_PARTITION_BYTES // CHANGELOG_RECORD_MIN_BYTES * RESTORE_RECORD_BYTES
    )
    return [
        Term("users' histories (cache)", cache, "window.history_cache_mb (state.dir set)", steady=True),
        Term(
            "RocksDB write buffers and block cache",
            rocksdb,
            f"partitions held ({partitions}) × ({ROCKSDB_WRITE_BUFFERS} × {WRITE_BUFFER_BYTES // MIB} MiB "
            f"memtables + {ROCKSDB_BLOCK_CACHE_BYTES // MIB} MiB block cache) (state.dir set)",
            steady=True,
        ),
        Term(
            "state restores' readers",
            partitions * per_restore,
            f"partitions held ({partitions}) restoring at once × (max_partition_fetch_bytes + its "
            f"records decoded, {CHANGELOG_RECORD_MIN_BYTES} B each at least, {RESTORE_RECORD_BYTES} B "
            "as objects) (state.dir set)",
        ),
    ]


def _mib(size: int) -> str:
    return f"{size / MIB:,.1f}"


def format_budget(budget: MemoryBudget) -> str:
    """The budget as a table: each term, its MiB and its key; then the bound, the request and
    the limit."""
    width = max(len(term.name) for term in budget.terms)
    lines = [f"{'term':<{width}}  {'MiB':>8}  set by", f"{'-' * width}  {'-' * 8}  {'-' * 6}"]
    lines += [f"{term.name:<{width}}  {_mib(term.bytes):>8}  {term.key}" for term in budget.terms]
    lines += [
        f"{'-' * width}  {'-' * 8}",
        f"{'bound (every term at once)':<{width}}  {_mib(budget.total):>8}",
        f"{'request (baseline and caches)':<{width}}  {_mib(budget.request):>8}  "
        f"resources.requests.memory: {budget.request // MIB}Mi",
        f"{f'limit (bound + {MARGIN:.0%})':<{width}}  {_mib(budget.limit):>8}  "
        f"resources.limits.memory: {budget.limit // MIB}Mi",
        f"(for a member holding {budget.partitions} input partitions)",
    ]
    return "\n".join(lines)
