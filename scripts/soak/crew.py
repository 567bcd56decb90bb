"""The soak's workers: the group's members (kept at WORKERS), a third one while it stays,
and every worker ever started, for the report and the final stop. A worker that exits by
itself is a crash; one that outlives its SIGTERM budget hung."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from pipeline.devstack.worker import PipelineProcess
from pipeline.topology.schema import Topology

from .records import WorkerLife

log = logging.getLogger("soak")

WORKERS = 2  # members of the group, kept at this number
WORKER_START_S = 120.0


class Crew:
    def __init__(self, run_dir: Path, now_s: Callable[[], float]) -> None:
        self.run_dir = run_dir
        self.now_s = now_s
        self.workers: list[WorkerLife] = []  # the group's members, kept at WORKERS
        self.extra: WorkerLife | None = None  # a third worker while it stays
        self.lives: list[WorkerLife] = []  # every worker started, for the report and the stop
        self.crashes: list[str] = []
        self.hung: list[str] = []  # workers SIGKILLed after not stopping on SIGTERM
        self.seq = 0
        self.log_read: dict[str, int] = {}  # bytes of each worker's log read for errors

    def live(self) -> list[WorkerLife]:
        return [*self.workers, *([self.extra] if self.extra is not None else [])]

    async def start(self, role: str, topology: Topology, epoch: int) -> WorkerLife:
        self.seq += 1
        name = f"e{epoch}-w{self.seq}"
        if topology.state.dir is not None:  # a disk of its own: a replacement starts from the changelog
            state = topology.state.model_copy(update={"dir": topology.state.dir / name})
            topology = topology.model_copy(update={"state": state})
        proc = PipelineProcess(topology, self.run_dir / "workers", name)
        life = WorkerLife(name, epoch, role, proc, self.now_s())
        self.lives.append(life)  # before it starts: the final stop must find it
        await asyncio.to_thread(proc.start_ready, WORKER_START_S)
        life.sample(self.now_s())
        return life

    async def stop(self, life: WorkerLife, why: str) -> None:
        """SIGTERM: the worker drains and commits; SIGKILL if it outlives its stop budget."""
        life.sample(self.now_s())
        proc = life.proc
        grace = proc.stop_grace_s
        await asyncio.to_thread(proc.stop, grace)
        life.finish(self.now_s(), why)
        if self.extra is life:
            self.extra = None
        if life in self.workers:
            self.workers.remove(life)
        if life.exit_code is not None and life.exit_code < 0:  # killed by ChildProcess.stop
            msg = f"{life.name} did not stop within {grace:.0f} s of SIGTERM ({life.end})"
            log.error("%s; last lines of %s:\n%s", msg, proc.log_path, proc.tail())
            self.hung.append(msg)
        elif life.exit_code not in (0, None):
            log.warning("%s stopped uncleanly (%s): its unfinished work is replayed", life.name, life.end)

    async def check(self, topology: Topology, epoch: int) -> None:
        """A worker that exited by itself is a crash: recorded, and a member is replaced."""
        for life in self.live():
            if life.proc.alive():
                continue
            life.finish(self.now_s(), "CRASHED")
            msg = f"t={self.now_s():.0f}s {life.name} (pid {life.proc.pid}) exited by itself ({life.end})"
            log.error("%s; last lines of %s:\n%s", msg, life.proc.log_path, life.proc.tail(40))
            self.crashes.append(msg)
            if life is self.extra:
                self.extra = None
            else:
                self.workers.remove(life)
                self.workers.append(await self.start("replacement", topology, epoch))

    def sample(self) -> dict[str, float]:
        """Each live worker's RSS now, MB by name."""
        now = self.now_s()
        rss: dict[str, float] = {}
        for life in self.live():
            mb = life.sample(now)
            if mb is not None:
                rss[life.name] = round(mb, 1)
        return rss

    def rss_text(self) -> str:
        return ", ".join(
            f"{life.name} {life.rss[-1][1]:.0f}" for life in self.live() if life.rss and life.ended_s is None
        )

    def new_errors(self) -> list[str]:
        """The ERROR lines the workers logged since the last call (a stall, a record that
        cannot be decoded, a crash), trimmed."""
        found = []
        for life in self.lives:
            try:
                with open(life.proc.log_path, "rb") as f:
                    f.seek(self.log_read.get(life.name, 0))
                    text = f.read()
            except OSError:
                continue
            self.log_read[life.name] = self.log_read.get(life.name, 0) + len(text)
            for line in text.decode(errors="replace").splitlines():
                _, sep, message = line.partition(" ERROR ")
                if sep:
                    found.append(f"{life.name} {line[11:19]} {message[:140]}")
        return found

    def stop_all(self) -> None:
        """Every worker started, by PID (the stack is stopped by the caller)."""
        for life in self.lives:
            life.proc.stop(life.proc.stop_grace_s)
