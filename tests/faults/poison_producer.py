"""Produces records the Kafka client cannot decode: a header key that is not UTF-8.

aiokafka encodes header keys with ``str.encode("utf-8")``, so it cannot write one; its pure
Python record builder (AIOKAFKA_NO_EXTENSIONS=1, set before aiokafka is imported) calls
``encode`` on the key object, and a ``str`` whose ``encode`` returns raw bytes gets them onto
the wire inside a valid batch (the CRC is computed over what is written). Run as its own
process: ``python tests/faults/poison_producer.py BOOTSTRAP TOPIC PARTITION COUNT``; prints
the offsets written, one JSON list."""

from __future__ import annotations

import os

os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"

import asyncio
import sys

import orjson
from aiokafka import AIOKafkaProducer

NOT_UTF8 = b"\xff\xfe-key"


class RawKey(str):
    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return NOT_UTF8


async def produce(bootstrap: str, topic: str, partition: int, count: int) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
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
    bootstrap, topic, partition, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(orjson.dumps(asyncio.run(produce(bootstrap, topic, partition, count))).decode())
