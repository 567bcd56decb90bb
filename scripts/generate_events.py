"""Write deterministic synthetic interaction events as JSONL (a file or stdout), or produce
them to a Kafka topic.

    python scripts/generate_events.py --count 100000 --out events.jsonl
    python scripts/generate_events.py --count 5000 --topic interactions --bootstrap 127.0.0.1:9092 --now
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from pipeline import kafka_clients
from pipeline.kafka_io import broker_at
from pipeline.recsys.generator import EventGenerator, GeneratorConfig


async def produce(events: list[dict[str, object]], topic: str, bootstrap: str) -> None:
    producer = kafka_clients.producer(broker_at(bootstrap), linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, orjson.dumps(e), key=str(e["user_id"]).encode()) for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=GeneratorConfig.users)
    parser.add_argument("--items", type=int, default=GeneratorConfig.items)
    parser.add_argument("--now", action="store_true", help="timestamps from now on (live traffic)")
    parser.add_argument("--out", help="JSONL file (default: stdout)")
    parser.add_argument("--topic", help="produce to this topic instead of writing JSONL")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()

    start = time.time_ns() // 1_000_000 if args.now else GeneratorConfig.start_ms
    config = GeneratorConfig(users=args.users, items=args.items, seed=args.seed, start_ms=start)
    events = list(EventGenerator(config).events(args.count))
    if args.topic:
        asyncio.run(produce(events, args.topic, args.bootstrap))
        return 0
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    for event in events:
        out.write(orjson.dumps(event) + b"\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
