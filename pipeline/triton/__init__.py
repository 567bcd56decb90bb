"""Triton I/O: the pool of gRPC streams, request and response codec, the dispatcher
(deadline, retry, bisect), the model contract checked at start, error classification.
``InferenceServer`` is what the dispatcher and the runtime ask of the server: the pool of
streams (``streams.py``) or the testing kit's fake Triton (``pipeline/testing/``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from tritonclient.grpc import service_pb2

if TYPE_CHECKING:
    from pipeline.triton.contract import ServedModel


class InferenceStream(Protocol):
    def submit(
        self, request: service_pb2.ModelInferRequest
    ) -> asyncio.Future[service_pb2.ModelInferResponse]: ...

    def forget(self, req_id: str) -> None:
        """No answer is awaited for this request any more."""


class InferenceServer(Protocol):
    def pick(self) -> InferenceStream: ...

    async def served_model(self, name: str, version: str) -> ServedModel:
        """The model's metadata and config; raises grpc's error while unreachable."""
        ...

    async def close(self) -> None: ...
