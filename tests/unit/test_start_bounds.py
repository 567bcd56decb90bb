"""The start's bounded waits (issue 27, start errors in one line): the broker first, for at
most ``broker.start_timeout_ms``, then Triton for at most ``model.start_timeout_ms``; past
either, one line naming the key, the address and what was tried (exit 2). The real-stack
counterpart: tests/integration/test_start_errors.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
import yaml
from aiokafka.errors import KafkaConnectionError

from pipeline import kafka_clients, model_check, topics_check
from pipeline.errors import BrokerAway
from pipeline.model_check import ModelUnreachable, StartBound, checked_model
from pipeline.runtime import PipelineRuntime
from pipeline.topology.schema import Broker
from pipeline.triton.contract import BatchBound, ModelSignature, ModelUnconfirmed, ServedModel, Tensor
from pipeline.wiring import ModelCheck
from tests.unit.test_runtime_start_stop import start_stop_topology

URL = "127.0.0.1:2"
CHECK = ModelCheck(URL, None, ModelSignature("recommender", "", 16, 10), BatchBound("batch.max_size", 128))
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2:\n"
    "  Failed to connect to remote host: Connection refused"
)


def unavailable(details: str = REFUSED) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )


def fitting_model() -> ServedModel:
    return ServedModel(
        "recommender",
        {"USER_ID": Tensor("INT64", (-1, 1)), "HISTORY": Tensor("INT64", (-1, 16))},
        {"ITEM_IDS": Tensor("INT64", (-1, 10)), "SCORES": Tensor("FP32", (-1, 10))},
        256,
    )


class Scripted:
    """An InferenceServer whose served_model answers each call as ``answers`` says (an
    exception to raise, "hang" to never answer, or the fitting model), the last repeating."""

    def __init__(self, *answers: BaseException | str) -> None:
        self.answers, self.calls = answers, 0

    async def served_model(self, name: str, version: str) -> ServedModel:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await asyncio.sleep(3600)
        return fitting_model()


def bound(seconds: float) -> StartBound:
    return StartBound(asyncio.get_running_loop().time() + seconds, seconds)


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_check, "RETRY_S", 0.05)
    monkeypatch.setattr(kafka_clients, "RECHECK_PAUSE_S", 0.05)


# --- Triton: model.start_timeout_ms ----------------------------------------------------------


async def test_triton_not_answering_within_the_start_timeout_is_one_line_naming_model_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Scripted(unavailable())
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(ModelUnreachable) as raised:
        await checked_model(server, CHECK, bound(0.3))  # type: ignore[arg-type]
    assert 0.3 <= time.monotonic() - started < 0.6
    assert raised.value.exit_code == 2
    assert str(raised.value) == (
        f"model.url: Triton at {URL} did not serve model 'recommender' (version latest) within 0.3 s "
        f"(model.start_timeout_ms): asked {server.calls} times, the last answer UNAVAILABLE: failed to "
        "connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2: Failed to connect to remote "
        "host: Connection refused"
    )
    assert server.calls >= 5
    # The wait itself says what it waits for: the key, the address, what came back, how long.
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pipeline.model_check"]
    assert warning.startswith(f"model.url: Triton at {URL} has not served model 'recommender'")
    assert "UNAVAILABLE" in warning and "(model.start_timeout_ms 0.3 s), then exit 2" in warning


async def test_a_long_wait_warns_by_elapsed_time_not_by_attempts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning every WARN_EVERY_S however many attempts fit in it (15 fast refusals are
    30 s; 15 attempts that each take seconds are minutes)."""
    monkeypatch.setattr(model_check, "WARN_EVERY_S", 0.15)
    server = Scripted(unavailable())
    with caplog.at_level(logging.WARNING), pytest.raises(ModelUnreachable):
        await checked_model(server, CHECK, bound(0.5))  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.name == "pipeline.model_check"]
    assert server.calls >= 8 and 3 <= len(warnings) <= 4, (server.calls, len(warnings))


async def test_an_attempt_that_never_answers_is_cut_at_the_bound() -> None:
    started = time.monotonic()
    with pytest.raises(
        ModelUnreachable, match=r"asked 1 times, the last answer none \(the attempt under way"
    ):
        await checked_model(Scripted("hang"), CHECK, bound(0.2))  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.5


async def test_triton_answering_within_the_start_timeout_is_no_error() -> None:
    server = Scripted(unavailable(), unavailable(), "model")
    served = await checked_model(server, CHECK, bound(5))  # type: ignore[arg-type]
    assert served.name == "recommender" and server.calls == 3


async def test_a_model_unconfirmed_at_the_bound_stays_exit_1() -> None:
    """Not certain to be a misconfiguration (a gateway's passing fault): exit 2 is kept for
    what is certain, the bound ends the wait with what the last answer said."""
    unconfirmed = ModelUnconfirmed("model.name: 'recommender': ServerReady answered UNKNOWN")
    with pytest.raises(ModelUnconfirmed) as raised:
        await checked_model(Scripted(unavailable(), unconfirmed), CHECK, bound(0.2))  # type: ignore[arg-type]
    assert raised.value.exit_code == 1


async def test_the_model_check_failing_after_the_group_join_began_is_the_exit_without_a_graph_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past CONTRACT_WAIT_S the start joins the group while the check goes on; its
    ModelUnreachable ends the join and is run()'s error, said once (by the CLI), not logged
    as a failed graph first."""
    from pipeline import runtime as runtime_module

    async def broker_fine(*_args: object, **_kwargs: object) -> bool:
        return True

    monkeypatch.setattr(kafka_clients, "check_connection", broker_fine)
    monkeypatch.setattr(topics_check, "check_topics", broker_fine)
    monkeypatch.setattr(runtime_module, "CONTRACT_WAIT_S", 0.05)
    runtime = PipelineRuntime(start_stop_topology())

    async def unreachable_later() -> NoReturn:
        await asyncio.sleep(0.2)
        raise ModelUnreachable("model.url: Triton at 127.0.0.1:9 did not serve ...")

    async def joining() -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(runtime, "check_model", unreachable_later)
    monkeypatch.setattr(runtime, "_start_clients", joining)
    with caplog.at_level(logging.WARNING), pytest.raises(ModelUnreachable):
        await asyncio.wait_for(runtime.run(asyncio.Event()), 5)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records), caplog.text
    [joining_line] = [r.getMessage() for r in caplog.records if r.name == "pipeline.runtime"]
    assert joining_line.startswith("model.url: Triton at 127.0.0.1:9 has not served the model within 0 s")
    assert "exit 2 if not within model.start_timeout_ms, 300 s" in joining_line


async def test_check_model_bounds_the_wait_by_the_topologys_start_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topology = start_stop_topology()
    topology = topology.model_copy(
        update={"model": topology.model.model_copy(update={"start_timeout_ms": 200})}
    )
    runtime = PipelineRuntime(topology)
    monkeypatch.setattr(runtime, "pool", Scripted(unavailable()))
    with pytest.raises(ModelUnreachable, match=r"^model\.url: Triton at 127\.0\.0\.1:9 .* within 0\.2 s"):
        await asyncio.wait_for(runtime.check_model(), 2)


# --- the broker: broker.start_timeout_ms -----------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_broker_answering_within_its_bound_is_one_line_naming_each_address(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def no_verdict(*_args: object, **_kwargs: object) -> bool:
        nonlocal calls
        calls += 1
        return False

    monkeypatch.setattr(kafka_clients, "check_connection", no_verdict)
    port = closed_port()
    servers = f"127.0.0.1:{port},localhost"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(BrokerAway) as raised:
        # built unchecked: the schema refuses an address without a port, this reader must not
        await kafka_clients.wait_for_broker(Broker.model_construct(bootstrap_servers=servers), 0.3)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert raised.value.exit_code == 2
    assert str(raised.value) == (
        f"broker.bootstrap_servers: nothing answers at 127.0.0.1:{port} (connection refused: nothing "
        "listening); waited 0.3 s (broker.start_timeout_ms)"
    )
    assert calls >= 3  # asked again while the bound lasted (a broker restarting)
    assert [r.getMessage() for r in caplog.records] == [  # one warning, not one per attempt
        f"broker.bootstrap_servers: nothing answers at {servers} yet: waiting up to 0.3 s "
        "(broker.start_timeout_ms)"
    ]


async def test_a_broker_answering_within_its_bound_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([False, False, True])

    async def later(*_args: object, **_kwargs: object) -> bool:
        return next(answers)

    monkeypatch.setattr(kafka_clients, "check_connection", later)
    await kafka_clients.wait_for_broker(Broker(), 5)


async def test_a_check_hanging_past_the_bound_is_cut_at_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hangs(*_args: object, **_kwargs: object) -> bool:
        await asyncio.sleep(3600)
        return True

    monkeypatch.setattr(kafka_clients, "check_connection", hangs)
    started = time.monotonic()
    with pytest.raises(BrokerAway):
        await kafka_clients.wait_for_broker(Broker(bootstrap_servers=f"127.0.0.1:{closed_port()}"), 0.2)
    assert time.monotonic() - started < 1.0


async def test_why_nothing_answers_as_a_tcp_connection_tells() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    listening = server.sockets[0].getsockname()[1]
    closed = closed_port()
    try:
        said = await kafka_clients.nothing_answers(f"127.0.0.1:{listening}, 127.0.0.1:{closed}")
    finally:
        server.close()
        await server.wait_closed()
    assert said == (
        f"127.0.0.1:{listening} (it takes TCP connections, but no Kafka answer came), "
        f"127.0.0.1:{closed} (connection refused: nothing listening)"
    )
    assert await kafka_clients.nothing_answers("kafka") == "kafka (no host:port in it)"
    # the schema refuses such a port; a Broker built unchecked still gets one line, no OverflowError
    assert await kafka_clients.nothing_answers("127.0.0.1:99999") == (
        "127.0.0.1:99999 (not an address: connect(): port must be 0-65535.)"
    )


async def test_the_broker_going_away_during_the_start_is_the_same_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It answered the first check, then a client's bootstrap failed: BrokerAway (exit 2),
    not aiokafka's traceback."""
    from pipeline import serve

    async def fails(self: Any, stop: asyncio.Event | None = None) -> NoReturn:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

    monkeypatch.setattr(PipelineRuntime, "run", fails)
    path = tmp_path / "topology.yaml"
    data = start_stop_topology("127.0.0.1:1").model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump({**data, "operations": {"metrics_port": 0}}))
    with pytest.raises(BrokerAway) as raised:
        await serve._serve(path)
    assert str(raised.value) == (
        "broker.bootstrap_servers: 127.0.0.1:1 stopped answering during the start "
        "(KafkaConnectionError: Unable to bootstrap from [('127.0.0.1', 1)])"
    )
