"""Triton requests as the hand loop and the ceiling build them, and one gRPC stream that
answers them by request id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from pipeline.recsys.scoring import HISTORY_PAD


def request_arrays(
    users: np.ndarray, items: np.ndarray, history_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """USER_ID (n, 1) and HISTORY (n, history_length): each user's one item, then padding."""
    history = np.full((len(users), history_length), HISTORY_PAD, dtype=np.int64)
    history[:, 0] = items
    return users.reshape(-1, 1), history


def request_inputs(users: np.ndarray, items: np.ndarray, history_length: int) -> list[Any]:
    return inputs_of(*request_arrays(users, items, history_length))


def inputs_of(users: np.ndarray, history: np.ndarray) -> list[Any]:
    import tritonclient.grpc as grpcclient

    user_input = grpcclient.InferInput("USER_ID", [len(users), 1], "INT64")
    user_input.set_data_from_numpy(users.reshape(-1, 1))
    history_input = grpcclient.InferInput("HISTORY", list(history.shape), "INT64")
    history_input.set_data_from_numpy(history)
    return [user_input, history_input]


def requested_outputs() -> list[Any]:
    import tritonclient.grpc as grpcclient

    return [grpcclient.InferRequestedOutput("ITEM_IDS"), grpcclient.InferRequestedOutput("SCORES")]


class Stream:
    """One tritonclient.grpc.aio ``stream_infer`` stream: requests go in by a queue, answers
    come back to futures by request id. An error answer fails the run (this is a benchmark:
    nothing is retried)."""

    def __init__(self, client: Any) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.responses = client.stream_infer(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[dict[str, Any]]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def _read(self) -> None:
        failure: BaseException = RuntimeError("stream closed")
        try:
            async for result, error in self.responses:
                if error is not None:
                    failure = error
                    break
                fut = self.pending.pop(result.get_response().id, None)
                if fut is not None and not fut.done():
                    fut.set_result(result)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"stream failed: {failure!r}"))
            self.pending.clear()

    def submit(self, request: dict[str, Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[request["request_id"]] = fut
        self.queue.put_nowait(request)
        return fut

    async def close(self) -> None:
        self.queue.put_nowait(None)
        self.responses.cancel()
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader
