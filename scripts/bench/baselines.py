"""The loops the pipeline is compared with, each run in a worker process of its own
(`--_worker naive|hand`): the naive one record at a time, and the best hand-written batched
asyncio loop (consume, infer and produce overlapping, commits of the lowest unfinished
offsets)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from pipeline import kafka_clients
from pipeline.devstack.tuning import EMBEDDED_BROKER
from pipeline.kafka_io import broker_at
from pipeline.topology.schema import Broker

from .config import now_ms
from .triton_io import Stream, request_inputs, requested_outputs


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
