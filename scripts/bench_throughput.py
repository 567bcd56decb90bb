"""Benchmark: the pipeline's throughput against a naive loop, the best hand-written batched
asyncio loop and Triton alone, on one embedded stack (real broker, real Triton 2.51).

Two models with the same signature are served side by side: the shipped recommender and a
trivial Python-backend model (fixed ids and scores, no math) written next to it, so the
cost of the model and the cost of everything around it can be told apart.

Variants, each a process of its own whose CPU and peak RSS are read from /proc:

- naive: one record at a time: getone, blocking unary infer, produce and await, commit.
- hand: aiokafka getmany, chunks of the pipeline's batch size, tritonclient aio streams
  with the pipeline's streams x in-flight, each output sent and gathered, commits of the
  lowest unfinished offsets every 500 ms; consume, infer and produce overlap.
- pipeline: `pipeline run` on the shipped topology, every guarantee on.
- ceiling: Triton alone, requests built in advance at the pipeline's batch size, the best
  of a few streams x in-flight shapes.
- ceiling-shm (only with --variants): the same with the tensors in system shared memory (a
  region pair per request in flight, registered with Triton; inputs written in, outputs
  copied out), as a client next to Triton could. It measured no gain here, so the pipeline
  sends its tensors in the gRPC messages (docs/benchmarks.md).

Each Kafka run consumes a fresh 4-partition topic pre-loaded (just before it starts: the
shipped deadline dead-letters events older than 30 s) with --events events of distinct
users (user id = index; no coalescing helps), from the start, with a fresh group, into a
fresh output topic. The rate is steady state: the outputs whose produce timestamps lie
between the 10th and 90th percentile, over that span; CPU seconds are counted over the same
span. The default backlog is 100,000 events, 5x the shipped topology's credits
(high_watermark 20,000): with a backlog the size of the credits the pipeline takes it all
in its first ~150 ms and its 10th-90th percentile span holds only the work after the parse
(measured at 20,000 on the trivial model, commit a017e8f: 50,000-66,000 ev/s "steady" for
25,000-36,000 ev/s from the first take to the last output). Reps rotate the order. A last
step runs the pipeline at half its median rate (or --half-rate EV_S) and reports its latency;
`--half-rate-set KEY.PATH=VALUE` (repeatable) adds settings to compare there, each run
interleaved with the shipped one --half-rate-reps times (`--reps 0` runs only this step).

Writes a markdown table and a PNG plot (docs/bench_throughput.* by default; --smoke: in the
workdir), and every run's numbers to WORKDIR/bench_throughput.json (--render JSON writes the
table and plot again from it).

`--set KEY.PATH=VALUE` (repeatable) changes a key of the shipped topology for the run, e.g.
`--set batch.max_size=256`; hand and ceiling follow the batch size, streams, in-flight and
poll settings so the comparison stays like for like. Each run's log line and JSON also give
the CPU of Triton's model processes (the Python backend's stubs) apart from the server's.

    python scripts/bench_throughput.py [--events 100000] [--reps 3] [--smoke] [--workdir DIR]
                                       [--models M,..] [--variants V,..] [--set KEY.PATH=VALUE]
                                       [--half-rate EV_S] [--half-rate-reps N]
                                       [--half-rate-set KEY.PATH=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from aiokafka import AIOKafkaConsumer

from pipeline import kafka_clients
from pipeline.devstack.process import ChildProcess
from pipeline.devstack.stack import EmbeddedStack, ensure_model
from pipeline.devstack.topology import SHIPPED, topology_on_stack
from pipeline.devstack.tuning import EMBEDDED_BROKER
from pipeline.devstack.worker import PipelineProcess
from pipeline.kafka_io import broker_at, ensure_topics, ensure_topology_topics, read_to_end
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.scoring import HISTORY_PAD
from pipeline.topology.schema import Broker, Topology

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
MODELS = ("recommender", "trivial")
# 2w: `pipeline run --workers 2`
VARIANTS = ("naive", "hand", "pipeline", "pipeline-2w", "ceiling", "ceiling-shm")
# ceiling-shm (Triton alone with its tensors in system shared memory) is on request only: it
# measured no gain on this stack (docs/benchmarks.md), so the pipeline does not use it
DEFAULT_VARIANTS = VARIANTS[:-1]
CEILING_VARIANTS = ("ceiling", "ceiling-shm")
CEILING_SHAPES = ((1, 2), (2, 4), (2, 8), (4, 8))  # streams x requests in flight (in all)
CEILING_SECONDS = 2.0  # each shape sends for at least this long (the trivial model answers in ~1 ms)
PARTITIONS = 4
SAMPLE_S = 0.05  # CPU sampling period of the consuming process, Triton and the broker
RUN_TIMEOUT_S = 900.0
Coord = tuple[str, int, int]
DUMP_DIR: Path | None = None  # set: each run's output and take times are kept there

TRIVIAL_MODEL = '''"""Trivial model with the recommender's signature (written by scripts/bench_throughput.py):
fixed ids and scores, no math. What serving costs without the model."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        top_k = int(config["parameters"]["top_k"]["string_value"])
        rows = max(1, int(config.get("max_batch_size", 0)))
        self.ids = np.tile(np.arange(top_k, dtype=np.int64), (rows, 1))
        self.scores = np.tile(np.linspace(1.0, 0.1, top_k, dtype=np.float32), (rows, 1))

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy().shape[0]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ITEM_IDS", self.ids[:rows]),
                        pb_utils.Tensor("SCORES", self.scores[:rows]),
                    ]
                )
            )
        return responses
'''


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# The model repository: the recommender (trained if absent) and the trivial model beside it


def write_trivial(repository: Path, name: str = "trivial") -> None:
    """The trivial model, its config the recommender's filled one with the name changed (so
    max_batch_size, dims, batcher and instances match)."""
    config = (repository / "recommender" / "config.pbtxt").read_text()
    config = config.replace('name: "recommender"', f'name: "{name}"', 1)
    if f'name: "{name}"' not in config:
        raise RuntimeError("the recommender's config.pbtxt has no name line to replace")
    (repository / name / "1").mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(config)
    (repository / name / "1" / "model.py").write_text(TRIVIAL_MODEL)


# ---------------------------------------------------------------------------------------------
# /proc readings


def cpu_and_faults(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of ``pids``, summed."""
    ticks, faults = 0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        faults += int(fields[7])  # minflt
    return ticks / os.sysconf("SC_CLK_TCK"), faults


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class Sampler:
    """Cumulative CPU seconds of process groups, sampled on a clock shared with Kafka's
    record timestamps (wall time), so that CPU can be counted over an output span."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.times: list[float] = []
        self.values: dict[str, list[float]] = {name: [] for name in groups}
        self.faults: dict[str, list[float]] = {name: [] for name in groups}

    def sample(self) -> None:
        self.times.append(time.time())
        for name, pids in self.groups.items():
            tree = [p for pid in pids for p in (pid, *children(pid))] if name == "consumer" else pids
            cpu, faults = cpu_and_faults(tree)  # a supervisor's workers count with it
            self.values[name].append(cpu)
            self.faults[name].append(faults)

    def between(self, name: str, t0_ms: float, t1_ms: float, faults: bool = False) -> float:
        """CPU seconds (or minor page faults) of group ``name`` between two wall times."""
        times = np.asarray(self.times) * 1000.0
        values = np.asarray((self.faults if faults else self.values)[name])
        return float(np.interp(t1_ms, times, values) - np.interp(t0_ms, times, values))


def steady(ts_ms: np.ndarray, weights: np.ndarray) -> tuple[float, float, float, float]:
    """Events per second between the 10th and 90th percentile of the timestamps: (rate,
    t10, t90, events in that span)."""
    t10, t90 = (float(x) for x in np.percentile(ts_ms, [10, 90]))
    inside = (ts_ms >= t10) & (ts_ms <= t90)
    events = float(weights[inside].sum())
    return events / max((t90 - t10) / 1000.0, 1e-3), t10, t90, events


# ---------------------------------------------------------------------------------------------
# Events


class Events:
    """The same event content for every run: distinct users (user id = index), items and
    types as the generator draws them; ids and timestamps fresh per load."""

    def __init__(self, count: int) -> None:
        drawn = EventGenerator(GeneratorConfig(seed=7)).events(count)
        self.rows = [(int(e["item_id"]), str(e["type"])) for e in drawn]  # type: ignore[call-overload]

    def value(self, tag: str, index: int, ts: int) -> bytes:
        item, kind = self.rows[index % len(self.rows)]
        return orjson.dumps(
            {"event_id": f"{tag}-{index}", "user_id": index, "item_id": item, "type": kind, "ts": ts}
        )


async def preload(broker: Broker, topic: str, events: Events, count: int) -> dict[Coord, int]:
    """``count`` events, all acknowledged; returns each one's produce timestamp by coordinate.
    Few, large batches (the embedded broker's fetch cost grows with the batches stored)."""
    producer = kafka_clients.producer(
        broker, client_suffix="-bench-load", linger_ms=50, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        ts = now_ms()
        futures = [
            await producer.send(topic, events.value(topic, i, ts), key=str(i).encode()) for i in range(count)
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {(m.topic, m.partition, m.offset): m.timestamp for m in metas}


async def read_outputs(broker: Broker, topic: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    async for rec in read_to_end(broker, topic, idle_timeout_s=10):
        if rec.value:
            out.append((rec.timestamp_ms, orjson.loads(rec.value)))
    return out


# ---------------------------------------------------------------------------------------------
# Worker processes: naive, hand, ceiling (python scripts/bench_throughput.py --_worker KIND)


def output_value(
    model: str,
    version: str,
    src: Any,
    user: int,
    event_id: str,
    ids: list[int],
    scores: list[float],
    fetched: int,
) -> bytes:
    """A recommendation as the pipeline writes one (items, model, sources, timings), plus the
    time its input was fetched."""
    return orjson.dumps(
        {
            "event_id": f"rec-{src.topic}-{src.partition}-{src.offset}",
            "user_id": user,
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in zip(ids, scores, strict=True)],
            "model": {"name": model, "version": version},
            "sources": [
                {"event_id": event_id, "topic": src.topic, "partition": src.partition, "offset": src.offset}
            ],
            "source_count": 1,
            "fetched_ms": fetched,
            "emitted_at_ms": now_ms(),
        }
    )


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


class Tracker:
    """Per partition, the chunks in fetch order; the commit is the offset after the last
    chunk finished with every chunk before it finished (the lowest unfinished offset)."""

    def __init__(self) -> None:
        self.queues: dict[Any, deque[tuple[int, list[bool]]]] = {}
        self.committed: dict[Any, int] = {}

    def add(self, last_offsets: dict[Any, int]) -> list[bool]:
        done = [False]
        for tp, offset in last_offsets.items():
            self.queues.setdefault(tp, deque()).append((offset, done))
        return done

    def committable(self) -> dict[Any, int]:
        out = {}
        for tp, queue in self.queues.items():
            last = None
            while queue and queue[0][1][0]:
                last = queue.popleft()[0]
            if last is not None and last + 1 > self.committed.get(tp, -1):
                out[tp] = self.committed[tp] = last + 1
        return out


def write_status(path: Path, status: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    tmp.replace(path)


def input_consumer(broker: Broker, spec: dict[str, Any], suffix: str, **options: Any) -> AIOKafkaConsumer:
    """A loop's consumer of the pre-loaded topic: its own group, from the start, the embedded
    broker's fetch wait (as the pipeline gets it from the dev stack)."""
    return kafka_clients.consumer(
        broker,
        spec["input"],
        client_suffix=suffix,
        group_id=spec["group"],
        auto_offset_reset="earliest",
        fetch_max_wait_ms=EMBEDDED_BROKER.fetch_max_wait_ms,
        **options,
    )


async def hand_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import tritonclient.grpc.aio as aio

    broker = broker_at(spec["bootstrap"])
    consumer = input_consumer(broker, spec, "-hand", max_poll_records=spec["max_poll_records"])
    producer = kafka_clients.producer(
        broker, client_suffix="-hand", linger_ms=spec["linger_ms"], max_batch_size=spec["max_batch_bytes"]
    )
    client = aio.InferenceServerClient(spec["url"])
    await consumer.start()
    await producer.start()
    partitions = None  # send(): one call per record; else whole batches per partition
    if spec["hand_produce"] == "batch":
        partitions = sorted(await producer.partitions_for(spec["output"]))
    streams = [Stream(client) for _ in range(spec["streams"])]
    slots = asyncio.Semaphore(spec["in_flight"])  # Triton requests outstanding
    outstanding = asyncio.Semaphore(spec["in_flight"] * 3)  # chunks fetched but not yet acked
    tracker = Tracker()
    errors: list[BaseException] = []
    finished = asyncio.Event()
    acked = 0
    tasks: set[asyncio.Task[None]] = set()
    model, batch, history_length, target = (
        spec["model"],
        spec["batch"],
        spec["history_length"],
        spec["events"],
    )
    outputs = requested_outputs()

    async def handle(
        serial: int, records: list[Any], docs: list[dict[str, Any]], fetched: int, done: list[bool]
    ) -> None:
        nonlocal acked
        try:
            try:
                users = np.fromiter((d["user_id"] for d in docs), dtype=np.int64, count=len(docs))
                items = np.fromiter((d["item_id"] for d in docs), dtype=np.int64, count=len(docs))
                request = {
                    "model_name": model,
                    "inputs": request_inputs(users, items, history_length),
                    "outputs": outputs,
                    "request_id": str(serial),
                }
                result = await streams[serial % len(streams)].submit(request)
            finally:
                slots.release()
            version = result.get_response().model_version
            ids = result.as_numpy("ITEM_IDS").tolist()
            scores = result.as_numpy("SCORES").tolist()
            values = [
                (rec.key, output_value(model, version, rec, doc["user_id"], doc["event_id"], i, s, fetched))
                for rec, doc, i, s in zip(records, docs, ids, scores, strict=True)
            ]
            if partitions is None:
                futures = [await producer.send(spec["output"], v, key=k) for k, v in values]
            else:
                futures = await send_batches(producer, spec["output"], partitions, values)
            await asyncio.gather(*futures)
            done[0] = True
            acked += len(records)
            if acked >= target:
                finished.set()
        except BaseException as exc:
            errors.append(exc)
            finished.set()
        finally:
            outstanding.release()

    async def commit_every(interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            offsets = tracker.committable()
            if offsets:
                await consumer.commit(offsets)

    committer = asyncio.create_task(commit_every(spec["commit_interval_ms"] / 1000.0))
    try:
        fetched_count, serial = 0, 0
        while fetched_count < target and not finished.is_set():
            got = await consumer.getmany(timeout_ms=100, max_records=spec["max_poll_records"])
            fetched = now_ms()
            records = [rec for recs in got.values() for rec in recs]
            fetched_count += len(records)
            for start in range(0, len(records), batch):
                chunk = records[start : start + batch]
                docs = [orjson.loads(rec.value) for rec in chunk]
                await outstanding.acquire()
                await slots.acquire()
                serial += 1
                done = tracker.add(last_offsets(chunk))  # its place in each partition: fetch order
                task = asyncio.create_task(handle(serial, chunk, docs, fetched, done))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await finished.wait()
        if errors:
            raise errors[0]
        offsets = tracker.committable()
        if offsets:
            await consumer.commit(offsets)
    finally:
        committer.cancel()
        for task in list(tasks):
            task.cancel()
        for stream in streams:
            await stream.close()
        await client.close()
        await producer.stop()
        await consumer.stop()
    return {"events": acked}


async def send_batches(
    producer: Any, topic: str, partitions: list[int], values: list[tuple[bytes | None, bytes]]
) -> list[asyncio.Future[Any]]:
    """Records grouped by the partition send() would pick, each group in as few batches as
    fit (create_batch / send_batch: what the pipeline's sink does)."""
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for key, value in values:
        by_partition.setdefault(partitioner(key, partitions, partitions), []).append((key, value))
    futures = []
    for partition, records in by_partition.items():
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


def last_offsets(records: list[Any]) -> dict[Any, int]:
    from aiokafka import TopicPartition

    out: dict[Any, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        out[tp] = max(out.get(tp, -1), rec.offset)
    return out


async def naive_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    from aiokafka import TopicPartition

    broker = broker_at(spec["bootstrap"])
    consumer = input_consumer(broker, spec, "-naive")
    producer = kafka_clients.producer(broker, client_suffix="-naive")
    client = grpcclient.InferenceServerClient(spec["url"])
    outputs = requested_outputs()
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < spec["events"]:
            rec = await consumer.getone()
            fetched = now_ms()
            doc = orjson.loads(rec.value)
            inputs = request_inputs(
                np.asarray([doc["user_id"]], dtype=np.int64),
                np.asarray([doc["item_id"]], dtype=np.int64),
                spec["history_length"],
            )
            result = client.infer(spec["model"], inputs, outputs=outputs)  # blocks the loop: naive
            value = output_value(
                spec["model"],
                result.get_response().model_version,
                rec,
                doc["user_id"],
                doc["event_id"],
                result.as_numpy("ITEM_IDS")[0].tolist(),
                result.as_numpy("SCORES")[0].tolist(),
                fetched,
            )
            await producer.send_and_wait(spec["output"], value, key=rec.key)
            await consumer.commit({TopicPartition(rec.topic, rec.partition): rec.offset + 1})
            done += 1
    finally:
        client.close()
        await producer.stop()
        await consumer.stop()
    return {"events": done}


class Shape:
    """One streams x in-flight shape of the ceiling client."""

    def __init__(
        self,
        client: Any,
        spec: dict[str, Any],
        prebuilt: list[Any],
        n_streams: int,
        regions: ShmSlots | None = None,
    ) -> None:
        self.client, self.spec, self.prebuilt, self.n_streams = client, spec, prebuilt, n_streams
        self.regions = regions
        self.outputs = requested_outputs()
        self.serial = 0
        self.times: list[float] = []
        self.latencies: list[float] = []

    async def send(self, stream: Stream, count: int, window: int, record: bool, min_s: float = 0.0) -> None:
        """``count`` requests, and more until ``min_s`` has passed, ``window`` at a time."""
        slots = asyncio.Semaphore(window)

        async def one(inputs: Any) -> None:
            self.serial += 1
            slot = self.regions.take() if self.regions else None
            request = {
                "model_name": self.spec["model"],
                "inputs": slot.write(inputs) if slot else inputs,
                "outputs": slot.outputs if slot else self.outputs,
                "request_id": str(self.serial),
            }
            started = time.perf_counter()
            try:
                await stream.submit(request)
                if slot:
                    slot.read()
            finally:
                if slot and self.regions:
                    self.regions.give(slot)
                slots.release()
            if record:
                self.times.append(time.time() * 1000.0)
                self.latencies.append((time.perf_counter() - started) * 1000.0)

        sent, k, until = [], 0, time.monotonic() + min_s
        while k < count or time.monotonic() < until:
            await slots.acquire()
            sent.append(asyncio.create_task(one(self.prebuilt[k % len(self.prebuilt)])))
            k += 1
        await asyncio.gather(*sent)

    async def run(self, in_flight: int, requests: int, min_s: float) -> dict[str, Any]:
        streams = [Stream(self.client) for _ in range(self.n_streams)]
        window = max(1, in_flight // self.n_streams)
        try:
            # a warm-up, then the measured requests
            await asyncio.gather(*(self.send(s, 2 * window, window, False) for s in streams))
            share = math.ceil(requests / self.n_streams)
            await asyncio.gather(*(self.send(s, share, window, True, min_s) for s in streams))
        finally:
            for stream in streams:
                await stream.close()
        batch = float(self.spec["batch"])
        rate, t10, t90, events = steady(np.asarray(self.times), np.full(len(self.times), batch))
        return {
            "shape": f"{self.n_streams}×{in_flight}",
            "rate": rate,
            "t10": t10,
            "t90": t90,
            "events": events,
            "p50": float(np.percentile(self.latencies, 50)),
            "p99": float(np.percentile(self.latencies, 99)),
        }


class ShmSlot:
    """One request's tensors in system shared memory: the inputs written into one region,
    the outputs answered into another and copied out, as a client would."""

    def __init__(self, name: str, batch: int, history_length: int, top_k: int) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm

        self.name, self.batch, self.top_k = name, batch, top_k
        self.in_size = batch * (1 + history_length) * 8
        self.out_size = batch * top_k * (8 + 4)
        self.in_handle = shm.create_shared_memory_region(f"{name}-in", f"/{name}-in", self.in_size)
        self.out_handle = shm.create_shared_memory_region(f"{name}-out", f"/{name}-out", self.out_size)
        user = grpcclient.InferInput("USER_ID", [batch, 1], "INT64")
        user.set_shared_memory(f"{name}-in", batch * 8)
        history = grpcclient.InferInput("HISTORY", [batch, history_length], "INT64")
        history.set_shared_memory(f"{name}-in", batch * history_length * 8, offset=batch * 8)
        self.inputs = [user, history]
        ids = grpcclient.InferRequestedOutput("ITEM_IDS")
        ids.set_shared_memory(f"{name}-out", batch * top_k * 8)
        scores = grpcclient.InferRequestedOutput("SCORES")
        scores.set_shared_memory(f"{name}-out", batch * top_k * 4, offset=batch * top_k * 8)
        self.outputs = [ids, scores]

    def write(self, arrays: tuple[np.ndarray, np.ndarray]) -> list[Any]:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.in_handle, list(arrays))
        return self.inputs

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.utils.shared_memory as shm

        shape, offset = [self.batch, self.top_k], self.batch * self.top_k * 8
        ids = shm.get_contents_as_numpy(self.out_handle, np.int64, shape)
        scores = shm.get_contents_as_numpy(self.out_handle, np.float32, shape, offset=offset)
        return ids.copy(), scores.copy()

    async def register(self, client: Any) -> None:
        await client.register_system_shared_memory(f"{self.name}-in", f"/{self.name}-in", self.in_size)
        await client.register_system_shared_memory(f"{self.name}-out", f"/{self.name}-out", self.out_size)

    async def release(self, client: Any) -> None:
        import tritonclient.utils.shared_memory as shm

        for suffix, handle in (("in", self.in_handle), ("out", self.out_handle)):
            with contextlib.suppress(Exception):  # not registered (a failed start) is fine
                await client.unregister_system_shared_memory(f"{self.name}-{suffix}")
            with contextlib.suppress(shm.SharedMemoryException):
                shm.destroy_shared_memory_region(handle)


class ShmSlots:
    """A region pair per request in flight, taken while the request is out."""

    def __init__(self, slots: list[ShmSlot]) -> None:
        self.all, self.free = slots, list(slots)

    def take(self) -> ShmSlot:
        return self.free.pop()

    def give(self, slot: ShmSlot) -> None:
        self.free.append(slot)


async def ceiling_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Triton alone: requests of the pipeline's batch size built in advance, sent over S
    streams with F requests in flight in all, for each shape; rate from the answers' times.
    With ``shm`` the tensors go through system shared memory (a region pair per request in
    flight, registered with Triton) instead of the gRPC messages."""
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(spec["url"])
    batch = spec["batch"]
    # the users and items of the Kafka runs' first events (the items' popularity changes
    # the model's cost a little: uniform random items cost ~7 % more Triton CPU)
    items = np.asarray([item for item, _ in Events(16 * batch).rows], dtype=np.int64)
    arrays = [
        request_arrays(
            np.arange(k * batch, (k + 1) * batch, dtype=np.int64),
            items[k * batch : (k + 1) * batch],
            spec["history_length"],
        )
        for k in range(16)
    ]
    prebuilt: list[Any] = arrays if spec.get("shm") else [inputs_of(*a) for a in arrays]
    top_k = 0
    if spec.get("shm"):
        metadata = await client.get_model_metadata(spec["model"], as_json=True)
        top_k = next(int(o["shape"][-1]) for o in metadata["outputs"] if o["name"] == "ITEM_IDS")
    requests = min(max(math.ceil(spec["events"] / batch), 200), 400)
    shapes = []
    try:
        for n_streams, in_flight in spec["shapes"]:
            created: list[ShmSlot] = []  # released whatever happens, each as far as it got
            try:
                if spec.get("shm"):
                    prefix = f"bench-{os.getpid()}-{n_streams}x{in_flight}"
                    for i in range(max(1, in_flight // n_streams) * n_streams):
                        created.append(ShmSlot(f"{prefix}-{i}", batch, spec["history_length"], top_k))
                        await created[-1].register(client)
                regions = ShmSlots(created) if created else None
                shape = Shape(client, spec, prebuilt, n_streams, regions)
                shapes.append(await shape.run(in_flight, requests, spec["ceiling_seconds"]))
            finally:
                for slot in created:
                    await slot.release(client)
            print(json.dumps(shapes[-1]), flush=True)
    finally:
        await client.close()
    return {"shapes": shapes, "best": max(shapes, key=lambda s: s["rate"])}


WORKERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "naive": naive_worker,
    "hand": hand_worker,
    "ceiling": ceiling_worker,
}


def worker_main(kind: str, spec: dict[str, Any]) -> int:
    """Run one worker, write its status file, then stay (so the parent reads its peak RSS
    and CPU like the pipeline's) until SIGTERM."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.create_task(WORKERS[kind](spec))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
        status = work.result()
        status["finished_ms"] = now_ms()
        write_status(Path(spec["status"]), status)
        await stopped

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------------------------------------
# The runs, from the parent


class Bench:
    def __init__(self, args: argparse.Namespace, stack: EmbeddedStack, workdir: Path) -> None:
        self.args = args
        self.stack = stack
        self.runs = workdir / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.broker = broker_at(stack.broker.bootstrap)
        self.shipped: dict[str, Any] = args.shipped  # hand and ceiling follow its batch, streams, ...
        self.batch = int(self.shipped["batch"]["max_size"])
        self.events = Events(max(args.events, args.naive_events))

    def sampler(self, consumer_pid: int) -> Sampler:
        triton = self.stack.triton.pid
        return Sampler(
            {
                "consumer": [consumer_pid],
                "triton": [triton, *children(triton)],
                "triton_stub": children(triton),  # the Python backend's model processes (stubs)
                "broker": [self.stack.broker.pid],
            }
        )

    def worker_spec(self, kind: str, model: str, tag: str, events: int) -> dict[str, Any]:
        model_section, source = self.shipped["model"], self.shipped["source"]
        return {
            "bootstrap": self.stack.broker.bootstrap,
            "url": self.stack.triton.grpc_url,
            "model": model,
            "input": f"bench-in-{tag}",
            "output": f"bench-out-{tag}",
            "group": f"bench-{tag}",
            "events": events,
            "batch": self.batch,
            "streams": int(model_section["streams"]),
            "in_flight": int(model_section["max_in_flight"]),
            "history_length": int(self.shipped["window"]["history_length"]),
            "max_poll_records": int(source["max_poll_records"]),
            "commit_interval_ms": int(source["commit_interval_ms"]),
            "linger_ms": int(self.shipped["sink"]["linger_ms"]),
            "hand_produce": self.args.hand_produce,
            "ceiling_seconds": 0.5 if self.args.smoke else CEILING_SECONDS,
            "max_batch_bytes": self.args.hand_batch_bytes,
            "shapes": [list(s) for s in (CEILING_SHAPES if not self.args.smoke else CEILING_SHAPES[2:3])],
            "status": str(self.runs / f"{kind}-{tag}.status.json"),
        }

    def wait(self, proc: ChildProcess, sampler: Sampler, done: Callable[[], bool], every_s: float) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        next_check = 0.0
        while True:
            sampler.sample()
            now = time.monotonic()
            if now >= next_check:
                if done():
                    sampler.sample()
                    return
                next_check = now + every_s
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}:\n{proc.tail()}")
            if now > deadline:
                raise TimeoutError(f"{proc.name} not done after {RUN_TIMEOUT_S}s; see {proc.log_path}")
            time.sleep(SAMPLE_S)

    def run(self, model: str, variant: str) -> dict[str, Any]:
        """One run, with what Triton saw of it: requests and executions (merged requests)."""
        before = self.triton_counts(model)
        row = self.run_variant(model, variant)
        after = self.triton_counts(model)
        requests, executions, rows, queue_ns, infer_ns = (a - b for a, b in zip(after, before, strict=True))
        row["rows_per_request"] = rows / max(requests, 1)
        row["requests_per_execution"] = requests / max(executions, 1)
        row["triton_queue_ms"] = queue_ns / 1e6 / max(requests, 1)
        row["triton_infer_us_per_row"] = infer_ns / 1e3 / max(rows, 1)
        return row

    def triton_counts(self, model: str) -> tuple[int, int, int, int, int]:
        """(requests, executions, rows, queue ns, compute ns) Triton counted for ``model``."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.stack.triton.grpc_url)
        try:
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        finally:
            client.close()
        inference = stats["inference_stats"]
        requests = int(inference["success"].get("count", 0))
        queue_ns = int(inference["queue"].get("ns", 0))
        compute_ns = sum(
            int(inference[k].get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output")
        )
        return (
            requests,
            int(stats.get("execution_count", 0)),
            int(stats.get("inference_count", 0)),
            queue_ns,
            compute_ns,
        )

    def run_variant(self, model: str, variant: str) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:8]
        if variant in ("pipeline", "pipeline-2w"):
            return self.run_pipeline(model, tag, workers=2 if variant == "pipeline-2w" else 1)
        if variant in CEILING_VARIANTS:
            return self.run_ceiling(model, tag, shm=variant == "ceiling-shm")
        events = self.args.events if variant == "hand" else min(self.args.naive_events, self.args.events)
        spec = self.worker_spec(variant, model, tag, events)
        asyncio.run(ensure_topics(self.broker, [spec["input"], spec["output"]], PARTITIONS))
        inputs = asyncio.run(preload(self.broker, spec["input"], self.events, events))
        proc = self.worker(variant, tag, spec)
        status = Path(spec["status"])
        try:
            proc.start()
            sampler = self.sampler(proc.pid)
            self.wait(proc, sampler, status.exists, 0.1)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.stop()
        outputs = asyncio.run(read_outputs(self.broker, spec["output"]))
        return summarise(variant, model, outputs, inputs, sampler, rss, "fetched_ms")

    def worker(self, kind: str, tag: str, spec: dict[str, Any]) -> ChildProcess:
        return ChildProcess(
            f"{kind}-{tag}",
            [sys.executable, str(SCRIPT), "--_worker", kind, "--_spec", json.dumps(spec)],
            self.runs / f"{kind}-{tag}.log",
            cwd=ROOT,
        )

    def topology(self, model: str, setting: tuple[tuple[str, Any], ...] = ()) -> Topology:
        data = topology_on_stack(self.stack)  # fresh topics and group
        data["model"]["name"] = model
        for path, value in (*self.args.set, *setting):
            set_key(data, path, value)
        return Topology.model_validate(data)

    def run_pipeline(self, model: str, tag: str, workers: int = 1) -> dict[str, Any]:
        topology = self.topology(model)
        asyncio.run(ensure_topology_topics(topology, PARTITIONS))
        topic = topology.source.topics[0]
        inputs = asyncio.run(preload(self.broker, topic, self.events, self.args.events))
        worker = PipelineProcess(topology, self.runs, name=f"pipeline-{tag}", workers=workers)
        try:
            worker.start()
            sampler = self.sampler(worker.pid)
            self.wait(worker, sampler, lambda: finished(worker) >= self.args.events, 0.5)
            rss = sum(peak_rss_mb(pid) for pid in (worker.pid, *children(worker.pid)))
            dead = counter(worker, "pipeline_dead_letters_total")
        finally:
            worker.stop(worker.stop_grace_s)
        outputs = asyncio.run(read_outputs(self.broker, topology.sink.topic))
        variant = "pipeline" if workers == 1 else f"pipeline-{workers}w"
        row = summarise(variant, model, outputs, inputs, sampler, rss, "window")
        row["dead_letters"] = dead
        return row

    def run_ceiling(self, model: str, tag: str, shm: bool = False) -> dict[str, Any]:
        spec = self.worker_spec("ceiling", model, tag, self.args.events)
        spec["shm"] = shm
        proc = self.worker("ceiling", tag, spec)
        status = Path(spec["status"])
        try:
            proc.start()
            sampler = self.sampler(proc.pid)
            self.wait(proc, sampler, status.exists, 0.1)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.stop()
        result = json.loads(status.read_text())
        best = result["best"]
        t10, t90, events = best["t10"], best["t90"], best["events"]
        return {
            "variant": "ceiling-shm" if shm else "ceiling",
            "model": model,
            "rate": best["rate"],
            "events": events,
            "cpu_consumer": 1000 * sampler.between("consumer", t10, t90) / events,
            "cpu_triton": 1000 * sampler.between("triton", t10, t90) / events,
            "cpu_triton_stub": 1000 * sampler.between("triton_stub", t10, t90) / events,
            "faults_consumer": 1000 * sampler.between("consumer", t10, t90, faults=True) / events,
            "faults_triton_stub": 1000 * sampler.between("triton_stub", t10, t90, faults=True) / events,
            "cpu_broker": 1000 * sampler.between("broker", t10, t90) / events,
            "rss_mb": rss,
            "e2e_p50": None,
            "e2e_p99": None,
            "proc_p50": best["p50"],
            "proc_p99": best["p99"],
            "shape": best["shape"],
            "shapes": {s["shape"]: round(s["rate"]) for s in result["shapes"]},
        }

    def half_rate(
        self, rate: float, seconds: float, setting: tuple[tuple[str, Any], ...] = ()
    ) -> dict[str, Any]:
        """The pipeline on the shipped model (with ``setting``'s overrides on top) at a steady
        ``rate`` for ``seconds``: latency."""
        topology = self.topology("recommender", setting)
        asyncio.run(ensure_topology_topics(topology, PARTITIONS))
        topic = topology.source.topics[0]
        worker = PipelineProcess(topology, self.runs, name=f"pipeline-half-{uuid.uuid4().hex[:8]}")
        try:
            worker.start_ready(60)
            # one event through first: the group has its partitions and the model is warm
            asyncio.run(preload(self.broker, topic, self.events, 1))
            worker.wait_until(lambda: finished(worker) >= 1, 60, "answering")
            sampler = self.sampler(worker.pid)
            inputs = asyncio.run(paced(self.broker, topic, self.events, rate, seconds, sampler))
            self.wait(worker, sampler, lambda: finished(worker) >= len(inputs) + 1, 0.5)
            rss = peak_rss_mb(worker.pid)
            dead = counter(worker, "pipeline_dead_letters_total")
        finally:
            worker.stop(worker.stop_grace_s)
        outputs = asyncio.run(read_outputs(self.broker, topology.sink.topic))
        outputs = [
            o
            for o in outputs
            if all((s["topic"], s["partition"], s["offset"]) in inputs for s in o[1]["sources"])
        ]
        row = summarise("pipeline", "recommender", outputs, inputs, sampler, rss, "window")
        row.update(
            {
                "offered": rate,
                "seconds": seconds,
                "dead_letters": dead,
                "setting": setting_name(setting),
                "stages": stages(outputs, inputs),
            }
        )
        return row


async def paced(
    broker: Broker, topic: str, events: Events, rate: float, seconds: float, sampler: Sampler
) -> dict[Coord, int]:
    """Events at a steady ``rate`` for ``seconds`` (user ids from 1 on: the warm-up took 0),
    sampling CPU meanwhile; returns each one's produce timestamp by coordinate."""
    producer = kafka_clients.producer(broker, client_suffix="-bench-paced", linger_ms=5)
    await producer.start()

    async def sample() -> None:
        while True:
            sampler.sample()
            await asyncio.sleep(SAMPLE_S)

    sampling = asyncio.create_task(sample())
    try:
        futures, sent, started = [], 0, time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            sent += 1
            futures.append(
                await producer.send(topic, events.value(topic, sent, now_ms()), key=str(sent).encode())
            )
            if sent % 10 == 0 and (ahead := sent / rate - elapsed) > 0:
                await asyncio.sleep(ahead)
        metas = await asyncio.gather(*futures)
    finally:
        sampling.cancel()
        await producer.stop()
    return {(m.topic, m.partition, m.offset): m.timestamp for m in metas}


def counter(worker: PipelineProcess, name: str) -> float:
    try:
        text = worker.metrics()
    except (OSError, urllib.error.URLError):
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def finished(worker: PipelineProcess) -> float:
    """Events the pipeline finished (recommended or dead-lettered, acknowledged)."""
    return counter(worker, "pipeline_events_finished_total")


def summarise(
    variant: str,
    model: str,
    outputs: list[tuple[int, dict[str, Any]]],
    inputs: dict[Coord, int],
    sampler: Sampler,
    rss: float,
    fetched: str,
) -> dict[str, Any]:
    """Steady-state rate and CPU per 1,000 events over the 10th-90th percentile of the
    outputs' produce timestamps; latency end to end (input produce → output produce) and in
    the process (taken from Kafka → output produce: for the pipeline, from its window's
    opening, which is right after the fetch and parse)."""
    if not outputs:
        raise RuntimeError(f"{variant}/{model}: no outputs")
    ts = np.asarray([t for t, _ in outputs], dtype=np.float64)
    weights = np.asarray([doc.get("source_count", 1) for _, doc in outputs], dtype=np.float64)
    rate, t10, t90, events = steady(ts, weights)
    e2e = [
        t - inputs[(s["topic"], s["partition"], s["offset"])] for t, doc in outputs for s in doc["sources"]
    ]
    taken = [doc["window"]["start_ms"] if fetched == "window" else doc[fetched] for _, doc in outputs]
    held = [t - taken_ms for (t, _), taken_ms in zip(outputs, taken, strict=True)]
    if DUMP_DIR is not None:  # the raw times, for a closer look
        DUMP_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(
            DUMP_DIR / f"{variant}-{model}-{uuid.uuid4().hex[:6]}.npz",
            out=ts,
            taken=np.asarray(taken),
            cpu_t=np.asarray(sampler.times),
            cpu=np.asarray(sampler.values["consumer"]),
        )
    p = np.percentile
    return {
        "variant": variant,
        "model": model,
        "rate": rate,
        "events": int(weights.sum()),
        "cpu_consumer": 1000 * sampler.between("consumer", t10, t90) / max(events, 1),
        "cpu_triton": 1000 * sampler.between("triton", t10, t90) / max(events, 1),
        "cpu_triton_stub": 1000 * sampler.between("triton_stub", t10, t90) / max(events, 1),
        "faults_consumer": 1000 * sampler.between("consumer", t10, t90, faults=True) / max(events, 1),
        "faults_triton_stub": 1000 * sampler.between("triton_stub", t10, t90, faults=True) / max(events, 1),
        "cpu_broker": 1000 * sampler.between("broker", t10, t90) / max(events, 1),
        "rss_mb": rss,
        "e2e_p50": float(p(e2e, 50)),
        "e2e_p99": float(p(e2e, 99)),
        "proc_p50": float(p(held, 50)),
        "proc_p99": float(p(held, 99)),
        # events over first take → last output: a check on the steady rate
        "span_rate": float(weights.sum()) / max((ts.max() - min(taken)) / 1000.0, 1e-3),
        "span_s": (ts.max() - min(taken)) / 1000.0,
    }


STAGES = ("to window close", "queued", "inference", "to output")


def stages(outputs: list[tuple[int, dict[str, Any]]], inputs: dict[Coord, int]) -> dict[str, list[float]]:
    """Where a recommendation's time went, p50 and p99 per stage, from its own timings: input
    produce → its window's close (producer linger, broker, fetch, parse and the wait in the
    window: the output does not say when its event was taken), waiting for an inference
    slot, inference, then enrich and produce until the output's timestamp."""
    parts: dict[str, list[float]] = {name: [] for name in STAGES}
    for t, doc in outputs:
        first = doc["sources"][0]
        produced = inputs[(first["topic"], first["partition"], first["offset"])]
        closed, timings = doc["window"]["end_ms"], doc["timings"]
        answered = closed + timings["queued_ms"] + timings["inference_ms"]
        values = (closed - produced, timings["queued_ms"], timings["inference_ms"], t - answered)
        for name, value in zip(STAGES, values, strict=True):
            parts[name].append(value)
    return {name: [float(np.percentile(v, 50)), float(np.percentile(v, 99))] for name, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for model in MODELS:
        for variant in VARIANTS:
            sel = [r for r in rows if r["model"] == model and r["variant"] == variant]
            if not sel:
                continue
            agg: dict[str, Any] = {"runs": len(sel)}
            for key in ("rate", "cpu_consumer", "cpu_triton", "cpu_broker", "rss_mb", "events"):
                agg[key] = median([r[key] for r in sel])
            for key in ("e2e_p50", "e2e_p99", "proc_p50", "proc_p99"):
                vals = [r[key] for r in sel if r[key] is not None]
                agg[key] = median(vals) if vals else None
            agg["rate_min"] = min(r["rate"] for r in sel)
            agg["rate_max"] = max(r["rate"] for r in sel)
            agg["cpu_min"] = min(r["cpu_consumer"] for r in sel)
            agg["cpu_max"] = max(r["cpu_consumer"] for r in sel)
            agg["shapes"] = [r["shape"] for r in sel if "shape" in r]
            agg["dead_letters"] = sum(r.get("dead_letters", 0) for r in sel)
            out[(model, variant)] = agg
    return out


def code_fingerprint() -> str:
    """A hash of pipeline/'s sources: tells whether the code measured changed during a run."""
    digest = hashlib.sha1()
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "pipeline"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": cpu,
        "python": platform.python_version(),
        "commit": commit + (" (pipeline/ with uncommitted changes)" if dirty else ""),
    }


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def overrides_note(overrides: list[str]) -> str:
    if not overrides:
        return "."
    return f"; topology overrides (`--set`, hand and ceiling follow them): {', '.join(overrides)}."


def report(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    half: list[dict[str, Any]] | dict[str, Any] | None,
    facts: dict[str, str],
) -> str:
    """The markdown page; ``meta``: the command line and the settings of the run."""
    agg = aggregate(rows)
    args = argparse.Namespace(**meta)
    command, batch = meta["command"], meta["batch"]
    lines = [
        "# Throughput: pipeline vs hand-written loop vs Triton alone",
        "",
        f"`{command}`",
        "",
        f"- {facts['date']}; {facts['nproc']} cores (`nproc`), {facts['cpu']}; Python {facts['python']}; "
        f"commit {facts['commit']}. The broker (Tansu) and Triton 2.51 run on the same cores.",
        f"- {args.events:,} pre-loaded events per run (distinct users, 4 partitions; naive: "
        f"{min(args.naive_events, args.events):,}), {args.reps} rep(s), order rotated per rep; "
        "medians, rate spread min–max. Each variant is a process of its own on one stack, "
        f"both models served side by side. Batch {batch} users, 2 streams, 8 requests in "
        "flight (the shipped topology's) for hand and pipeline" + overrides_note(meta.get("overrides", [])),
        "- **naive**: getone → blocking unary infer → produce and await → commit, per record. "
        "**hand**: getmany → chunks of the batch size → tritonclient aio stream_infer → "
        + ("send each output, gather" if args.hand_produce == "send" else "send_batch per partition, gather")
        + f" (producer batches up to {args.hand_batch_bytes:,} bytes)"
        + " → commit the lowest unfinished offsets every 500 ms; consume, "
        "infer and produce overlap (no validation, windows, lanes, retries or dead letters). "
        "**pipeline**: `pipeline run` on topologies/recommendations.yaml (every guarantee on; "
        "the embedded broker's fetch wait). **ceiling**: Triton alone, requests built in "
        "advance, best streams×in-flight shape.",
        "- ev/s: steady state (outputs between the 10th and 90th percentile of their produce "
        "timestamps). CPU s per 1,000 events over the same span: the consuming process, Triton "
        "(server and backend stubs), the broker. Peak RSS: VmHWM of the consuming process. "
        "The backlog is 5x the pipeline's credits (20,000): with a backlog of one credit "
        "window the pipeline takes it all at once and that span misses its parse work.",
        "- e2e: input produce → output produce. The inputs are pre-loaded, so this is the "
        "backlog's drain time (start-up included), not a service latency; in-process: taken "
        "from Kafka (pipeline: its window opening) → output produce. Ceiling: per request. "
        "Latency under load: the half-rate table.",
        "",
        "| model | variant | ev/s | min–max | CPU s/1k ev (process) | Triton CPU s/1k | "
        "broker CPU s/1k | peak RSS MB | e2e p50 / p99 ms | in-process p50 / p99 ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not rows:  # only the latency step ran (--reps 0): the page is its table
        halves = [half] if isinstance(half, dict) else (half or [])
        return "\n".join(lines[:-2] + half_rate_table(halves)[1:] + [""])
    for (model, variant), a in agg.items():
        note = ""
        if variant in CEILING_VARIANTS:
            note = f"batch {batch}, best shape {'/'.join(sorted(set(a['shapes'])))}"
        elif variant == "naive":
            note = f"{a['events']:,.0f} events per run"
        if a["dead_letters"]:
            note += f" {a['dead_letters']:.0f} dead letters"
        lines.append(
            f"| {model} | {variant} | {fmt(a['rate'])} | {fmt(a['rate_min'])}–{fmt(a['rate_max'])} | "
            f"{fmt(a['cpu_consumer'], 3)} | {fmt(a['cpu_triton'], 3)} | "
            f"{fmt(a['cpu_broker'], 3) if variant not in CEILING_VARIANTS else '–'} | {fmt(a['rss_mb'])} | "
            f"{fmt(a['e2e_p50'])} / {fmt(a['e2e_p99'])} | "
            f"{fmt(a['proc_p50'], 1)} / {fmt(a['proc_p99'], 1)} | "
            f"{note} |"
        )
    lines += [
        "",
        "| model | pipeline / hand | pipeline / ceiling | pipeline / naive "
        "| CPU per event: pipeline / hand | 2 workers / hand |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for model in MODELS:
        pipe, hand = agg.get((model, "pipeline")), agg.get((model, "hand"))
        ceiling, naive = agg.get((model, "ceiling")), agg.get((model, "naive"))
        two = agg.get((model, "pipeline-2w"))
        if pipe is None:
            continue

        def ratio(other: dict[str, Any] | None, key: str = "rate", p: dict[str, Any] = pipe) -> str:
            return f"{p[key] / other[key]:.2f}" if other and other[key] else "–"

        lines.append(
            f"| {model} | {ratio(hand)} | {ratio(ceiling)} | {ratio(naive)} | {ratio(hand, 'cpu_consumer')} "
            f"| {ratio(hand, p=two) if two else '–'} |"
        )
    halves = [half] if isinstance(half, dict) else (half or [])
    if halves:
        lines += half_rate_table(halves)
    lines += [
        "",
        "Every run (drain: all its events over first take → last output, a check on the steady "
        "rate; Triton: from its statistics, the run's rows per request, requests per execution "
        "and execution time per row, queue excluded):",
        "",
        "| rep | model | variant | ev/s | drain ev/s | CPU s/1k | RSS MB | e2e p99 ms "
        "| Triton rows/req · req/exec · us/row | ceiling shapes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        triton = (
            f"{r['rows_per_request']:.0f} · {r['requests_per_execution']:.2f} · "
            f"{r['triton_infer_us_per_row']:.1f}"
            if "rows_per_request" in r
            else "–"
        )
        lines.append(
            f"| {r['rep']} | {r['model']} | {r['variant']} | {fmt(r['rate'])} | "
            f"{fmt(r.get('span_rate'))} | {fmt(r['cpu_consumer'], 3)} | "
            f"{fmt(r['rss_mb'])} | {fmt(r['e2e_p99'])} | {triton} | "
            f"{', '.join(f'{k}: {v:,}' for k, v in r.get('shapes', {}).items())} |"
        )
    lines += ["", "![throughput](bench_throughput.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.38
    colours = {"recommender": "tab:blue", "trivial": "tab:orange"}
    batched = VARIANTS[1:]  # the CPU panel: naive's ~1.5 s per 1,000 events would flatten the rest
    for m, model in enumerate(MODELS):
        offset = (m - 0.5) * width
        present = [(i + offset, v, agg[(model, v)]) for i, v in enumerate(VARIANTS) if (model, v) in agg]
        if present:
            at = [x for x, _, _ in present]
            rates = [a["rate"] for _, _, a in present]
            err = [
                [a["rate"] - a["rate_min"] for _, _, a in present],
                [a["rate_max"] - a["rate"] for _, _, a in present],
            ]
            ax1.bar(at, rates, width, yerr=err, capsize=4, label=model, color=colours[model])
            for x, rate in zip(at, rates, strict=True):
                ax1.annotate(
                    f"{rate:,.0f}", (x, rate), ha="center", va="bottom", fontsize=7, xytext=(0, 6),
                    textcoords="offset points",
                )  # fmt: skip
        present = [(i + offset, v, agg[(model, v)]) for i, v in enumerate(batched) if (model, v) in agg]
        bottom = np.zeros(len(present))
        for part, hatch in (("cpu_consumer", ""), ("cpu_triton", "//"), ("cpu_broker", "..")):
            # the ceiling has no broker in its path
            vals = np.asarray(
                [0.0 if part == "cpu_broker" and v in CEILING_VARIANTS else a[part] for _, v, a in present]
            )
            ax2.bar(
                [x for x, _, _ in present],
                vals,
                width,
                bottom=bottom,
                color=colours[model],
                hatch=hatch,
                edgecolor="white",
                label=f"{model}: {part.removeprefix('cpu_')}",
            )
            bottom += vals
        for (x, _, _), total in zip(present, bottom, strict=True):
            ax2.annotate(
                f"{total:.3f}", (x, total), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                textcoords="offset points",
            )  # fmt: skip
    naive = " / ".join(
        f"{sum(agg[(m, 'naive')][k] for k in ('cpu_consumer', 'cpu_triton', 'cpu_broker')):.2f}"
        for m in MODELS
        if (m, "naive") in agg
    )
    ax1.set_xticks(range(len(VARIANTS)), VARIANTS)
    ax2.set_xticks(range(len(batched)), batched)
    ax1.set(yscale="log", ylabel="events/s (steady state; whiskers min–max)", title="Throughput")
    ax2.set(
        ylabel="CPU s per 1,000 events",
        title=f"CPU per 1,000 events: process / Triton / broker (naive: {naive})",
    )
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def setting_name(setting: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{path}={value}" for path, value in setting) or "shipped"


def half_rate_table(halves: list[dict[str, Any]]) -> list[str]:
    """A row per setting: the medians over its runs, and each run's p99 (the spread)."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for h in halves:
        by_setting.setdefault(h.get("setting", "shipped"), []).append(h)
    first = halves[0]
    lines = [
        "",
        f"Pipeline at {first.get('rate_from', 'half its median rate')} (shipped model, "
        f"{first['seconds']:.0f} s a run, load "
        "generator in the bench process, producer linger 5 ms; with several settings the runs "
        "are interleaved and each cell is the median of its runs):",
        "",
        "| setting | runs | offered ev/s | delivered ev/s | e2e p50 / p99 ms | e2e p99 per run ms "
        "| in-process p50 / p99 ms | CPU s/1k ev | Triton CPU s/1k | broker CPU s/1k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_setting.items():

        def m(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return median([r[key] for r in runs])

        lines.append(
            f"| {name} | {len(runs)} | {fmt(m('offered'))} | {fmt(m('rate'))} | "
            f"{fmt(m('e2e_p50'), 1)} / {fmt(m('e2e_p99'), 1)} | "
            f"{', '.join(fmt(r['e2e_p99']) for r in runs)} | "
            f"{fmt(m('proc_p50'), 1)} / {fmt(m('proc_p99'), 1)} | "
            f"{fmt(m('cpu_consumer'), 3)} | {fmt(m('cpu_triton'), 3)} | {fmt(m('cpu_broker'), 3)} |"
        )
    staged = {name: [r["stages"] for r in runs if "stages" in r] for name, runs in by_setting.items()}
    if any(staged.values()):
        lines += [
            "",
            "Where the time goes, p50 / p99 ms per stage (medians over the runs; percentiles of "
            "stages do not add up): input produce → its window's close (producer linger, broker, "
            "fetch, parse, the wait in the window), waiting for an inference slot, inference, "
            "enrich and produce.",
            "",
            "| setting | " + " | ".join(STAGES) + " |",
            "|---|" + "---|" * len(STAGES),
        ]
        for name, runs_stages in staged.items():
            if not runs_stages:
                continue
            cells = [
                f"{fmt(median([r[stage][0] for r in runs_stages]), 1)} / "
                f"{fmt(median([r[stage][1] for r in runs_stages]), 1)}"
                for stage in STAGES
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="pre-loaded events per run")
    parser.add_argument("--naive-events", type=int, default=2_000, help="cap of the naive loop")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--half-rate-seconds", type=float, default=15.0)
    parser.add_argument(
        "--half-rate",
        type=float,
        default=None,
        metavar="EV_S",
        help="the latency step's offered rate (default: half the pipeline's median rate)",
    )
    parser.add_argument("--half-rate-reps", type=int, default=1, help="runs of each latency setting")
    parser.add_argument(
        "--half-rate-set",
        type=topology_override,
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="a setting the latency step also runs, interleaved with the shipped one (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="~2,000 events, 1 rep, output in the workdir")
    parser.add_argument("--workdir", type=Path, default=None, help="default var/bench_throughput")
    parser.add_argument(
        "--out", type=Path, default=None, help="table and plot (default docs/bench_throughput)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="a subset, comma-separated")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--hand-produce",
        choices=("send", "batch"),
        default="send",
        help="hand's produce: send() per output (default) or whole batches (send_batch)",
    )
    parser.add_argument(
        "--hand-batch-bytes",
        type=int,
        default=1_048_576,
        help="hand's producer max_batch_size (the pipeline sink's; aiokafka's default is 16384)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only write the table and plot again from a run's WORKDIR/bench_throughput.json",
    )
    parser.add_argument(
        "--set",
        type=topology_override,
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a topology key (YAML value), e.g. batch.max_size=256; hand and ceiling follow it",
    )
    parser.add_argument("--_worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--_spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    for name, allowed in (("models", MODELS), ("variants", VARIANTS)):
        if not set(getattr(args, name)) <= set(allowed):
            parser.error(f"--{name}: choose from {', '.join(allowed)}")
    # The shipped topology with the overrides (what hand and ceiling follow): a wrong path
    # or value fails here, before any stack starts.
    args.shipped = yaml.safe_load(SHIPPED.read_text())
    for path, value in args.set:
        set_key(args.shipped, path, value)
    if args.set:
        try:
            Topology.model_validate(args.shipped)
        except ValueError as error:
            parser.error(f"--set: the topology is no longer valid: {error}")
    if args.reps == 0 and not args.half_rate:
        parser.error("--reps 0 runs only the latency step, which then needs --half-rate EV_S")
    for path, value in args.half_rate_set:
        alternative = yaml.safe_load(yaml.safe_dump(args.shipped))
        set_key(alternative, path, value)
        try:
            Topology.model_validate(alternative)
        except ValueError as error:
            parser.error(f"--half-rate-set {path}: the topology is no longer valid: {error}")
    if args.smoke:
        args.events, args.naive_events, args.reps, args.half_rate_seconds = 2_000, 200, 1, 3.0
    return args


def set_key(data: dict[str, Any], path: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for the path ``a.b`` (the section must exist)."""
    *parents, key = path.split(".")
    for name in parents:
        if not isinstance(data.get(name), dict):
            raise SystemExit(f"--set {path}: the topology has no section {name!r}")
        data = data[name]
    data[key] = value


# What the bench sets per run (fresh topics and group, the model under test, the stack's
# addresses): an override of these would break the runs' isolation or the comparison.
RESERVED_KEYS = frozenset(
    {"broker", "source", "source.topics", "source.group_id", "sink", "sink.topic"}
    | {"sink.dead_letter_topic", "model", "model.name", "model.url"}
)


def topology_override(text: str) -> tuple[str, Any]:
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY.PATH=VALUE")
    if path in RESERVED_KEYS or path.startswith("broker."):
        raise argparse.ArgumentTypeError(f"{path}: set by the benchmark for every run")
    return path, yaml.safe_load(value)


def main() -> int:
    command = " ".join(["python scripts/bench_throughput.py", *sys.argv[1:]])
    args = parse_args()
    if args._worker:
        return worker_main(args._worker, json.loads(args._spec))
    if args.render is not None:  # a previous run's results, rendered again
        write_outputs(
            (args.out or ROOT / "docs" / "bench_throughput").resolve(), json.loads(args.render.read_text())
        )
        return 0
    if args.workdir is None:
        args.workdir = (
            Path(tempfile.mkdtemp(prefix="bench-throughput-"))
            if args.smoke
            else ROOT / "var" / "bench_throughput"
        )
    workdir = args.workdir.resolve()
    global DUMP_DIR
    DUMP_DIR = workdir / "times"
    out = (
        args.out or (workdir / "bench_throughput" if args.smoke else ROOT / "docs" / "bench_throughput")
    ).resolve()
    repository = workdir / "model_repository"
    ensure_model(repository)
    write_trivial(repository)
    facts = machine()
    fingerprint = code_fingerprint()
    stack = EmbeddedStack.start(workdir, repository)
    rows: list[dict[str, Any]] = []
    halves: list[dict[str, Any]] = []
    try:
        bench = Bench(args, stack, workdir)
        for rep in range(args.reps):
            variants = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
            models = MODELS if rep % 2 == 0 else MODELS[::-1]
            for model in (m for m in models if m in args.models):
                for variant in (v for v in variants if v in args.variants):
                    print(f"rep {rep + 1}/{args.reps}: {model} {variant} ...", file=sys.stderr, flush=True)
                    row = bench.run(model, variant)
                    row["rep"] = rep + 1
                    rows.append(row)
                    print(
                        f"  {row['rate']:,.0f} ev/s, {row['cpu_consumer']:.3f} CPU s/1k, "
                        f"RSS {row['rss_mb']:.0f} MB, Triton rows/request {row['rows_per_request']:.1f}, "
                        f"requests/execution {row['requests_per_execution']:.2f}, "
                        f"Triton queue {row['triton_queue_ms']:.1f} ms/request, "
                        f"compute {row['triton_infer_us_per_row']:.1f} us/row, "
                        f"Triton {row['cpu_triton']:.3f} CPU s/1k "
                        f"(model processes {row['cpu_triton_stub']:.3f}); minor page faults per 1k: "
                        f"process {row['faults_consumer']:,.0f}, "
                        f"model processes {row['faults_triton_stub']:,.0f}",
                        file=sys.stderr,
                        flush=True,
                    )
        rates = [r["rate"] for r in rows if r["variant"] == "pipeline" and r["model"] == "recommender"]
        rate = args.half_rate or (median(rates) / 2 if rates else 0.0)
        if rate > 0 and args.half_rate_seconds > 0:
            settings = [(), *(((path, value),) for path, value in args.half_rate_set)]
            for rep in range(args.half_rate_reps):
                for setting in settings[rep % len(settings) :] + settings[: rep % len(settings)]:
                    name = setting_name(setting)
                    print(
                        f"half rate {rep + 1}/{args.half_rate_reps}: {rate:,.0f} ev/s, {name} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    row = bench.half_rate(rate, args.half_rate_seconds, setting)
                    row["rep"] = rep + 1
                    row["rate_from"] = (
                        "a set rate (--half-rate)" if args.half_rate else "half its median rate"
                    )
                    halves.append(row)
                    h = halves[-1]
                    print(
                        f"  e2e p50 {h['e2e_p50']:.0f} / p99 {h['e2e_p99']:.0f} ms, "
                        f"delivered {h['rate']:,.0f} ev/s",
                        file=sys.stderr,
                        flush=True,
                    )
        batch = bench.batch
    except BaseException:
        # a failed or interrupted run: the runs before it are kept for a closer look
        partial = workdir / "bench_throughput.partial.json"
        partial.write_text(json.dumps({"rows": rows, "half": halves}, indent=1))
        print(f"stopped early: the runs so far are in {partial}", file=sys.stderr)
        raise
    finally:
        stack.stop()
    if code_fingerprint() != fingerprint:
        facts["commit"] += " — **pipeline/ changed during this run: its rows mix code versions**"
        print("warning: pipeline/ changed during the run", file=sys.stderr)
    meta = {
        "command": command,
        "batch": batch,
        **{
            k: getattr(args, k)
            for k in ("events", "naive_events", "reps", "hand_produce", "hand_batch_bytes")
        },
        "overrides": [f"{path}={value}" for path, value in args.set],
    }
    results = {"meta": meta, "rows": rows, "half": halves, "facts": facts}
    (workdir / "bench_throughput.json").write_text(json.dumps(results, indent=1))
    write_outputs(out, results)
    return 0


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """The table (OUT.md) and the plot (OUT.png) of a run's results."""
    text = report(results["meta"], results["rows"], results["half"], results["facts"])
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    if not results["rows"]:  # only the latency step ran (--reps 0): nothing to plot
        print(f"\ntable: {out.with_suffix('.md')}", file=sys.stderr)
        return
    plot(results["rows"], out.with_suffix(".png"))
    print(f"\ntable: {out.with_suffix('.md')}  plot: {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
