"""Credit gate: the pipeline's only backpressure (RxPY is push-only, it has no demand).

Every consumed event takes a credit and gives it back when finished (written to the output
or the dead-letter topic). At the high watermark the source holds the topic (takes nothing
of it; paused in the consumer if held long, sources/kafka.py); at the low watermark it takes
again. So memory stays flat and Kafka's lag absorbs any burst."""

from __future__ import annotations

from collections.abc import Callable


class CreditGate:
    def __init__(self, high_watermark: int, low_watermark: int) -> None:
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.high = high_watermark
        self.low = low_watermark
        self.in_flight = 0

    @property
    def exhausted(self) -> bool:
        return self.in_flight >= self.high

    @property
    def has_room(self) -> bool:
        """Back at the low watermark: a paused topic may resume."""
        return self.in_flight <= self.low

    def take(self, n: int) -> None:
        self.in_flight += n

    def give_back(self, n: int) -> None:
        self.in_flight -= n
        if self.in_flight < 0:
            raise RuntimeError("more credits given back than taken")


class TopicCredits:
    """One credit gate per source topic: a flood on one topic (a backfill) pauses only that
    topic's partitions, and the others keep flowing. The bound on memory is the sum."""

    def __init__(
        self,
        topics: list[str],
        high_watermark: int,
        low_watermark: int,
        hold: Callable[[], bool] = lambda: False,
    ) -> None:
        self.gates = {topic: CreditGate(high_watermark, low_watermark) for topic in topics}
        self.high, self.low = high_watermark, low_watermark
        self.hold = hold  # True: every topic is held, none let go (the dead-letter budget)

    def gate(self, topic: str) -> CreditGate:
        found = self.gates.get(topic)
        if found is None:  # a topic matched by a pattern or added later
            found = self.gates[topic] = CreditGate(self.high, self.low)
        return found

    @property
    def in_flight(self) -> int:
        return sum(g.in_flight for g in self.gates.values())

    def take(self, topic: str, n: int) -> None:
        self.gate(topic).take(n)

    def give_back(self, topic: str, n: int) -> None:
        self.gate(topic).give_back(n)

    def to_hold(self, held: set[str]) -> set[str]:
        """Topics that reached their high watermark (all while held) and are not held yet."""
        holding = self.hold()
        return {t for t, g in self.gates.items() if (holding or g.exhausted) and t not in held}

    def update_held(self, held: set[str]) -> set[str]:
        """``held`` brought up to date in place: full topics added, those back at their low
        watermark removed. Returns the ones let go (the source resumes them)."""
        held |= self.to_hold(held)
        room = self.to_let_go(held)
        held -= room
        return room

    def to_let_go(self, held: set[str]) -> set[str]:
        """Held topics that fell to their low watermark (none while held on purpose)."""
        if self.hold():
            return set()
        return {t for t in held if self.gate(t).has_room}
