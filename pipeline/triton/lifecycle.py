"""The lifecycle of one inference request, in the states of Triton's gRPC request handling,
counted per state (plain data, no I/O).

START → READ → ISSUED → WRITEREADY → COMPLETE: created, inputs read from the batch, written
to a stream, answer ready to hand back, handed back and released."""

from __future__ import annotations

import enum
from collections import Counter


class RequestState(enum.Enum):
    START = "START"
    READ = "READ"
    ISSUED = "ISSUED"
    WRITEREADY = "WRITEREADY"
    COMPLETE = "COMPLETE"


class LifecycleCounts:
    """How many requests are in each state now, and how many ever entered it."""

    def __init__(self) -> None:
        self.current: Counter[RequestState] = Counter()
        self.entered: Counter[RequestState] = Counter()

    def enter(self, state: RequestState, leaving: RequestState | None = None) -> None:
        if leaving is not None:
            self.current[leaving] -= 1
        if state is not RequestState.COMPLETE:
            self.current[state] += 1
        self.entered[state] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            "current": {s.value: self.current[s] for s in RequestState},
            "entered": {s.value: self.entered[s] for s in RequestState},
        }
