"""Inference batches ↔ Triton gRPC messages. Tensors are written and read as raw bytes
straight from numpy: no per-element Python work."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from pipeline.errors import BadOutput
from pipeline.events import Recommendations, UserRequest
from pipeline.recsys.scoring import HISTORY_PAD  # the model reads the same value


@dataclass(frozen=True)
class ModelSignature:
    name: str
    version: str
    history_length: int
    top_k: int


ANSWERS = ("ITEM_IDS", "SCORES")
WITH_UNKNOWN_ITEMS = (*ANSWERS, "UNKNOWN_ITEMS")  # the model counts the history items it did not know
# A catalogue with string ids answers its items in their own ids too: per row, one JSON array
# (ITEM_IDS then holds their hashes, pipeline/ids.py); a catalogue of integers leaves it out.
ITEM_KEYS = "ITEM_KEYS"


def asked_outputs(unknown_items: bool, item_keys: bool) -> tuple[str, ...]:
    """The outputs a request asks for, of those the served model declares."""
    return (*ANSWERS, *(("UNKNOWN_ITEMS",) if unknown_items else ()), *((ITEM_KEYS,) if item_keys else ()))


def request_id(first_ref: tuple[str, int, int], rows: int, attempt: int, send: int) -> str:
    """Readable in Triton's logs (the first source record, the rows, the attempt) and unique
    per send: the same record can be in flight twice (re-read after a rebalance while its
    first copy is still out), and answers are matched by this id."""
    topic, partition, offset = first_ref
    return f"{topic}-{partition}-{offset}+{rows}#{attempt}.{send}"


def encode(
    rows: list[UserRequest],
    sig: ModelSignature,
    req_id: str,
    priority: int = 0,
    timeout_us: int | None = None,
    outputs: tuple[str, ...] = ANSWERS,
) -> service_pb2.ModelInferRequest:
    users = np.fromiter((r.user_id for r in rows), dtype=np.int64, count=len(rows))
    history = np.full((len(rows), sig.history_length), HISTORY_PAD, dtype=np.int64)
    for i, row in enumerate(rows):
        items = row.history[-sig.history_length :]
        history[i, : len(items)] = items
    request = service_pb2.ModelInferRequest(model_name=sig.name, model_version=sig.version, id=req_id)
    for name, shape in (("USER_ID", [len(rows), 1]), ("HISTORY", list(history.shape))):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, "INT64"
        tensor.shape.extend(shape)
    request.raw_input_contents.extend([users.tobytes(), history.tobytes()])
    for name in outputs:
        request.outputs.add().name = name
    if priority > 0:
        request.parameters["priority"].uint64_param = priority
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    return request


_DTYPES = {"INT64": np.int64, "FP32": np.float32}
_ANSWER_TYPES = {"ITEM_IDS": "INT64", "SCORES": "FP32"}


def decode(response: service_pb2.ModelInferResponse, rows: int, top_k: int) -> list[Recommendations]:
    arrays: dict[str, np.ndarray] = {}
    keys: list[list[int | str]] | None = None
    for i, out in enumerate(response.outputs):
        if out.name == ITEM_KEYS and i < len(response.raw_output_contents):
            keys = _row_keys(response.raw_output_contents[i], rows)
            continue
        if out.name not in _ANSWER_TYPES:
            continue  # UNKNOWN_ITEMS, read by unknown_items()
        dtype = _DTYPES.get(out.datatype) if out.datatype == _ANSWER_TYPES[out.name] else None
        if dtype is None or i >= len(response.raw_output_contents):
            raise BadOutput(f"output {out.name}: unexpected datatype {out.datatype}")
        try:
            arrays[out.name] = np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(
                tuple(out.shape)
            )
        except ValueError as exc:
            raise BadOutput(f"output {out.name}: {exc}") from None
    ids, scores = arrays.get("ITEM_IDS"), arrays.get("SCORES")
    if ids is None or scores is None:
        raise BadOutput(f"missing outputs, got {sorted(arrays)}")
    if ids.ndim != 2 or ids.shape[0] != rows or ids.shape != scores.shape:
        raise BadOutput(f"output shape {ids.shape}/{scores.shape} for {rows} rows")
    # scores rounded to 6 decimals here, for the whole batch at once (the output shows 6)
    ids, scores = ids[:, :top_k], scores[:, :top_k].astype(np.float64).round(6)
    if keys is not None:
        return _with_keys(ids, scores, keys, top_k)
    if (ids < 0).any():  # padding: the model had fewer items to offer than top_k (-1, -inf)
        kept = ids >= 0
        return [
            Recommendations(tuple(i[k].tolist()), tuple(s[k].tolist()))
            for i, s, k in zip(ids, scores, kept, strict=True)
        ]
    id_rows, score_rows = ids.tolist(), scores.tolist()
    return [Recommendations(tuple(i), tuple(s)) for i, s in zip(id_rows, score_rows, strict=True)]


def unknown_items(response: service_pb2.ModelInferResponse) -> int:
    """The history items the model did not know, over the response's rows (0 when the
    response does not carry UNKNOWN_ITEMS)."""
    for i, out in enumerate(response.outputs):
        if out.name == "UNKNOWN_ITEMS" and out.datatype == "INT32" and i < len(response.raw_output_contents):
            return int(np.frombuffer(response.raw_output_contents[i], dtype=np.int32).sum())
    return 0


_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix, as Triton serializes it


def _row_keys(raw: bytes, rows: int) -> list[list[int | str]]:
    """ITEM_KEYS: ``rows`` length-prefixed JSON arrays of the rows' item ids."""
    view, at, keys = memoryview(raw), 0, []
    try:
        for _ in range(rows):
            (size,) = _LENGTH.unpack_from(view, at)
            at += 4 + size
            keys.append(orjson.loads(view[at - size : at]))
    except (struct.error, orjson.JSONDecodeError) as exc:
        raise BadOutput(f"output {ITEM_KEYS}: {exc}") from None
    if at != len(raw) or not all(type(row) is list for row in keys):
        raise BadOutput(f"output {ITEM_KEYS}: not {rows} JSON arrays")
    return keys


def _with_keys(
    ids: np.ndarray, scores: np.ndarray, keys: list[list[int | str]], top_k: int
) -> list[Recommendations]:
    """Rows answered in the catalogue's own ids: each row's keys name its ids (padding left out)."""
    answers = []
    for id_row, score_row, key_row in zip(ids.tolist(), scores.tolist(), keys, strict=True):
        kept = [n for n, item in enumerate(id_row) if item >= 0]
        if len(kept) == len(id_row):
            item_ids, row_scores = tuple(id_row), tuple(score_row)
        else:
            item_ids, row_scores = tuple(id_row[n] for n in kept), tuple(score_row[n] for n in kept)
        if len(key_row) < len(item_ids):
            raise BadOutput(f"output {ITEM_KEYS}: {len(key_row)} ids for {len(item_ids)} items")
        answers.append(Recommendations(item_ids, row_scores, tuple(key_row[: len(item_ids)])))
    return answers
