"""Soak: the embedded stack under steady load with random faults, ending with an audit.

Starts the embedded broker (Tansu) and Triton, runs two `pipeline run` workers in one group
on fresh topics, feeds synthetic events at ``--rate`` and keeps the books from the output
and dead-letter topics (as `pipeline dev` does). Every ``--fault-every`` seconds (drawn in a
range) one fault, drawn at random from a shuffled deck of all of them (seeded with
``--seed``, printed), is made and its recovery waited for before the next one:

- Triton SIGKILLed, restarted 10 s later;  Triton SIGSTOPped 8 s (the server process only);
- the broker SIGSTOPped 8 s;
- a worker SIGKILLed, a replacement started 3 s later;
- a third worker joins, runs 20 s, leaves with SIGTERM;
- bad inputs: malformed JSON, records with a header key that is not UTF-8 (the client cannot
  decode them) and a 1.2 MB record.

A round's recovery is the time from the fault's end until every input produced before that
end is answered (a recommendation or a dead letter). The embedded broker slows with every
batch it stores (docs/embedded_broker.md): when its CPU over a quiet interval
has grown by ``--recycle-growth`` of a core (or the epoch is older than ``--recycle-every``
minutes), the soak stops feeding, waits for every event to be answered, stops the workers,
audits the epoch, restarts the broker empty and goes on with fresh topics and new workers.

At the end every epoch's topics are read afresh (`pipeline.audit.audit_topology`). Prints a
markdown table (one row per round, then the totals) and the workers' resident memory, writes
a JSON summary, the table and (with matplotlib) a PNG into the run's directory. Exit 1 when
an event was lost, a worker crashed or hung on SIGTERM, a round did not recover within
``--recovery-timeout`` or the run stopped early; flags (exit 0) a round's duplicates above 5 s
of traffic and a worker whose RSS grew by more than 20 % after its warm-up.

    python scripts/soak --minutes 60 [--seed 7] [--rate 100] [--fault-every 60-90]
    python scripts/soak --minutes 4 --seed 1      # faults every 20-30 s
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline.devstack.stack import EmbeddedStack

from .report import markdown, plot
from .run import Soak
from .summary import summarise

log = logging.getLogger("soak")


def fault_range(text: str | None, minutes: float) -> tuple[float, float]:
    """LO-HI seconds between faults; by default 60-90 s, scaled down for runs under 15 min
    (at least 20-30 s) so a short run still sees several kinds."""
    if text:
        lo, _, hi = text.partition("-")
        low, high = float(lo), float(hi or lo)
        if not 0 < low <= high:
            raise argparse.ArgumentTypeError(f"--fault-every {text}: want LO-HI with 0 < LO <= HI")
        return low, high
    scale = min(1.0, minutes / 15)
    low = max(20.0, 60 * scale)
    return low, max(low + 10, 90 * scale)


async def soak_main(args: argparse.Namespace, stack: EmbeddedStack, run_dir: Path) -> dict[str, Any]:
    soak = Soak(args, stack, run_dir)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if soak.stop.is_set() and main_task is not None:
            main_task.cancel()  # a second signal: stop now (the finally blocks stop everything)
            return
        log.warning("stopping: the run ends after the current round, then drains and audits")
        soak.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            await soak.run()
        except Exception as exc:
            log.exception("the soak stopped early")
            soak.aborted = f"{type(exc).__name__}: {exc}"
            try:
                await soak.finish()
            except Exception:
                log.exception("and its drain and audit failed")
        return summarise(soak)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        soak.crew.stop_all()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the load (the drain follows)")
    parser.add_argument(
        "--seed", type=int, default=None, help="of the faults and the events (default: random)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument(
        "--fault-every", default=None, help="LO-HI seconds (default 60-90, less under 15 min)"
    )
    parser.add_argument(
        "--memory-state",
        action="store_true",
        help="users' histories in memory only (state.dir unset); default: durable, a state dir per worker",
    )
    parser.add_argument("--workdir", type=Path, default=Path("var/soak"))
    parser.add_argument("--model-repository", type=Path, default=Path("var/devstack/model_repository"))
    parser.add_argument("--recycle-growth", type=float, default=0.15, help="as in `pipeline dev`")
    parser.add_argument(
        "--recycle-every", type=float, default=0.0, help="minutes; also recycle by age (0: off)"
    )
    parser.add_argument("--recovery-timeout", type=float, default=180.0, help="seconds, per round")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds, at the end")
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of a worker's life before RSS counts"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON summary (default: in the run's dir)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    args.fault_every = fault_range(args.fault_every, args.minutes)
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (args.workdir / f"run-{stamp}-seed{args.seed}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: seed {args.seed}, {args.minutes:g} min, rate {args.rate:g}/s, run dir {run_dir}", flush=True
    )
    stack = EmbeddedStack.start(args.workdir, args.model_repository)
    try:
        summary = asyncio.run(soak_main(args, stack, run_dir))
    finally:
        stack.stop()
    table = markdown(summary)
    print(table, flush=True)
    (run_dir / "soak.md").write_text(table)
    out = args.out or run_dir / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"summary: {out}")
    png = run_dir / "soak.png"
    print(f"plot: {png}" if plot(summary, png) else "plot: matplotlib is not installed, no PNG")
    return 1 if summary["failures"] else 0
