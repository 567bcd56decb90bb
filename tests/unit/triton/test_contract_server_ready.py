"""A model the server says it does not have (NOT_FOUND) is waited for only while the server
may still be loading it: ServerReady false, or not answerable *yet* (UNAVAILABLE,
DEADLINE_EXCEEDED). When ServerReady cannot be asked at all (a gateway that does not route
it, no permission), a misspelt name would be waited for forever: it is taken as missing
(exit 2), saying why. A real gRPC server in-process, in the gateway's place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from pipeline import model_check
from pipeline.model_check import checked_model
from pipeline.triton.codec import ModelSignature
from pipeline.triton.contract import BatchBound, ModelContractError, ModelUnconfirmed, fetch_served_model
from pipeline.wiring import ModelCheck


class Gateway(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Knows no model; answers ServerReady with ``ready_code`` (None: ready=False; "slow":
    answers too late; "unrouted": the servicer's default, UNIMPLEMENTED)."""

    def __init__(self, ready_code: grpc.StatusCode | str | None) -> None:
        self.ready_code = ready_code

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}'")

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.ready_code == "unrouted":
            return await super().ServerReady(request, context)  # type: ignore[misc]
        if self.ready_code == "slow":
            await asyncio.sleep(5)
        elif isinstance(self.ready_code, grpc.StatusCode):
            await context.abort(self.ready_code, "not for you")
        return service_pb2.ServerReadyResponse(ready=False)


@contextlib.asynccontextmanager
async def gateway(ready_code: grpc.StatusCode | str | None) -> AsyncIterator[Any]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Gateway(ready_code), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=None)


@pytest.mark.parametrize(
    ("ready_code", "named"),
    [
        ("unrouted", "UNIMPLEMENTED"),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED: not for you"),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED: not for you"),
    ],
)
async def test_a_server_that_cannot_be_asked_whether_it_is_ready_has_no_such_model(
    ready_code: grpc.StatusCode | str, named: str
) -> None:
    async with gateway(ready_code) as stub:
        with pytest.raises(ModelContractError) as caught:
            await fetch_served_model(stub, "recomender", "", timeout_s=2)
    message = str(caught.value)
    assert message.startswith("model.name: 'recomender' (version latest): Request for unknown model")
    assert "ServerReady could not be asked" in message and named in message, message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("ready_code", [None, grpc.StatusCode.UNAVAILABLE, "slow"])
async def test_a_server_not_ready_yet_is_waited_for(ready_code: grpc.StatusCode | str | None) -> None:
    async with gateway(ready_code) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # the caller's wait-and-retry path
            await fetch_served_model(stub, "recommender", "", timeout_s=0.5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- through the start's check (model_check.checked_model): what waits, what exits 1, what 2

SIG = ModelSignature("recommender", "", history_length=16, top_k=10)


def _metadata(history: int) -> service_pb2.ModelMetadataResponse:
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name="recommender",
        inputs=[
            tensor(name="USER_ID", datatype="INT64", shape=[-1, 1]),
            tensor(name="HISTORY", datatype="INT64", shape=[-1, history]),
        ],
        outputs=[
            tensor(name="ITEM_IDS", datatype="INT64", shape=[-1, 10]),
            tensor(name="SCORES", datatype="FP32", shape=[-1, 10]),
        ],
    )


class ScriptedGateway(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """A gateway in front of Triton: ModelMetadata answers each call as ``metadata`` says
    (a status code to abort with, or the model, the last entry repeating); ServerReady
    with ``ready`` (a status code, or a bool); ModelConfig with max_batch_size 256."""

    def __init__(self, metadata: list[grpc.StatusCode | int], ready: grpc.StatusCode | bool = True) -> None:
        self.metadata, self.ready, self.calls = metadata, ready, 0

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        answer = self.metadata[min(self.calls, len(self.metadata) - 1)]
        self.calls += 1
        if isinstance(answer, grpc.StatusCode):
            await context.abort(
                answer,
                "from the gateway"
                if answer != grpc.StatusCode.NOT_FOUND
                else f"Request for unknown model: '{request.name}'",
            )
        return _metadata(history=answer)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ModelConfigResponse(config=model_config_pb2.ModelConfig(max_batch_size=256))

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(self.ready, grpc.StatusCode):
            await context.abort(self.ready, "upstream connect error")
        return service_pb2.ServerReadyResponse(ready=self.ready)


class _Server:
    """The InferenceServer the start's check asks (only served_model)."""

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
        self.stub = stub

    async def served_model(self, name: str, version: str) -> Any:
        return await fetch_served_model(self.stub, name, version, timeout_s=2)


async def _checked(gateway_servicer: ScriptedGateway) -> Any:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(gateway_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        check = ModelCheck(f"127.0.0.1:{port}", None, SIG, BatchBound("batch.max_size", 128))
        return await checked_model(_Server(service_pb2_grpc.GRPCInferenceServiceStub(channel)), check)  # type: ignore[arg-type]
    finally:
        await channel.close()
        await server.stop(grace=None)


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_check, "RETRY_S", 0.05)
    monkeypatch.setattr(model_check, "UNCONFIRMED_WAIT_S", 1.0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL])
async def test_a_gateway_answering_unknown_or_internal_is_waited_for(code: grpc.StatusCode) -> None:
    gateway_servicer = ScriptedGateway([code, code, code, 16])
    served = await _checked(gateway_servicer)
    assert served.name == "recommender" and gateway_servicer.calls == 4


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL])
async def test_not_found_while_server_ready_fails_in_passing_is_retried(code: grpc.StatusCode) -> None:
    """A gateway whose backend is not registered yet: NOT_FOUND, and ServerReady answering
    UNKNOWN or INTERNAL. Whether the model is missing cannot be told yet: asked again, not
    taken as missing (that used to be exit 2)."""
    gateway_servicer = ScriptedGateway([grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, 16], ready=code)
    served = await _checked(gateway_servicer)
    assert served.name == "recommender" and gateway_servicer.calls == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL])
async def test_not_found_while_server_ready_keeps_failing_is_exit_1_after_the_bound(
    code: grpc.StatusCode,
) -> None:
    """Still so after UNCONFIRMED_WAIT_S: a misspelt name, or a gateway fault that lasts.
    Exit 1 (restarted with a backoff), never 2 (which would stop every worker)."""
    gateway_servicer = ScriptedGateway([grpc.StatusCode.NOT_FOUND], ready=code)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ModelUnconfirmed) as caught:
        await _checked(gateway_servicer)
    took = asyncio.get_running_loop().time() - started
    assert caught.value.exit_code == 1 and not isinstance(caught.value, ModelContractError)
    assert 1.0 <= took < 5.0, took
    assert f"ServerReady answered {code.name}" in str(caught.value)
    assert gateway_servicer.calls >= 3


async def test_a_model_a_ready_server_does_not_have_is_exit_2() -> None:
    with pytest.raises(ModelContractError, match=r"model\.name: 'recommender'") as caught:
        await _checked(ScriptedGateway([grpc.StatusCode.NOT_FOUND], ready=True))
    assert caught.value.exit_code == 2


async def test_a_model_whose_shape_does_not_fit_is_exit_2() -> None:
    with pytest.raises(ModelContractError, match=r"window\.history_length: 16") as caught:
        await _checked(ScriptedGateway([8]))
    assert caught.value.exit_code == 2
