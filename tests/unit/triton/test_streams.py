"""The stream pool against an in-process gRPC server that speaks Triton's service: answers
matched by id whatever their order, an in-stream error failing only its request, a broken
stream failing what was in flight on it (retriable) and re-opened by the next request,
recycling that keeps the old stream's answers, and a late answer to a forgotten request.
The real Triton covers the happy path and real crashes (tests/integration, tests/faults)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pipeline import errors
from pipeline.triton.streams import StreamPool

Request = service_pb2.ModelInferRequest
Response = service_pb2.ModelStreamInferResponse


def answer(request_id: str, error: str = "") -> Response:
    return Response(error_message=error, infer_response=service_pb2.ModelInferResponse(id=request_id))


class ScriptedTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Each stream's requests go to ``script``, which yields the responses to send."""

    def __init__(self) -> None:
        self.script: Callable[[AsyncIterator[Request], Any], AsyncIterator[Response]] = echo
        self.streams_opened = 0

    async def ModelStreamInfer(  # the generated service names it so
        self, request_iterator: AsyncIterator[Request], context: Any
    ) -> AsyncIterator[Response]:
        self.streams_opened += 1
        async for response in self.script(request_iterator, context):
            yield response


async def echo(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
    async for request in requests:
        yield answer(request.id, "unexpected shape [3]" if request.id.startswith("bad") else "")


@contextlib.asynccontextmanager
async def serving(streams: int = 1) -> AsyncIterator[tuple[StreamPool, ScriptedTriton]]:
    """A scripted server and a pool of ``streams`` streams to it, for at most 10 s."""
    server = grpc.aio.server()
    servicer = ScriptedTriton()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = StreamPool(f"127.0.0.1:{port}", streams, recycle_after=3)
    try:
        async with asyncio.timeout(10):
            yield pool, servicer
    finally:
        await pool.close()
        await server.stop(grace=None)


async def test_answers_are_matched_by_id_even_out_of_order() -> None:
    async def reversed_pairs(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        held: list[Request] = []
        async for request in requests:
            held.append(request)
            if len(held) == 2:
                for r in reversed(held):
                    yield answer(r.id)
                held.clear()

    async with serving() as (pool, triton):
        triton.script = reversed_pairs
        stream = pool.pick()
        first, second = stream.submit(Request(id="a")), stream.submit(Request(id="b"))
        assert (await first).id == "a" and (await second).id == "b"
        assert stream.load == 0


async def test_an_in_stream_error_fails_only_its_request_and_is_classified() -> None:
    async with serving() as (pool, triton):
        stream = pool.pick()
        good, bad = stream.submit(Request(id="ok-1")), stream.submit(Request(id="bad-1"))
        assert (await good).id == "ok-1"
        with pytest.raises(errors.InvalidInput):
            await bad
        assert (await stream.submit(Request(id="ok-2"))).id == "ok-2"  # the stream lives on
        assert triton.streams_opened == 1


async def test_a_broken_stream_fails_its_requests_retriably_and_the_next_one_reopens_it() -> None:
    async def dies_after_one(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        async for request in requests:
            if request.id == "dies":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "model server going away")
            yield answer(request.id)

    async with serving() as (pool, triton):
        triton.script = dies_after_one
        stream = pool.pick()
        assert (await stream.submit(Request(id="first"))).id == "first"
        in_flight = [stream.submit(Request(id="dies")), stream.submit(Request(id="after"))]
        for fut in in_flight:
            # The abort's UNAVAILABLE, or INTERNAL when grpc's core sees the reset first
            # (both say "the server is going away": retried behind the breaker).
            with pytest.raises((errors.ServerUnavailable, errors.StreamBroken)) as caught:
                await fut
            assert caught.value.retriable and caught.value.server_down
        triton.script = echo
        assert (await stream.submit(Request(id="again"))).id == "again"
        assert stream.opens == 2 and triton.streams_opened == 2


async def test_a_stream_the_server_closes_fails_what_is_pending_as_broken() -> None:
    async def closes(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        async for _ in requests:
            return
        yield answer("never")  # pragma: no cover (makes this an async generator)

    async with serving() as (pool, triton):
        triton.script = closes
        with pytest.raises(errors.StreamBroken):
            await pool.pick().submit(Request(id="x"))


async def test_recycling_opens_a_new_stream_and_the_old_one_still_delivers() -> None:
    gate = asyncio.Event()

    async def slow_first_stream(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        ids = [r.id async for r in requests]  # until the client half-closes (recycling)
        await gate.wait()
        for request_id in ids:
            yield answer(request_id)

    async with serving() as (pool, triton):
        triton.script = slow_first_stream
        stream = pool.pick()
        old = [stream.submit(Request(id=f"old-{i}")) for i in range(3)]  # recycle_after=3
        triton.script = echo
        assert (await stream.submit(Request(id="new"))).id == "new"  # on a second stream
        assert stream.opens == 2
        gate.set()
        assert [(await f).id for f in old] == ["old-0", "old-1", "old-2"]


async def test_a_late_answer_to_a_forgotten_request_is_dropped() -> None:
    release = asyncio.Event()

    async def late(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        async for request in requests:
            if request.id == "slow":
                await release.wait()
            yield answer(request.id)

    async with serving() as (pool, triton):
        triton.script = late
        stream = pool.pick()
        slow = stream.submit(Request(id="slow"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(slow), 0.2)
        stream.forget("slow")  # the dispatcher gave up on it (deadline)
        release.set()
        assert (await stream.submit(Request(id="next"))).id == "next"
        assert not slow.done() and stream.load == 0


async def test_pick_takes_the_least_loaded_stream() -> None:
    hold = asyncio.Event()

    async def held(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        async for _ in requests:
            await hold.wait()
        yield answer("never")  # pragma: no cover

    async with serving(streams=3) as (pool, triton):
        triton.script = held
        picked, futures = [], []
        for i in range(6):
            stream = pool.pick()
            futures.append(stream.submit(Request(id=f"r{i}")))
            picked.append(stream.index)
        assert sorted(picked) == [0, 0, 1, 1, 2, 2]
        assert [s.load for s in pool.streams] == [2, 2, 2]
        for fut in futures:
            fut.cancel()  # never answered: the pool's close would fail them


async def test_closing_the_pool_fails_what_is_in_flight() -> None:
    async def never(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        async for _ in requests:
            pass
        yield answer("never")  # pragma: no cover

    async with serving() as (pool, triton):
        triton.script = never
        fut = pool.pick().submit(Request(id="x"))
        await asyncio.sleep(0.1)
        await pool.close()
        with pytest.raises(errors.StreamBroken):
            await fut
