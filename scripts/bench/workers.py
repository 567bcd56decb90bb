"""A worker process of the bench (`python scripts/bench --_worker KIND --_spec JSON`): it runs
one loop, writes its status file, then stays until SIGTERM so that the parent reads its CPU
and peak memory as it reads the pipeline's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .baselines import hand_worker, naive_worker
from .ceiling import ceiling_worker
from .config import now_ms


def write_status(path: Path, status: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    tmp.replace(path)


WORKERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "naive": naive_worker,
    "hand": hand_worker,
    "ceiling": ceiling_worker,
}


def worker_main(kind: str, spec: dict[str, Any]) -> int:
    """Run one worker, write its status file, then stay (so the parent reads its peak RSS
    and CPU like the pipeline's) until SIGTERM."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.create_task(WORKERS[kind](spec))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
        status = work.result()
        status["finished_ms"] = now_ms()
        write_status(Path(spec["status"]), status)
        await stopped

    asyncio.run(run())
    return 0
