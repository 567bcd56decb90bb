"""The real runtime, in process, on the in-memory ends: no broker, no Triton.

    async with running(topology(), records) as run:
        await run.settled()
    assert run.sink.recommendations() ...

Everything between the ends is the production code: parse, window, coalesce, batch, lanes,
dispatcher and codec, enrich, the partitions' owner, commits, watchdog and control loops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.ends import Ends
from pipeline.events import RawRecord
from pipeline.metrics import Metrics
from pipeline.runtime import PipelineRuntime
from pipeline.sources.partitions import Partitions
from pipeline.testing.builders import SHIPPED_TOPOLOGY
from pipeline.testing.ends import CapturedChangelog, CaptureSink, ListSource
from pipeline.testing.fake_triton import FakeTriton
from pipeline.topology.schema import Topology

SETTLE_POLL_S = 0.01
STOP_MARGIN_S = 5.0  # past the drain bound: a stop that takes longer is a hang


async def _no_broker_to_check() -> bool:
    return True


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` merged into ``base`` key by key (mappings recursively; lists and values
    replace)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def topology(**sections: Any) -> Topology:
    """The shipped recommender topology, each keyword merged into its section (nested
    mappings key by key, lists and values replaced), with commits and drains quick enough
    for tests."""
    data: dict[str, Any] = yaml.safe_load(SHIPPED_TOPOLOGY.read_text())
    data["source"].update(commit_interval_ms=20, drain_timeout_ms=2_000)
    return Topology.model_validate(_merge(data, sections))


@dataclass
class InProcessRun:
    runtime: PipelineRuntime
    source: ListSource
    sink: CaptureSink
    triton: FakeTriton
    changelog: CapturedChangelog
    task: asyncio.Task[None] = field(repr=False)

    @property
    def finished(self) -> int:
        return self.runtime.partitions.finished

    async def until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``condition()``; the runtime's own failure as soon as it stops, or
        TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.task.done():
                self.task.result()  # its failure, as it raised
                raise RuntimeError("the pipeline stopped before the condition was reached")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not reached within {timeout_s} s: {condition}")
            await asyncio.sleep(SETTLE_POLL_S)

    def inputs(self) -> list[tuple[str, int, int]]:
        return [(r.topic, r.partition, r.offset) for log in self.source.logs.values() for r in log]

    def lost(self) -> list[tuple[str, int, int]]:
        """Inputs with neither a recommendation nor a dead letter."""
        answers = self.sink.answers()
        return [coord for coord in self.inputs() if answers[coord] == 0]

    def duplicates(self) -> int:
        """Outputs beyond the first that name the same input."""
        return sum(count - 1 for count in self.sink.answers().values() if count > 1)

    def committed_everything(self) -> bool:
        logs = self.source.logs
        return all(self.source.committed.get(key) == len(log) for key, log in logs.items())

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Every record added so far finished and committed."""
        await self.until(
            lambda: (
                self.finished >= self.source.total - self.source.done_before and self.committed_everything()
            ),
            timeout_s,
        )


@contextlib.asynccontextmanager
async def running(
    topology: Topology,
    records: Iterable[RawRecord] = (),
    triton: FakeTriton | None = None,
    metrics: Metrics | None = None,
    ready_timeout_s: float = 20.0,
    after: InProcessRun | None = None,
    held_restores: Collection[int] | None = (),
) -> AsyncIterator[InProcessRun]:
    """The runtime running on a ListSource of ``records``, a CaptureSink and ``triton``;
    stopped (drained, committed) on leaving. A failure of the runtime, or a stop that
    outlasts the drain bound, is raised on leaving. ``after``: a new member (a restart, a
    deploy) on what an earlier run left: its inputs and commits, what it wrote (the
    changelog among it). ``held_restores``: partitions (None: all) whose restores wait
    until ``run.changelog.release_reads()``."""
    server = triton or FakeTriton(top_k=topology.model.top_k)
    sources: list[ListSource] = []
    sinks: list[CaptureSink] = []
    changelogs: list[CapturedChangelog] = []

    def ends(t: Topology, partitions: Partitions, m: Metrics) -> Ends:
        if after is None:
            sources.append(ListSource(partitions, records, t.source.max_poll_records))
            sinks.append(CaptureSink(t.sink.dead_letter_topic))
        else:
            earlier = [r for log in after.source.logs.values() for r in log]
            sources.append(
                ListSource(
                    partitions, [*earlier, *records], t.source.max_poll_records, after.source.committed
                )
            )
            sinks.append(CaptureSink(t.sink.dead_letter_topic, after.sink.records))
        changelogs.append(CapturedChangelog(sinks[0], t.changelog_topic, held=held_restores))
        return Ends(sources[0], sinks[0], server, _no_broker_to_check, changelogs[0])

    runtime = PipelineRuntime(topology, ends=ends, metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop), name="pipeline-in-process")
    stop_bound_s = runtime.settings.drain_timeout_s + STOP_MARGIN_S
    try:
        ready = asyncio.create_task(runtime.ready.wait())
        await asyncio.wait({task, ready}, timeout=ready_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # the start's failure, as it raised
            raise RuntimeError("the pipeline stopped during its start")
        if not runtime.ready.is_set():
            raise TimeoutError(f"the pipeline was not ready within {ready_timeout_s} s")
        yield InProcessRun(runtime, sources[0], sinks[0], server, changelogs[0], task)
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=stop_bound_s)
        if not done:
            task.cancel()
            await asyncio.wait({task})
    if not done:
        raise TimeoutError(f"the pipeline did not stop within {stop_bound_s} s")
    task.result()


async def run_to_end(
    topology: Topology,
    records: Iterable[RawRecord],
    triton: FakeTriton | None = None,
    timeout_s: float = 10.0,
) -> InProcessRun:
    """Run until every record is finished and committed, then stop; the stop must be clean
    (everything drained and committed)."""
    async with running(topology, records, triton) as run:
        await run.settled(timeout_s)
    if not run.runtime.clean_stop:
        raise AssertionError("the pipeline stopped with work unfinished or uncommitted")
    return run
