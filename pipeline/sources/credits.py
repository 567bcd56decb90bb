"""Credit gate: the pipeline's only backpressure (RxPY is push-only, it has no demand).

Every consumed event takes a credit and gives it back when finished (written to the output
or the dead-letter topic). At the high watermark the source pauses its partitions; below
the low watermark it resumes. So memory stays flat and Kafka's lag absorbs any burst."""

from __future__ import annotations

import asyncio


class CreditGate:
    def __init__(self, high_watermark: int, low_watermark: int) -> None:
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.high = high_watermark
        self.low = low_watermark
        self.in_flight = 0
        self._below_low = asyncio.Event()
        self._below_low.set()

    @property
    def exhausted(self) -> bool:
        return self.in_flight >= self.high

    def take(self, n: int) -> None:
        self.in_flight += n
        if self.in_flight > self.low:
            self._below_low.clear()

    def give_back(self, n: int) -> None:
        self.in_flight -= n
        if self.in_flight < 0:
            raise RuntimeError("more credits given back than taken")
        if self.in_flight <= self.low:
            self._below_low.set()

    async def wait_for_room(self) -> None:
        """Return once the in-flight count has fallen to the low watermark."""
        await self._below_low.wait()
