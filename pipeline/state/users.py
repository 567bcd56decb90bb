"""Users' histories, scoped to the partitions this member holds: the one owner of their
stores. A user's key puts all their events (in every input topic, co-partitioned) in one
partition number, and their history lives with it.

    assigned ─► restore (partition held; others flow) ─► extend ─► changelog rounds
             ─► released (last round, store closed) ─► assigned elsewhere: restored there

Without ``state.dir`` histories are kept in memory only (``RecentItems``, as before state
existed): every restart, scale-out and rebalance forgets them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import Fatal
from pipeline.events import OutputRecord, SinkBatch
from pipeline.metrics import Metrics
from pipeline.operators.coalesce import RecentItems
from pipeline.state.changelog import ChangelogReader, ChangelogReset, ChangelogWriter
from pipeline.state.histories import HistoryStore

log = logging.getLogger(__name__)
FIRST_BACKOFF_S = 1.0
PROGRESS_LOG_S = 5.0  # a long restore says where it is this often
RESTORE_IDLE_S = 0.2  # nothing to restore: how often the restore loop looks again


class StateSettings(NamedTuple):
    dir: Path | None  # None: in memory only
    history_length: int
    by_event_time: bool
    cache_bytes: int  # for every open store together (or the in-memory histories)
    remembered_users: int  # in memory only
    restore_stall_s: float
    restore_attempts: int


class UserState:
    def __init__(
        self,
        settings: StateSettings,
        metrics: Metrics,
        changelog: ChangelogReader | None = None,
        write: Callable[[SinkBatch], Awaitable[list[OutputRecord]]] | None = None,
        acked: Callable[[str, int], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.by_event_time = settings.by_event_time
        self.durable = settings.dir is not None
        if self.durable and (changelog is None or write is None or acked is None):
            raise ValueError("durable state needs a changelog to read, a sink and its acknowledgements")
        self.changelog = changelog
        self._memory = RecentItems(
            settings.history_length, settings.remembered_users, settings.by_event_time, settings.cache_bytes
        )
        # A stale event (its partition released) still gets an answer nobody keeps: from its
        # own window's items, touching no store.
        self._scratch = RecentItems(settings.history_length, 0, settings.by_event_time)
        self.stores: dict[int, HistoryStore] = {}
        self.wanted: set[int] = set()  # assigned partition numbers
        self.restoring: set[int] = set()  # assigned, not restored yet: held
        self._restore_queue: list[int] = []
        self._restores: dict[int, asyncio.Task[None]] = {}  # one restore a partition
        self.split: set[int] = set()  # see ``assigned``
        self._assignments = 0  # a partition's restore is of the assignment it began in
        self._assigned_in: dict[int, int] = {}
        self._hits = self._misses = 0  # of stores closed since
        self.writer = (
            ChangelogWriter(changelog.topic, lambda: self.stores, write, acked, metrics)
            if changelog is not None and write is not None and acked is not None
            else None
        )
        metrics.state_restoring.set_function(lambda: len(self.restoring))
        metrics.state_cache_bytes.set_function(self.cache_bytes)
        metrics.state_users.set_function(self.users)
        metrics.state_disk_bytes.set_function(self.disk_bytes)
        metrics.state_cache_reads.watch("hit", lambda: self._hits + sum(s.hits for s in self.stores.values()))
        metrics.state_cache_reads.watch(
            "miss", lambda: self._misses + sum(s.misses for s in self.stores.values())
        )

    # ── the coalesce step's view ────────────────────────────────────────────────────────
    def extend(self, user_id: int, new_items: list[tuple[int, int]], partition: int) -> tuple[int, ...]:
        if not self.durable:
            return self._memory.extend(user_id, new_items)
        store = self._serving(partition)
        if store is None:
            return self._scratch.extend(user_id, new_items)
        return store.extend(user_id, new_items)

    def _serving(self, partition: int) -> HistoryStore | None:
        """The partition's store when its users are this member's to change."""
        store = self.stores.get(partition)
        return None if store is None or partition in self.restoring else store

    # ── the outcome join's view: a user's recommendation waiting for its outcome ────────
    def waiting(self, user_id: int, partition: int) -> bytes | None:
        """What ``set_waiting`` kept for the user (None without durable state, or without
        a history: a new user costs no read of it)."""
        store = self._serving(partition)
        if store is None or not store.has_history(user_id):
            return None
        return store.waiting(user_id) or None

    def set_waiting(self, user_id: int, partition: int, waiting: bytes) -> bool:
        """Keep it beside the user's history (empty: nothing kept); False: not kept (no
        durable state, or the partition is not this member's now)."""
        store = self._serving(partition)
        if store is None:
            return False
        store.set_waiting(user_id, waiting)
        return True

    def is_restoring(self, partition: int) -> bool:
        return partition in self.restoring

    async def persisted(self) -> None:
        """Every change made so far is in the changelog (at once without durable state)."""
        if self.writer is not None:
            await self.writer.persisted()

    # ── assignment ──────────────────────────────────────────────────────────────────────
    def assigned(self, partitions: set[int], split: set[int] | None = None) -> None:
        """Newly assigned partitions are held until restored (from where their stores got).
        ``split``: partition numbers this member holds in some input topics only (a group
        not co-partitioning: members of an earlier release): their users' state would have
        two writers, so the restore loop stops the process."""
        if not self.durable:
            return
        if split:
            self.split = split
        new = partitions - self.wanted
        self.wanted |= new
        self.restoring |= new
        self._assignments += 1
        for partition in new:
            self._assigned_in[partition] = self._assignments
            self._restore_queue.append(partition)
        self._share_cache()

    async def released(self, partitions: set[int], bound_s: float) -> None:
        """What changed in them reaches the changelog (within ``bound_s``: what does not is
        of inputs not committed, which their next owner replays), then their stores close."""
        if not self.durable:
            return
        self.wanted -= partitions
        self.restoring -= partitions
        for partition in partitions:
            self._assigned_in.pop(partition, None)
            if (task := self._restores.pop(partition, None)) is not None:
                task.cancel()
            self.metrics.state_restore_lag.labels(str(partition)).set(0)  # not this member's now
        gone = {p for p in partitions if p in self.stores}
        if gone and self.writer is not None:
            try:
                await asyncio.wait_for(self._last_round(gone), bound_s)
            except Exception as exc:  # TimeoutError included
                log.warning("last changelog round of partitions %s failed: %r", sorted(gone), exc)
        for p in gone:
            if p not in self.wanted:  # not assigned again meanwhile
                self._close(p)
        self._share_cache()

    async def _last_round(self, partitions: set[int]) -> None:
        assert self.writer is not None
        async with self.writer.lock:
            await self.writer.round(partitions)

    def _cache_share(self) -> int:
        """Each assigned partition's part of the member's cache."""
        return self.settings.cache_bytes // max(1, len(self.wanted))

    def _share_cache(self) -> None:
        share = self._cache_share()
        for store in self.stores.values():
            store.resize_cache(share)

    def _close(self, partition: int) -> None:
        store = self.stores.pop(partition)
        self._hits += store.hits
        self._misses += store.misses
        store.close()

    def _path(self, partition: int) -> Path:
        """Under the changelog's name: topologies sharing a state dir never share a store."""
        assert self.settings.dir is not None and self.changelog is not None
        return self.settings.dir / self.changelog.topic / f"partition-{partition}"

    # ── restore ─────────────────────────────────────────────────────────────────────────
    async def restore_loop(self, stop: asyncio.Event) -> None:
        """Restores the partitions assigned, each on its own task (one that cannot progress
        holds only itself; a partition has one at a time: a new assignment's replaces the
        last), each consumed as soon as it is restored. A restore that failed every attempt
        stops the pipeline (Fatal); so does a failure of anything else in it."""
        self._restore_queue = sorted(self.restoring)  # a restarted loop takes up every one held
        try:
            while not stop.is_set():
                if self.split:
                    raise Fatal(
                        f"state: partitions {sorted(self.split)} are held for some input topics only: "
                        "a member of the group does not assign co-partitioned (an earlier release?)"
                    )
                while self._restore_queue:
                    partition = self._restore_queue.pop(0)
                    if partition in self.restoring:
                        if (old := self._restores.get(partition)) is not None:
                            old.cancel()
                        self._restores[partition] = asyncio.create_task(self._restore_with_retries(partition))
                await asyncio.sleep(RESTORE_IDLE_S)
                for partition, task in list(self._restores.items()):
                    if task.done():
                        del self._restores[partition]
                        if not task.cancelled() and (error := task.exception()) is not None:
                            raise (
                                error
                                if isinstance(error, Fatal)
                                else Fatal(f"state: restore failed: {error!r}")
                            )
        finally:
            tasks = list(self._restores.values())
            self._restores.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _still(self, partition: int, assignment: int) -> bool:
        """Still restoring the partition in the assignment a restore began in."""
        return partition in self.restoring and self._assigned_in.get(partition) == assignment

    async def _restore_with_retries(self, partition: int) -> None:
        attempts = self.settings.restore_attempts
        backoff = FIRST_BACKOFF_S
        assignment = self._assigned_in.get(partition, -1)
        reset = False
        attempt = 0
        while attempt < attempts:
            attempt += 1
            if not self._still(partition, assignment):
                return  # released meanwhile
            try:
                await self._restore(partition, assignment)
                return
            except ChangelogReset as why:
                if not self._still(partition, assignment):
                    return  # released meanwhile: the store is no longer this restore's to drop
                if reset:
                    raise Fatal(
                        f"state: partition {partition}: {why}, again after dropping its store"
                    ) from why
                log.warning(
                    "partition %d: %s; its store is dropped and restored from the start", partition, why
                )
                self._drop_store(partition)
                self.metrics.state_restore_failures.labels("changelog_reset").inc()
                reset, attempt = True, attempt - 1  # not a failed attempt: a fresh start
                continue
            except Exception as exc:  # the broker away, a store it cannot open (locked, disk full)
                reason = type(exc).__name__
                self.metrics.state_restore_failures.labels(reason).inc()
                if attempt == attempts:
                    raise Fatal(
                        f"state: restoring partition {partition} failed {attempts} times, last: {exc!r}"
                    ) from exc
                log.warning(
                    "partition %d: restore attempt %d of %d failed (%r); again in %.0f s",
                    partition,
                    attempt,
                    attempts,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff *= 2

    def _open(self, partition: int) -> HistoryStore:
        store = self.stores.get(partition)
        if store is None:
            s = self.settings
            store = self.stores[partition] = HistoryStore(
                self._path(partition), s.history_length, s.by_event_time, self._cache_share()
            )
        return store

    def _drop_store(self, partition: int) -> None:
        if partition in self.stores:
            self._close(partition)
        shutil.rmtree(self._path(partition), ignore_errors=True)

    async def _restore(self, partition: int, assignment: int) -> None:
        assert self.changelog is not None
        store = self._open(partition)
        reached = store.changelog_offset()
        start = 0 if reached is None else reached + 1
        began = last_said = time.monotonic()
        applied = 0
        lag = self.metrics.state_restore_lag.labels(str(partition))
        log.info(
            "partition %d: restoring users' histories from %s offset %d",
            partition,
            self.changelog.topic,
            start,
        )
        batches = self.changelog.read(partition, start, self.settings.restore_stall_s)
        async with contextlib.aclosing(batches):  # an early return closes the read's consumer now
            async for entries, end in batches:
                if not self._still(partition, assignment):
                    return  # released meanwhile: its store is closed, the next owner restores it
                store.apply_changelog([(e.key, e.value) for e in entries], entries[-1].offset)
                applied += len(entries)
                self.metrics.state_restored_records.labels(str(partition)).inc(len(entries))
                lag.set(max(0, end - entries[-1].offset - 1))
                if time.monotonic() - last_said >= PROGRESS_LOG_S:
                    last_said = time.monotonic()
                    log.info(
                        "partition %d: restored %d records, %d to go",
                        partition,
                        applied,
                        end - entries[-1].offset - 1,
                    )
        if not self._still(partition, assignment):
            return
        lag.set(0)
        self.restoring.discard(partition)
        log.info(
            "partition %d: restored %d records in %.1f s; consuming it",
            partition,
            applied,
            time.monotonic() - began,
        )

    # ── readings and the end ────────────────────────────────────────────────────────────
    def cache_bytes(self) -> int:
        return sum(s.cache_bytes for s in self.stores.values()) if self.durable else self._memory.bytes

    def users(self) -> int:
        return sum(s.users_estimate() for s in self.stores.values()) if self.durable else len(self._memory)

    def disk_bytes(self) -> int:
        return sum(s.sst_bytes() for s in self.stores.values())

    def loops(self) -> dict[str, Callable[[asyncio.Event], Awaitable[None]]]:
        """What runs beside the dataflow (supervised by the runtime)."""
        if self.writer is None:
            return {}
        writer = self.writer
        # Changelog rounds go on through the drain after a stop (the writes being drained wait
        # for them): the runtime cancels the loop once drained, so it never sees the stop.
        return {"state restores": self.restore_loop, "changelog": lambda _stop: writer.run(asyncio.Event())}

    def close(self) -> None:
        """Every store written to disk and closed (what the changelog lacks replays: it was
        not committed)."""
        for partition in list(self.stores):
            self._close(partition)
