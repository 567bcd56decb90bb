"""A fake Triton: the ``InferenceServer`` contract (pipeline/triton/__init__.py) answered
in process, with the real request and response messages, so the dispatcher, codec and
retries run as they do against the real server. Scores are deterministic per user and
never name an item of the row's history, as the shipped model's."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections import deque
from collections.abc import Callable, Sequence

import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from pipeline import errors
from pipeline.ids import internal_id
from pipeline.recsys.scoring import HISTORY_PAD
from pipeline.triton.contract import ModelContractError, ReadParameters, ServedModel, Tensor

# As the shipped model: a queue without priorities or timeouts, unknown history items counted
SHIPPED_READS = ReadParameters(priority=False, timeout=False, unknown_items=True)
# (users [n], histories [n, h]) → (item ids [n, k], scores [n, k])
Scorer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def request_arrays(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """A request's input tensors as numpy arrays, by name."""
    return {
        tensor.name: np.frombuffer(raw, dtype=np.int64).reshape(tuple(tensor.shape))
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
    }


def hashed_scorer(items: int, top_k: int) -> Scorer:
    """Item i's score for user u is a fixed hash of (u, i); history items are left out."""
    catalogue = np.arange(items, dtype=np.uint64)

    def score(users: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mixed = users.astype(np.uint64)[:, None] * np.uint64(2654435761) + catalogue[None, :] * np.uint64(
            40503
        )
        scores = (mixed % np.uint64(1_000_003)).astype(np.float32) / np.float32(1_000_003)
        for row, seen in enumerate(history):
            known = seen[(seen != HISTORY_PAD) & (seen >= 0) & (seen < items)]
            scores[row, known] = -np.inf
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :top_k].astype(np.int64)
        return ids, np.take_along_axis(scores, ids, axis=1)

    return score


_DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}


def bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """A BYTES tensor's raw contents as Triton sends them: each element length-prefixed."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _response(
    request: service_pb2.ModelInferRequest,
    ids: np.ndarray,
    scores: np.ndarray,
    keys: Sequence[bytes] | None = None,
    **more: np.ndarray,
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version or "1", id=request.id
    )
    for name, array in {"ITEM_IDS": ids, "SCORES": scores, **more}.items():
        datatype = _DATATYPES[array.dtype]
        out = response.outputs.add()
        out.name, out.datatype = name, datatype
        out.shape.extend(array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    if keys is not None:  # as the shipped model answers a catalogue with string ids
        out = response.outputs.add()
        out.name, out.datatype = "ITEM_KEYS", "BYTES"
        out.shape.extend((len(keys), 1))
        response.raw_output_contents.append(bytes_tensor(keys))
    return response


class FakeTriton:
    """Answers every request after ``delay_s``. Its catalogue is items 0..``items``-1: a
    history item outside it is ignored and counted (UNKNOWN_ITEMS), as the shipped model
    does. ``fail_next`` makes the next requests fail with a chosen error; ``refused_items``
    makes a request naming one fail INVALID_ARG, as a model that refuses such rows does; and
    ``unreachable`` makes the contract check wait as for a server that is down."""

    def __init__(
        self,
        items: int = 1_000,
        top_k: int = 10,
        max_batch_size: int = 1_024,
        scorer: Scorer | None = None,
        delay_s: float = 0.0,
        reads: ReadParameters = SHIPPED_READS,
        item_keys: Sequence[int | str] | None = None,
    ) -> None:
        """``item_keys``: item i's own id (strings, as a catalogue trained on string ids):
        ITEM_IDS then answers their internal ids (pipeline/ids.py) and ITEM_KEYS the keys."""
        self.items = items
        self.item_keys = None if item_keys is None else [orjson.dumps(k) for k in item_keys]
        self.internal_ids = None if item_keys is None else np.array([internal_id(k) for k in item_keys])
        if item_keys is not None:
            reads = dataclasses.replace(reads, item_keys=True)
        self.top_k = top_k
        self.max_batch_size = max_batch_size
        self.scorer = scorer or hashed_scorer(items, top_k)
        self.delay_s = delay_s
        self.reads = reads
        self.refused_items: set[int] = set()
        self.version_scorers: dict[str, Scorer] = {}  # a version that scores otherwise (an experiment's)
        self.missing_versions: set[str] = set()  # versions the server does not have (now)
        self.failing_versions: dict[str, errors.InferenceError] = {}  # versions whose every request fails
        self.unreachable = False
        self.requests: list[service_pb2.ModelInferRequest] = []
        self.rows = 0
        self._failures: deque[errors.InferenceError] = deque()
        self._pending: dict[str, asyncio.Future[service_pb2.ModelInferResponse]] = {}

    def fail_next(self, error: errors.InferenceError, times: int = 1) -> None:
        self._failures.extend([error] * times)

    # ── InferenceServer ─────────────────────────────────────────────────────────────────
    def pick(self) -> FakeTriton:
        return self

    async def served_model(self, name: str, version: str) -> ServedModel:
        if self.unreachable:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "fake: unreachable"
            )
        if version in self.missing_versions:
            raise ModelContractError(f"model.name: {name!r} (version {version}): not found")
        any_rows = (-1, -1)
        outputs = {"ITEM_IDS": Tensor("INT64", any_rows), "SCORES": Tensor("FP32", any_rows)}
        if self.reads.unknown_items:
            outputs["UNKNOWN_ITEMS"] = Tensor("INT32", (-1, 1))
        if self.reads.item_keys:
            outputs["ITEM_KEYS"] = Tensor("BYTES", (-1, 1))
        inputs = {"USER_ID": Tensor("INT64", (-1, 1)), "HISTORY": Tensor("INT64", any_rows)}
        return ServedModel(name, inputs, outputs, self.max_batch_size, self.reads)

    async def close(self) -> None:
        """What is in flight fails as on a closed stream (retriable)."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(errors.StreamBroken("stream closed"))
        self._pending.clear()

    # ── InferenceStream ─────────────────────────────────────────────────────────────────
    def submit(
        self, request: service_pb2.ModelInferRequest
    ) -> asyncio.Future[service_pb2.ModelInferResponse]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[service_pb2.ModelInferResponse] = loop.create_future()
        self.requests.append(request)
        self._pending[request.id] = future
        loop.call_later(self.delay_s, self._answer, request)
        return future

    def forget(self, req_id: str) -> None:
        self._pending.pop(req_id, None)

    def _answer(self, request: service_pb2.ModelInferRequest) -> None:
        future = self._pending.pop(request.id, None)
        if future is None or future.done():
            return
        if self._failures:
            future.set_exception(self._failures.popleft())
            return
        if (failure := self.failing_versions.get(request.model_version)) is not None:
            future.set_exception(failure)
            return
        if request.model_version in self.missing_versions:
            message = f"Request for unknown model: '{request.model_name}' version {request.model_version}"
            future.set_exception(errors.ModelNotFound(message + " is not found"))
            return
        arrays = request_arrays(request)
        users, history = arrays["USER_ID"][:, 0], arrays["HISTORY"]
        if self.refused_items and np.isin(history, list(self.refused_items)).any():
            future.set_exception(errors.InvalidInput("HISTORY holds an item id the model refuses"))
            return
        self.rows += len(users)
        extra = {}
        if any(out.name == "UNKNOWN_ITEMS" for out in request.outputs):
            unknown = (history != HISTORY_PAD) & ((history < 0) | (history >= self.items))
            extra["UNKNOWN_ITEMS"] = unknown.sum(axis=1).astype(np.int32).reshape(-1, 1)
        scorer = self.version_scorers.get(request.model_version, self.scorer)
        ids, scores = scorer(users, history)
        keys = None
        if self.item_keys is not None and self.internal_ids is not None:
            if any(out.name == "ITEM_KEYS" for out in request.outputs):
                keys = [
                    b"[" + b",".join(self.item_keys[i] for i in row if i >= 0) + b"]" for row in ids.tolist()
                ]
            ids = np.where(ids >= 0, self.internal_ids[np.maximum(ids, 0)], ids)
        future.set_result(_response(request, ids, scores, keys, **extra))
