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
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pipeline.triton.contract import ModelContractError, fetch_served_model


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
