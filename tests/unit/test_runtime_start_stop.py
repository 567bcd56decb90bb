"""A stop (SIGTERM) while the runtime checks the broker at start ends the start at once
with a clean exit: the check can take its timeout per bootstrap server. A real listener
that accepts connections and never answers (a broker hung at start)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.runtime import PipelineRuntime
from pipeline.stopping import unless_stopped
from pipeline.topology.schema import Topology


def start_stop_topology(bootstrap: str = "127.0.0.1:9092") -> Topology:
    """A pipeline whose Triton (port 9) never answers: only the start is under test."""
    return Topology.model_validate(
        {
            "name": "start-stop",
            "broker": {"bootstrap_servers": bootstrap},
            "source": {"topics": ["in"], "group_id": "g"},
            "model": {"name": "m", "url": "127.0.0.1:9"},
            "sink": {"topic": "out", "dead_letter_topic": "dlq"},
        }
    )


async def test_a_stop_during_the_broker_check_ends_the_start_at_once() -> None:
    connected = asyncio.Event()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # never answers; EOF once the check's connection is closed
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    topology = start_stop_topology(f"127.0.0.1:{port}")
    runtime = PipelineRuntime(topology)
    stop = asyncio.Event()
    try:
        run = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(connected.wait(), 5)  # the check is waiting on the broker
        stop.set()
        stopped_at = time.monotonic()
        await asyncio.wait_for(run, 5)  # the check alone would take CHECK_TIMEOUT_S + 1 = 11 s
        assert time.monotonic() - stopped_at < 2
        assert runtime.clean_stop and not runtime.ready.is_set()
        await asyncio.wait_for(closed.wait(), 2)  # its connection closed, not left behind
    finally:
        server.close()
        await server.wait_closed()


async def test_any_start_step_a_stop_overtakes_is_cancelled_not_waited_out() -> None:
    """Joining the group takes as long as the broker takes: the same race ends it."""
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def joining_for_ever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.1, stop.set)
    assert await asyncio.wait_for(unless_stopped(joining_for_ever(), stop), 2) is False
    assert cancelled.is_set()

    async def refused() -> None:
        raise RuntimeError("refused")

    stop.clear()
    with pytest.raises(RuntimeError, match="refused"):  # its own error, as it raised it
        await unless_stopped(refused(), stop)


async def test_a_contract_mismatch_found_while_joining_the_group_is_the_exit(monkeypatch) -> None:
    """Triton answered only after the start went on to join the group, and the model does
    not fit: the join is cancelled and run() raises the mismatch (exit 2), not a clean 0."""
    from pipeline import kafka_clients
    from pipeline import runtime as runtime_module
    from pipeline.triton.contract import ModelContractError

    async def broker_fine(*_args: object, **_kwargs: object) -> bool:
        return True

    monkeypatch.setattr(kafka_clients, "check_connection", broker_fine)
    monkeypatch.setattr(runtime_module, "CONTRACT_WAIT_S", 0.05)
    topology = start_stop_topology()
    runtime = PipelineRuntime(topology)
    contract_answered = asyncio.Event()

    async def contract_later() -> None:
        await contract_answered.wait()
        raise ModelContractError("model m: HISTORY is [8], the topology sends [16]")

    async def joining() -> None:
        contract_answered.set()  # Triton answers while the group join is under way
        await asyncio.sleep(3600)

    monkeypatch.setattr(runtime, "check_model", contract_later)
    monkeypatch.setattr(runtime, "_start_clients", joining)
    with pytest.raises(ModelContractError, match="HISTORY"):
        await asyncio.wait_for(runtime.run(asyncio.Event()), 5)
