"""`pipeline run` as a process: signals, the operations endpoint, the garbage collector's
settings and the hard-exit backstop around one runtime."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from pathlib import Path

from aiokafka.errors import KafkaConnectionError

from pipeline import wiring
from pipeline.errors import BrokerAway
from pipeline.topology.loader import load_topology

log = logging.getLogger("pipeline")

# Exit codes of `pipeline run`: 0 drained and committed; 2 bad configuration, or nothing
# answering at start (the broker within broker.start_timeout_ms, Triton within
# model.start_timeout_ms); 3 stopped with work unfinished or uncommitted (it is replayed:
# nothing is lost); 128 + signal number when a second signal cut the stop short.
EXIT_UNCLEAN_STOP = 3
SHUTDOWN_MARGIN_S = 5.0  # past drain_timeout_ms: closing the clients, then a hard exit


async def _serve(topology_path: Path) -> int:
    from pipeline.health import OpsServer
    from pipeline.runtime import PipelineRuntime

    topology = load_topology(topology_path)
    runtime = PipelineRuntime(topology)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    budget_s = runtime.settings.drain_timeout_s + SHUTDOWN_MARGIN_S

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.error("second %s: exiting now, without draining", sig.name)
            os._exit(128 + sig.value)
        log.info("%s: draining for at most %.0f s (send it again to exit at once)", sig.name, budget_s)
        stop.set()
        # The last resort if a close step ignores its own bound: the stop never takes longer.
        loop.call_later(budget_s, _hard_exit, budget_s)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    ops = None
    if (endpoint := wiring.operations_endpoint(topology)) is not None:
        ops = OpsServer(runtime.metrics, runtime, endpoint.port, endpoint.bind)
        await ops.start()
    try:
        await runtime.run(stop)
    except KafkaConnectionError as exc:
        if runtime.is_started():
            raise
        # The broker answered the start's first check, then stopped answering before the
        # clients bootstrapped: the same one line as when it never answered.
        servers = topology.broker.bootstrap_servers
        raise BrokerAway(
            f"broker.bootstrap_servers: {servers} stopped answering during the start ({exc})"
        ) from None
    finally:
        if ops is not None:
            await ops.stop()
    return 0 if runtime.clean_stop else EXIT_UNCLEAN_STOP


def _hard_exit(budget_s: float) -> None:
    log.error("stop took longer than %.0f s: exiting with work unfinished (it is replayed)", budget_s)
    logging.shutdown()
    os._exit(EXIT_UNCLEAN_STOP)


# The cyclic garbage collector's first generation runs every 700 container allocations by
# default: thousands of small tuples per fetch made it walk the in-flight events many times
# a fetch (its cost: docs/benchmarks.md). Reference counting still frees everything acyclic
# at once; cycles wait a little longer.
GC_FIRST_GENERATION = 50_000


def _tune_gc() -> None:
    """Start-up objects (modules, the topology) are frozen out of every collection, and the
    first generation is collected every GC_FIRST_GENERATION allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION, 20, 20)


def serve(topology_path: Path) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit code."""
    _tune_gc()
    return asyncio.run(_serve(topology_path))
