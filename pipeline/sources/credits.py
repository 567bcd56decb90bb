"""Credit gate: the pipeline's only backpressure (RxPY is push-only, it has no demand).

Every consumed event takes a credit, and its bytes (key, value and headers) count towards
the bytes in flight; both are given back when it is finished (written to the output or the
dead-letter topic). At either high watermark (events or bytes) the source holds the topic
(takes nothing of it; paused in the consumer if held long, sources/kafka.py); once at or
below both low watermarks it takes again. So memory stays flat, whatever the size of the
records, and Kafka's lag absorbs any burst. Only a gate already full is held: a single
record larger than the bytes bound is taken when nothing is in flight, and passes alone."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from pipeline.events import RawRecord

UNBOUNDED = sys.maxsize  # no bytes bound (a gate made without one)


def record_bytes(record: RawRecord) -> int:
    """What a consumed record holds: its key, value and headers (names and values)."""
    key, value, headers = record.key, record.value, record.headers
    size = (len(key) if key else 0) + (len(value) if value else 0)
    for name, data in headers:
        size += len(name) + (len(data) if data else 0)
    return size


def records_bytes(records: Iterable[RawRecord]) -> int:
    return sum(map(record_bytes, records))


def bytes_by_topic(records: Iterable[RawRecord]) -> dict[str, int]:
    """The records' bytes summed per topic (each topic has its own gate)."""
    sizes: dict[str, int] = {}
    for record in records:
        topic = record.topic
        sizes[topic] = sizes.get(topic, 0) + record_bytes(record)
    return sizes


class CreditGate:
    def __init__(
        self,
        high_watermark: int,
        low_watermark: int,
        high_watermark_bytes: int = UNBOUNDED,
        low_watermark_bytes: int = UNBOUNDED - 1,
    ) -> None:
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        if not 0 <= low_watermark_bytes < high_watermark_bytes:
            raise ValueError("need 0 <= low_watermark_bytes < high_watermark_bytes")
        self.high = high_watermark
        self.low = low_watermark
        self.high_bytes = high_watermark_bytes
        self.low_bytes = low_watermark_bytes
        self.in_flight = 0
        self.in_flight_bytes = 0

    @property
    def exhausted(self) -> bool:
        """At either high watermark: events or bytes."""
        return self.in_flight >= self.high or self.in_flight_bytes >= self.high_bytes

    @property
    def has_room(self) -> bool:
        """Back at both low watermarks: a paused topic may resume."""
        return self.in_flight <= self.low and self.in_flight_bytes <= self.low_bytes

    def take(self, n: int, nbytes: int = 0) -> None:
        self.in_flight += n
        self.in_flight_bytes += nbytes

    def give_back(self, n: int, nbytes: int = 0) -> None:
        self.in_flight -= n
        self.in_flight_bytes -= nbytes
        if self.in_flight < 0:
            raise RuntimeError("more credits given back than taken")
        if self.in_flight_bytes < 0:
            raise RuntimeError("more bytes given back than taken")


class TopicCredits:
    """One credit gate per source topic: a flood on one topic (a backfill) pauses only that
    topic's partitions, and the others keep flowing. The bound on memory is the sum."""

    def __init__(
        self,
        topics: list[str],
        high_watermark: int,
        low_watermark: int,
        hold: Callable[[], bool] = lambda: False,
        high_watermark_bytes: int = UNBOUNDED,
        low_watermark_bytes: int = UNBOUNDED - 1,
    ) -> None:
        self.watermarks = (high_watermark, low_watermark, high_watermark_bytes, low_watermark_bytes)
        self.gates = {topic: CreditGate(*self.watermarks) for topic in topics}
        self.high, self.low = high_watermark, low_watermark
        self.hold = hold  # True: every topic is held, none let go (the dead-letter budget)

    def gate(self, topic: str) -> CreditGate:
        found = self.gates.get(topic)
        if found is None:  # a topic matched by a pattern or added later
            found = self.gates[topic] = CreditGate(*self.watermarks)
        return found

    @property
    def in_flight(self) -> int:
        return sum(g.in_flight for g in self.gates.values())

    @property
    def in_flight_bytes(self) -> int:
        return sum(g.in_flight_bytes for g in self.gates.values())

    def take(self, topic: str, n: int, nbytes: int = 0) -> None:
        self.gate(topic).take(n, nbytes)

    def give_back(self, topic: str, n: int, nbytes: int = 0) -> None:
        self.gate(topic).give_back(n, nbytes)

    def to_hold(self, held: set[str]) -> set[str]:
        """Topics that reached a high watermark (all while held) and are not held yet."""
        holding = self.hold()
        return {t for t, g in self.gates.items() if (holding or g.exhausted) and t not in held}

    def update_held(self, held: set[str]) -> set[str]:
        """``held`` brought up to date in place: full topics added, those back at their low
        watermarks removed. Returns the ones let go (the source resumes them)."""
        held |= self.to_hold(held)
        room = self.to_let_go(held)
        held -= room
        return room

    def to_let_go(self, held: set[str]) -> set[str]:
        """Held topics that fell to both low watermarks (none while held on purpose)."""
        if self.hold():
            return set()
        return {t for t in held if self.gate(t).has_room}
