"""The soak's run: broker epochs (fresh topics, group and workers on a broker restarted
empty), and within them quiet time and rounds of one fault each, its recovery waited for.
The books of each epoch are kept by pipeline.devstack.epoch, as `pipeline dev` keeps them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.audit import Ledger
from pipeline.devstack.broker_load import BrokerLoad
from pipeline.devstack.dev import live_events
from pipeline.devstack.epoch import RECYCLE_DRAIN_S, Books, Epoch
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.tuning import EMBEDDED_BROKER
from pipeline.procfs import rss_mb
from pipeline.recsys.generator import GeneratorConfig
from pipeline.topology.schema import Topology

from .audit import audit_epoch
from .crew import WORKERS, Crew
from .faults import FAULTS
from .records import Row, WorkerLife, wall_ms

log = logging.getLogger("soak")

SETTLE_S = 5.0  # quiet after a round before the next fault
SAMPLE_EVERY_S = 5.0  # RSS and unanswered events, for the table and the plot
UNANSWERED_AFTER_MS = 10_000


def newest_input_ms(ledger: Ledger) -> int:
    """The timestamp of the input settled last (the feeder settles in send order)."""
    return next(reversed(ledger.inputs.values()), 0)


class Soak:
    def __init__(self, args: argparse.Namespace, stack: EmbeddedStack, run_dir: Path) -> None:
        self.args = args
        self.stack = stack
        self.run_dir = run_dir
        self.rng = random.Random(args.seed)
        self.fault_every: tuple[float, float] = args.fault_every
        self.load_every_s = min(30.0, self.fault_every[0] / 2)
        self.t0 = time.monotonic()
        self.books = Books()
        self.events = live_events(GeneratorConfig(seed=args.seed), None)
        self.epoch = -1
        self.topologies: list[Topology] = []
        self.current: Epoch | None = None  # the epoch's feeder and follower
        self.crew = Crew(run_dir, self.now_s)
        self.rows: list[Row] = []
        self.epochs: list[dict[str, Any]] = []  # the fresh audit of each epoch
        self.samples: list[dict[str, Any]] = []
        self.recycles = 0
        self.aborted = ""
        self.stop = asyncio.Event()  # the user's signal
        self.load = BrokerLoad(stack.broker.pid)
        self.load_since = time.monotonic()
        self.epoch_started_s = 0.0
        self.last_sample = 0.0
        self.row_start_ms = wall_ms()
        self.reasons_at_row_start: Counter[str] = Counter()
        self.fault_end = 0.0  # monotonic
        self.fault_end_ms = 0
        self.finished = False

    # ---- state -------------------------------------------------------------------------

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    @property
    def topology(self) -> Topology:
        return self.topologies[-1]

    @property
    def ledger(self) -> Ledger:
        return self.books.ledgers[-1]

    def dead_letter_reasons(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for ledger in self.books.ledgers:
            total.update(ledger.dead_letter_reasons)
        return total

    def mark_end(self) -> None:
        self.fault_end = time.monotonic()
        self.fault_end_ms = wall_ms()

    # ---- epochs and workers ------------------------------------------------------------

    async def start_epoch(self) -> None:
        """Fresh topics and group on the (possibly restarted) broker, the follower, the
        members, then the feed."""
        self.epoch += 1
        shipped_session = topology_on_stack(self.stack, quick_join=False)  # its stalls outlast 6 s
        if not self.args.memory_state:  # each worker's dir is under it (a pod's disk of its own)
            shipped_session["state"] = {"dir": str(self.run_dir / "state" / f"epoch-{self.epoch}")}
        topology = EMBEDDED_BROKER.apply(Topology.model_validate(shipped_session))
        self.topologies.append(topology)
        self.current = await Epoch.open(topology, self.books, self.events, self.args.rate, f"-{self.epoch}")
        for _ in range(WORKERS):
            self.crew.workers.append(await self.start_worker("member"))
        self.current.start_feeding()
        self.epoch_started_s = self.now_s()
        self.load = BrokerLoad(self.stack.broker.pid)
        self.fresh_load_interval()
        log.info(
            "epoch %d: topic %s, group %s, workers %s",
            self.epoch,
            topology.source.topics[0],
            topology.source.group_id,
            ", ".join(f"{w.name} (pid {w.proc.pid})" for w in self.crew.workers),
        )

    async def end_epoch(self) -> None:
        """The members SIGTERMed (they drain and commit), the follower stopped, then a fresh
        read of the epoch's topics."""
        for life in list(self.crew.live()):
            await self.crew.stop(life, "SIGTERM (epoch end)")
        if self.current is not None:
            await self.current.close()
        self.epochs.append(await audit_epoch(self.epoch, self.topology, self.ledger))

    async def start_worker(self, role: str) -> WorkerLife:
        return await self.crew.start(role, self.topology, self.epoch)

    async def tick(self, seconds: float) -> None:
        """Wait ``seconds`` while watching the workers, the feeder and the follower."""
        end = time.monotonic() + seconds
        while True:
            if self.current is not None:
                self.current.raise_failure(running_expected=True)
            await self.crew.check(self.topology, self.epoch)
            if time.monotonic() - self.last_sample >= SAMPLE_EVERY_S:
                self.take_sample()
            left = end - time.monotonic()
            if left <= 0 or self.stop.is_set():
                return
            await asyncio.sleep(min(1.0, left))

    def take_sample(self) -> None:
        self.last_sample = time.monotonic()
        rss = self.crew.sample()
        broker = rss_mb(self.stack.broker.pid) if self.stack.broker.alive() else None
        triton = rss_mb(self.stack.triton.pid) if self.stack.triton.alive() else None
        self.samples.append(
            {
                "t": round(self.now_s(), 1),
                "epoch": self.epoch,
                "rss_mb": rss,
                "broker_rss_mb": round(broker, 1) if broker else None,
                "triton_rss_mb": round(triton, 1) if triton else None,
                "inputs": sum(len(lg.inputs) for lg in self.books.ledgers),
                "unanswered_5s": self.ledger.unanswered(wall_ms() - 5_000),
            }
        )

    # ---- the broker's load -------------------------------------------------------------

    def fresh_load_interval(self) -> None:
        """Start the broker's next CPU interval now: one that spans a fault or a pause says
        nothing of the broker's growth (a SIGSTOP would lower the baseline, a catch-up raise
        the share)."""
        self.load = BrokerLoad(self.stack.broker.pid, self.load.started, self.load.history)
        self.load_since = time.monotonic()
        self.load.sample(self.load_since)

    def recycle_due(self) -> str | None:
        if (
            self.args.recycle_every > 0
            and self.now_s() - self.epoch_started_s >= self.args.recycle_every * 60
        ):
            return f"epoch {self.epoch} is {self.args.recycle_every:g} min old (--recycle-every)"
        now = time.monotonic()
        if now - self.load_since < self.load_every_s:
            return None
        self.load_since = now
        share = self.load.sample(now)
        books = self.books
        log.info(
            "t=%ds epoch %d: in %d, recommendations %d, dead letters %d, unanswered after %ds %d, "
            "broker CPU %s, worker RSS %s",
            self.now_s(),
            self.epoch,
            books.inputs(),
            sum(lg.recommendations for lg in books.ledgers),
            sum(lg.dead_letters for lg in books.ledgers),
            UNANSWERED_AFTER_MS // 1000,
            self.ledger.unanswered(wall_ms() - UNANSWERED_AFTER_MS),
            f"{share:.0%}" if share is not None else "?",
            self.crew.rss_text(),
        )
        if share is not None and self.load.needs_recycle(share, self.args.recycle_growth):
            return self.load.recycle_message(share)
        return None

    # ---- rows ---------------------------------------------------------------------------

    def open_row(self, kind: str) -> Row:
        self.reasons_at_row_start = self.dead_letter_reasons()
        return Row(kind, round(self.now_s(), 1), self.epoch, self.row_start_ms)

    def close_row(self, row: Row) -> None:
        self.take_sample()
        row.end_ms = wall_ms()
        self.row_start_ms = row.end_ms
        row.rss = self.crew.rss_text() or row.rss  # the last row's workers are stopped by now
        row.dead_letters = dict(self.dead_letter_reasons() - self.reasons_at_row_start)
        row.worker_errors = self.crew.new_errors()
        if row.worker_errors:
            shown = "; ".join(row.worker_errors[:3])
            more = f" (+{len(row.worker_errors) - 3} more)" if len(row.worker_errors) > 3 else ""
            row.notes.append(f"worker ERROR lines: {shown}{more}")
        self.rows.append(row)

    # ---- the run ------------------------------------------------------------------------

    async def run(self) -> None:
        lo, hi = self.fault_every
        end_s = self.args.minutes * 60
        deck: list[str] = []
        await self.start_epoch()
        next_fault = self.now_s() + self.rng.uniform(lo, hi)
        while not self.stop.is_set():
            reason = await self.quiet_until(min(next_fault, end_s))
            if self.stop.is_set() or self.now_s() >= end_s:
                break
            if reason is not None:
                await self.recycle(reason)
                next_fault = max(next_fault, self.now_s() + lo / 2)
                continue
            if end_s - self.now_s() < lo:  # too little left for a fault and its recovery
                await self.quiet_until(end_s, judge=False)
                break
            if not deck:
                deck = list(FAULTS)
                self.rng.shuffle(deck)
            started = self.now_s()
            await self.fault_round(deck.pop())
            next_fault = max(started + self.rng.uniform(lo, hi), self.now_s() + SETTLE_S)
        await self.finish()

    async def quiet_until(self, target_s: float, judge: bool = True) -> str | None:
        """Wait until ``target_s``; returns early with the reason when the broker needs
        recycling."""
        while self.now_s() < target_s and not self.stop.is_set():
            await self.tick(min(1.0, target_s - self.now_s()))
            reason = self.recycle_due() if judge else None
            if reason is not None:
                return reason
        return None

    async def fault_round(self, kind: str) -> None:
        row = self.open_row(kind)
        log.warning("t=%ds round %d: %s", row.t_s, len(self.rows) + 1, kind)
        began = time.monotonic()
        await FAULTS[kind](self, row)
        row.fault_s = round(self.fault_end - began, 1)
        recovery = await self.wait_recovered()
        row.recovery_s = round(recovery, 1) if recovery is not None else None
        if recovery is None:
            row.recovered = False
            row.notes.append(self.unanswered_note())
        self.close_row(row)
        self.fresh_load_interval()
        log.warning(
            "t=%ds %s: fault %.1f s, recovery %s",
            self.now_s(),
            row.fault,
            row.fault_s,
            f"{recovery:.1f} s" if recovery is not None else "NONE",
        )

    async def wait_recovered(self) -> float | None:
        """Seconds from the fault's end until every input produced before it is answered;
        None after --recovery-timeout (or the user's stop)."""
        deadline = self.fault_end + self.args.recovery_timeout
        ledger = self.ledger
        while time.monotonic() < deadline and not self.stop.is_set():
            if newest_input_ms(ledger) >= self.fault_end_ms and ledger.unanswered(self.fault_end_ms) == 0:
                return time.monotonic() - self.fault_end
            await self.tick(0.25)
        return None

    def unanswered_note(self) -> str:
        waiting = [
            c for c, ts in self.ledger.inputs.items() if ts < self.fault_end_ms and not self.ledger.outputs[c]
        ]
        by_partition = Counter(p for _, p, _ in waiting)
        msg = (
            f"NOT RECOVERED: {len(waiting)} inputs older than the fault's end unanswered after "
            f"{self.args.recovery_timeout:.0f} s, by partition {dict(sorted(by_partition.items()))}, "
            f"e.g. {[f'{t}[{p}]@{o}' for t, p, o in waiting[:5]]}"
        )
        log.error(msg)
        return msg

    # ---- recycling and the end ----------------------------------------------------------

    async def recycle(self, reason: str) -> None:
        assert self.current is not None  # the run started its first epoch
        row = self.open_row("recycle")
        row.fault = f"broker recycle (epoch {self.epoch} → {self.epoch + 1})"
        log.warning("t=%ds %s; draining, then restarting it empty", self.now_s(), reason)
        row.notes.append(reason)
        paused = time.monotonic()
        if not await self.current.drained(RECYCLE_DRAIN_S):
            # The broker holds the only copy of what is unanswered: not now.
            msg = (
                f"postponed: {len(self.ledger.inputs) - self.ledger.accounted()} events unanswered "
                f"{RECYCLE_DRAIN_S:.0f} s after the feed stopped"
            )
            log.error(msg)
            row.notes.append(msg)
            row.recovered = False
            self.current.start_feeding()
        else:
            await self.end_epoch()
            await asyncio.to_thread(self.stack.broker.restart)
            self.recycles += 1
            await self.start_epoch()
            audit = self.epochs[-1]
            row.notes.append(
                f"epoch {audit['epoch']} audit: in {audit.get('events_in')}, lost {audit.get('lost')}, "
                f"duplicates {audit.get('duplicates')}"
            )
        self.mark_end()
        row.fault_s = row.recovery_s = round(time.monotonic() - paused, 1)
        row.notes.append(f"feed paused {row.recovery_s:.1f} s")
        self.close_row(row)
        self.fresh_load_interval()

    async def finish(self) -> None:
        """Stop feeding, wait for every event to be answered, stop the workers, audit."""
        if self.finished or self.current is None:
            return
        self.finished = True
        row = self.open_row("end")
        row.fault = "(no fault) to the end, then the drain"
        self.take_sample()
        row.rss = self.crew.rss_text()
        self.mark_end()
        if await self.current.drained(self.args.drain_timeout):
            row.recovery_s = round(time.monotonic() - self.fault_end, 1)
        else:
            row.recovered = False
            row.notes.append(self.unanswered_note())
        await self.end_epoch()
        self.close_row(row)
