"""An epoch's fresh audit: its topics read again from the start (`audit_topology`), beside
what the books saw."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from pipeline.audit import Ledger, audit_topology
from pipeline.topology.schema import Topology

log = logging.getLogger("soak")
AUDIT_READS = 4


async def audit_epoch(epoch: int, topology: Topology, ledger: Ledger) -> dict[str, Any]:
    books_lost = len(ledger.missing())
    result: dict[str, Any] = {
        "epoch": epoch,
        "input_topic": topology.source.topics[0],
        "books_events_in": len(ledger.inputs),
        "books_lost": books_lost,
        "reads": [],
    }
    for read in range(1, AUDIT_READS + 1):
        try:
            audit = await audit_topology(topology)
        except Exception as exc:  # the fresh read itself failed: say so and try again
            log.warning("audit read %d of epoch %d failed: %r", read, epoch, exc)
            result["reads"].append({"error": repr(exc)})
            await asyncio.sleep(2)
            continue
        result["reads"].append({"lost": audit["lost"], "events_in": audit["events_in"]})
        result.update(audit)
        if audit["lost"] == 0 or books_lost > 0:
            break
        # The books saw every input answered but a fresh read did not. Reported, and read
        # again (tests/faults/harness.py does the same); a real loss stays lost.
        log.error(
            "fresh audit of epoch %d (read %d): %d lost that the books saw answered, e.g. %s",
            epoch,
            read,
            audit["lost"],
            audit["lost_examples"],
        )
        await asyncio.sleep(2)
    if "lost" not in result:
        result["error"] = "no fresh read of the topics succeeded"
    log.info("epoch %d audit: %s", epoch, orjson.dumps(result).decode())
    return result
