"""Train the matrix-factorisation recommender and write the next version of a Triton model
repository. Events come from a JSONL file, a Kafka topic (read to its end), or the synthetic
generator. Prints the held-out hit rate at K of the model and of the most-popular baseline.

    python scripts/train.py --out var/model_repository                      # synthetic
    python scripts/train.py --events events.jsonl --out var/model_repository
    python scripts/train.py --topic interactions --bootstrap 127.0.0.1:9092 --out repo
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from pipeline.kafka_io import broker_at, read_to_end
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.train import TrainConfig, train_and_write


async def from_topic(topic: str, bootstrap: str) -> list[dict[str, object]]:
    events = []
    async for record in read_to_end(broker_at(bootstrap), topic):
        try:
            events.append(orjson.loads(record.value or b""))
        except orjson.JSONDecodeError:
            continue  # the pipeline dead-letters these; training skips them
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--events", type=Path, help="JSONL file of events")
    source.add_argument("--topic", help="Kafka topic of events")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--synthetic", type=int, default=100_000, help="events to generate")
    parser.add_argument("--out", type=Path, required=True, help="model repository directory")
    parser.add_argument("--name", default="recommender")
    parser.add_argument("--factors", type=int, default=TrainConfig.factors)
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--history-length", type=int, default=16)
    parser.add_argument(
        "--priority-levels",
        type=int,
        default=0,
        help="Triton queue priority levels for the lanes' triton_priority (0: plain queue; "
        "Triton 2.51 stalls ~500 ms with any queue policy, see scripts/bench_triton_queue.py)",
    )
    args = parser.parse_args()

    if args.events:
        events = [orjson.loads(line) for line in args.events.read_bytes().splitlines() if line]
        n_users = n_items = 0
    elif args.topic:
        events = asyncio.run(from_topic(args.topic, args.bootstrap))
        n_users = n_items = 0
    else:
        gen = GeneratorConfig()
        events = list(EventGenerator(gen).events(args.synthetic))
        n_users, n_items = gen.users, gen.items
    report = train_and_write(
        events,
        args.out,
        n_users,
        n_items,
        TrainConfig(factors=args.factors, iterations=args.iterations),
        top_k=args.top_k,
        history_length=args.history_length,
        model_name=args.name,
        priority_levels=args.priority_levels,
    )
    print(orjson.dumps(report.__dict__).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
