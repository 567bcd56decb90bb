"""Progress of a replay: a tqdm bar (rate, counts, ETA) on a terminal, a log line every few
seconds otherwise (a job's log has no use for carriage returns)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pipeline.replay")


@dataclass
class Counts:
    read: int = 0  # rows taken from the source (this run)
    sent: int = 0  # handed to the producer
    acknowledged: int = 0  # confirmed by the broker
    skipped: int = 0  # dropped by the mapping on purpose (otherwise: skip)
    already_sent: int = 0  # acknowledged by an earlier, interrupted run: not sent again
    rejected: int = 0  # set aside in the reject file (refused by the producer, undecodable)
    outside_time_range: int = 0  # a topic range's records stamped outside [since, until): not sent


class Pacer:
    """Holds a loop to ``rate`` items per second (0: no bound), from its first item."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.started = time.monotonic()

    async def wait(self, done: int) -> None:
        """Sleep until ``done`` items are due (sleeps shorter than 5 ms are not worth taking)."""
        if self.rate > 0:
            ahead = self.started + done / self.rate - time.monotonic()
            if ahead > 0.005:
                await asyncio.sleep(ahead)


class Progress:
    def __init__(self, total: int | None, every_s: float = 10.0, bar: bool | None = None) -> None:
        self.total = total
        self.every_s = every_s
        self.started = time.monotonic()
        self._next_line = self.started + every_s
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar: Any = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="row", unit_scale=True, dynamic_ncols=True, file=sys.stderr)

    def update(self, counts: Counts, done_rows: int) -> None:
        """``done_rows``: rows read so far, including those an earlier run already sent."""
        if self._bar is not None:
            self._bar.n = done_rows
            self._bar.set_postfix(
                sent=counts.sent,
                acked=counts.acknowledged,
                skipped=counts.skipped,
                rejected=counts.rejected,
                refresh=False,
            )
            self._bar.refresh()
            return
        now = time.monotonic()
        if now >= self._next_line:
            self._next_line = now + self.every_s
            log.info("%s", self.line(counts, done_rows))

    def line(self, counts: Counts, done_rows: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-3)
        rate = counts.read / elapsed
        where = f"{done_rows:,}"
        eta = ""
        if self.total:
            where += f"/{self.total:,} rows ({100 * done_rows / self.total:.0f} %)"
            if rate > 0:
                eta = f", ETA {max(self.total - done_rows, 0) / rate:,.0f} s"
        else:
            where += " rows"
        return (
            f"replay: {where}, {rate:,.0f} rows/s, sent {counts.sent:,}, "
            f"acknowledged {counts.acknowledged:,}, skipped {counts.skipped:,}, "
            f"rejected {counts.rejected:,}, already sent {counts.already_sent:,}{eta}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
