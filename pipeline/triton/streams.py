"""A pool of Triton ``ModelStreamInfer`` bidirectional gRPC streams.

Requests are written to the least-loaded stream and answers are matched back by request
id. Triton's own aio ``stream_infer`` neither reconnects nor tells which request an error
belongs to; this layer talks to the generated stub directly so that it can do both: a
broken stream fails what was in flight on it with a retriable StreamBroken (the dispatcher
re-sends), and the next request re-opens it. Streams are recycled after a number of
requests so that no single HTTP/2 stream lives forever."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pipeline import errors
from pipeline.triton.classify import classify_message, classify_status
from pipeline.triton.contract import Metadata, ServedModel, fetch_served_model

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**31 - 1
_CLOSE = None  # sentinel on a stream's send queue


# Triton's server keepalive policy by default (--grpc-http2-min-recv-ping-interval-without-data
# 300000, --grpc-http2-max-ping-strikes 2): a client that pings an idle connection more often
# than every 5 minutes gets GOAWAY "too_many_pings" and loses its streams.
TRITON_MIN_PING_INTERVAL_MS = 300_000


def open_channel(
    url: str,
    keepalive_ms: int = TRITON_MIN_PING_INTERVAL_MS,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """Plaintext, or TLS with ``credentials`` (Triton's --grpc-use-ssl)."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(url, options=options)
    return grpc.aio.secure_channel(url, credentials, options=options)


class TritonStream:
    """One bidirectional stream; opened lazily, re-opened after a break."""

    def __init__(
        self,
        stub: service_pb2_grpc.GRPCInferenceServiceStub,
        index: int,
        recycle_after: int,
        metadata: Metadata = (),
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.index = index
        self.recycle_after = recycle_after
        self.pending: dict[str, asyncio.Future[service_pb2.ModelInferResponse]] = {}
        self.opens = 0
        self._queue: asyncio.Queue[service_pb2.ModelInferRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sent_on_current = 0

    @property
    def load(self) -> int:
        return len(self.pending)

    def _open(self) -> None:
        queue: asyncio.Queue[service_pb2.ModelInferRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[service_pb2.ModelInferRequest]:
            while (item := await queue.get()) is not _CLOSE:
                yield item

        call = self.stub.ModelStreamInfer(requests(), metadata=self.metadata or None)
        self._queue = queue
        self._sent_on_current = 0
        self.opens += 1
        self._reader = asyncio.get_running_loop().create_task(
            self._read(call, self.pending, queue), name=f"triton-stream-{self.index}"
        )

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall,
        pending: dict[str, asyncio.Future[service_pb2.ModelInferResponse]],
        queue: asyncio.Queue[service_pb2.ModelInferRequest | None],
    ) -> None:
        broken: errors.InferenceError | None = None
        try:
            async for response in call:
                fut = pending.pop(response.infer_response.id, None)
                if fut is None or fut.done():
                    continue  # answer to a request we already gave up on
                if response.error_message:
                    fut.set_exception(classify_message(response.error_message))
                else:
                    fut.set_result(response.infer_response)
            broken = errors.StreamBroken("stream closed by the server")
        except grpc.aio.AioRpcError as exc:
            broken = classify_status(exc.code(), exc.details() or "")
        except asyncio.CancelledError:
            broken = errors.StreamBroken("stream cancelled")
            raise
        finally:
            queue.put_nowait(_CLOSE)  # ends the request generator of the dead call
            if pending is self.pending:
                self._queue = None  # the next submit re-opens
                self.pending = {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(broken or errors.StreamBroken("stream ended"))
            pending.clear()

    def submit(
        self, request: service_pb2.ModelInferRequest
    ) -> asyncio.Future[service_pb2.ModelInferResponse]:
        if self._queue is not None and self._sent_on_current >= self.recycle_after:
            self._retire()
        if self._queue is None:
            self._open()
        assert self._queue is not None
        fut: asyncio.Future[service_pb2.ModelInferResponse]
        fut = asyncio.get_running_loop().create_future()
        self.pending[request.id] = fut
        self._queue.put_nowait(request)
        self._sent_on_current += 1
        return fut

    def forget(self, req_id: str) -> None:
        self.pending.pop(req_id, None)

    def _retire(self) -> None:
        """Half-close the current stream: its answers still arrive, new requests go to a new one."""
        assert self._queue is not None
        self._queue.put_nowait(_CLOSE)
        self._queue = None
        self.pending = {}  # the old reader keeps its own dict
        log.debug("stream %d recycled after %d requests", self.index, self.recycle_after)

    async def close(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(_CLOSE)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class StreamPool:
    def __init__(
        self,
        url: str,
        streams: int,
        recycle_after: int,
        keepalive_ms: int = TRITON_MIN_PING_INTERVAL_MS,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata = (),
    ) -> None:
        self.url = url
        self.metadata = metadata
        self._channel = open_channel(url, keepalive_ms, credentials)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.streams = [TritonStream(self.stub, i, recycle_after, metadata) for i in range(streams)]

    def pick(self) -> TritonStream:
        return min(self.streams, key=lambda s: s.load)

    async def served_model(self, name: str, version: str) -> ServedModel:
        return await fetch_served_model(self.stub, name, version, metadata=self.metadata)

    async def model_ready(self, name: str, version: str = "", timeout_s: float = 2.0) -> bool:
        try:
            resp = await self.stub.ModelReady(
                service_pb2.ModelReadyRequest(name=name, version=version),
                timeout=timeout_s,
                metadata=self.metadata or None,
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.ready)

    async def close(self) -> None:
        for stream in self.streams:
            await stream.close()
        await self._channel.close()
