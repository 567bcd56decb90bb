"""Circuit breaker per model (state only; waiting is an asyncio.Event).

CLOSED: requests flow. When the server is unreachable, or after ``failure_threshold``
consecutive recoverable failures, it OPENs:
nothing is sent, requests wait (holding their credits, so the source pauses) instead of
burning attempts against a server that is down. After ``open_ms`` one probe is let through
(HALF_OPEN): success closes the breaker and releases everyone; failure re-opens it for
twice as long (up to ``max_open_ms``)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        open_ms: int,
        max_open_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_open_s = open_ms / 1000.0
        self.max_open_s = max_open_ms / 1000.0
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.open_s = self.base_open_s
        self.trips = 0
        self._probe_out = False
        self._closed = asyncio.Event()
        self._closed.set()

    @property
    def is_closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    async def admit(self) -> bool:
        """Wait until a request may be sent. Returns True if it is the half-open probe."""
        while True:
            if self.state is BreakerState.CLOSED:
                return False
            if (
                self.state is BreakerState.OPEN
                and self.clock() - self.opened_at >= self.open_s
                and not self._probe_out
            ):
                self.state = BreakerState.HALF_OPEN
                self._probe_out = True
                return True
            wait_s = max(0.01, self.open_s - (self.clock() - self.opened_at))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), min(wait_s, 0.25))

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._probe_out = False
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self.open_s = self.base_open_s
            self._closed.set()

    def record_failure(self, probe: bool, server_down: bool = False) -> None:
        """A recoverable failure. Opens (or re-opens) the breaker when it should: at once
        when the server is unreachable, after a run of failures otherwise."""
        self.consecutive_failures += 1
        if probe:
            self._probe_out = False
            self.open_s = min(self.max_open_s, self.open_s * 2)
            self._open()
        elif self.state is BreakerState.CLOSED and (
            server_down or self.consecutive_failures >= self.failure_threshold
        ):
            self._open()

    def cancel_probe(self) -> None:
        """The probe was not sent after all: let the next request probe instead."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self._probe_out = False

    def _open(self) -> None:
        if self.state is BreakerState.CLOSED:
            self.trips += 1
        self.state = BreakerState.OPEN
        self.opened_at = self.clock()
        self._closed.clear()
