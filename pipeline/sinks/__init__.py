"""Where outputs go. ``Sink`` is what the runtime asks of one: Kafka's is ``kafka.py``; the
testing kit's (``pipeline/testing/``) captures into a list."""

from __future__ import annotations

from typing import Protocol

from pipeline.events import OutputRecord, SinkBatch


class Sink(Protocol):
    async def start(self) -> None: ...

    async def write(self, batch: SinkBatch) -> list[OutputRecord]:
        """Returns once every record is acknowledged: the records written (a refused
        recommendation replaced by its dead letters)."""
        ...

    async def stop(self) -> None: ...

    def acked_offset(self, topic: str, partition: int) -> int | None:
        """The highest offset acknowledged in a partition written to (None: none yet)."""
        ...

    @property
    def refusing(self) -> bool:
        """A dead letter is being refused right now, or a topic written to is missing
        (readiness turns false)."""
        ...
