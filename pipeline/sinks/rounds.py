"""Send rounds: the records of every write in progress on one producer go out together.

aiokafka's batch API queues one batch per partition until the producer has drained it, and a
producer has one request in flight per broker: batches made per write (one per inference
outcome, ~128 records over the partitions) would each wait a round trip. Instead each round
takes every record handed in while the previous round was out and sends one batch per
partition, so a round grows with the load, as the producer's own accumulator does for
``send``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipeline.events import OutputRecord

Failed = list[tuple[OutputRecord, BaseException]]


class SendRounds:
    def __init__(self, send_all: Callable[[list[OutputRecord]], Awaitable[Failed]]) -> None:
        self._send_all = send_all  # sends, waits for every answer, returns the refused records
        self._waiting: list[tuple[list[OutputRecord], asyncio.Future[Failed]]] = []
        self._round: asyncio.Task[None] | None = None

    async def send(self, records: list[OutputRecord]) -> Failed:
        """Once the round that takes them is answered: the records of ``records`` refused, with why."""
        answered: asyncio.Future[Failed] = asyncio.get_running_loop().create_future()
        self._waiting.append((records, answered))
        if self._round is None or self._round.done():  # done: cancelled before it could clean up
            self._round = asyncio.create_task(self._rounds(), name="sink-rounds")
        return await answered

    async def _rounds(self) -> None:
        """Round after round while writes wait; each write learns its own refusals. An error
        of the round itself (not a refusal) is every one of its writes' error."""
        try:
            while self._waiting:
                # a write cancelled while it waited (a stop) is not sent: it would be a duplicate
                taken = [(records, answered) for records, answered in self._waiting if not answered.done()]
                self._waiting = []
                try:
                    failed = await self._send_all([rec for records, _ in taken for rec in records])
                except Exception as exc:
                    for _, answered in taken:
                        if not answered.done():
                            answered.set_exception(exc)
                    continue
                except BaseException:  # cancelled (the loop ends), KeyboardInterrupt: its writes fail
                    for _, answered in taken:
                        if not answered.done():
                            answered.set_exception(RuntimeError("send round ended before its answer"))
                    raise
                why = {id(rec): error for rec, error in failed}
                for records, answered in taken:
                    if not answered.done():
                        answered.set_result([(rec, why[id(rec)]) for rec in records if id(rec) in why])
        finally:
            self._round = None
            for _, answered in self._waiting:  # the round ended with writes still waiting
                if not answered.done():
                    answered.set_exception(RuntimeError("send round ended before their turn"))
            self._waiting = []
