"""Produces records the Kafka client cannot decode: a header key that is not UTF-8.

aiokafka encodes header keys with ``str.encode("utf-8")``, so it cannot write one; its pure
Python record builder (AIOKAFKA_NO_EXTENSIONS=1, set before aiokafka is imported) calls
``encode`` on the key object, and a ``str`` whose ``encode`` returns raw bytes gets them onto
the wire inside a valid batch (the CRC is computed over what is written).

The choice of record builder is made when aiokafka is imported, so this runs as its own
process: ``produce_undecodable`` starts it (the fault suite and the soak), or by hand
``python -m pipeline.devstack.poison_producer BOOTSTRAP TOPIC PARTITION COUNT``, which prints
the offsets written, one JSON list. Importing this module does not import aiokafka nor set
the variable (the caller's children, e.g. pipeline workers, must keep the C extensions)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

NOT_UTF8 = b"\xff\xfe-key"
ROOT = Path(__file__).resolve().parents[2]


class RawKey(str):
    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return NOT_UTF8


def produce_undecodable(
    bootstrap: str, topic: str, partition: int, count: int, timeout_s: float = 60.0
) -> list[int]:
    """Write ``count`` undecodable records to ``topic``/``partition`` from a child process;
    returns their offsets. Blocking: call it in a thread from async code."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.devstack.poison_producer",
            bootstrap,
            topic,
            str(partition),
            str(count),
        ],
        cwd=ROOT,
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"poison producer exited with {done.returncode}: {done.stderr[-2000:]}")
    return [int(offset) for offset in orjson.loads(done.stdout)]


async def produce(bootstrap: str, topic: str, partition: int, count: int) -> list[int]:
    """In the child process only (see the module's docstring)."""
    if os.environ.get("AIOKAFKA_NO_EXTENSIONS") != "1":
        raise RuntimeError("AIOKAFKA_NO_EXTENSIONS=1 must be set before aiokafka is imported")
    from pipeline import kafka_clients
    from pipeline.kafka_io import broker_at

    producer = kafka_clients.producer(broker_at(bootstrap), client_suffix="-poison")
    await producer.start()
    try:
        offsets = []
        for i in range(count):
            meta = await producer.send_and_wait(
                topic, b'{"poison": %d}' % i, partition=partition, headers=[(RawKey("k"), b"v")]
            )
            offsets.append(meta.offset)
        return offsets
    finally:
        await producer.stop()


if __name__ == "__main__":
    if "aiokafka" not in sys.modules:
        os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
    bootstrap, topic, partition, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(orjson.dumps(asyncio.run(produce(bootstrap, topic, partition, count))).decode())
