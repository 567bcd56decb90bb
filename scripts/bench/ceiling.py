"""Triton alone (`--_worker ceiling`): requests of the pipeline's batch size built in
advance and sent over a few streams x in-flight shapes, optionally with the tensors in
system shared memory. The most the model server gives on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from typing import Any

import numpy as np

from .events import Events
from .stats import steady
from .triton_io import Stream, inputs_of, request_arrays, requested_outputs


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
