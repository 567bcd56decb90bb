"""lane rules: which lane a user's request belongs to.

Lanes are declared in the topology in order of importance, each with a match on an event
field, a header or the source topic; a request goes to the first lane that any of its events
matches (a purchase lifts the user's whole request), the last lane being the fallback.
Ordering between lanes happens in the lane scheduler (pipeline.control.lanes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.events import Event, UserRequest


@dataclass(frozen=True)
class LaneRule:
    lane: str
    priority: int = 0  # Triton request priority of the lane
    field: str | None = None  # event attribute, e.g. "type"
    header: str | None = None
    topics: frozenset[str] = frozenset()
    values: frozenset[str] = frozenset()

    @property
    def catch_all(self) -> bool:
        return self.field is None and self.header is None and not self.topics

    def matches(self, event: Event) -> bool:
        if self.catch_all:
            return True
        if self.topics and event.source.topic not in self.topics:
            return False
        if self.field is not None and str(getattr(event, self.field, "")) not in self.values:
            return False
        if self.header is not None:
            value = dict(event.source.headers).get(self.header)
            if value is None or value.decode("utf-8", "replace") not in self.values:
                return False
        return True


def lane_classifier(rules: Sequence[LaneRule]) -> Callable[[UserRequest], tuple[str, int]]:
    """A function from a request to its (lane id, Triton priority)."""
    if not rules:
        raise ValueError("at least one lane")
    fallback = rules[-1]

    head = tuple(rules[:-1])

    def classify(request: UserRequest) -> tuple[str, int]:
        events = request.events
        for rule in head:
            # one event per request is the common case: no generator for it
            if rule.matches(events[0]) if len(events) == 1 else any(rule.matches(e) for e in events):
                return rule.lane, rule.priority
        return fallback.lane, fallback.priority

    if len(rules) == 1:
        return lambda _request: (fallback.lane, fallback.priority)
    return classify
