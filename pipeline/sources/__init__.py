"""Where records come from. A source does its consumer's I/O and tells the partitions'
owner (``partitions.py``) what it took; ``Source`` is what the runtime asks of one. Kafka's
is ``kafka.py``; the testing kit's (``pipeline/testing/``) reads lists."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from pipeline.events import RawRecord
from pipeline.metrics import PartitionReading
from pipeline.sources.partitions import Partitions


class Source(Protocol):
    partitions: Partitions

    async def start(self) -> None:
        """Connect and join: records may be handed on after this."""

    async def run(self, emit: Callable[[list[RawRecord]], None], stop: asyncio.Event) -> None:
        """Hand records on (taken through ``partitions``) until ``stop`` is set."""

    async def stop(self) -> None: ...

    def lag(self) -> int:
        """Records behind the end of every assigned partition."""
        ...

    def resume_if_room(self) -> None:
        """Let go of anything held while its topic has room."""

    def partition_readings(self) -> list[PartitionReading]: ...
