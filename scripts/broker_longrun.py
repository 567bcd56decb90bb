"""Long-run check of the embedded broker with plain aiokafka (no pipeline).

One consumer in a group committing after each fetch joins first; then one producer sends at a
steady rate for a set time. Every interval it prints what was produced and consumed, the lag
and the broker's CPU. It fails (exit 1) when consumption falls behind: the lag exceeds
``--max-lag-s`` seconds of traffic, or the consumer has not caught up ``--drain-s`` seconds
after the producer stops.

The summary's ``broker_cpu_growth_per_min`` is how fast the broker's CPU climbs, in points of
a core per minute: the mean share of the second half of the run (after ``--warmup-s``) less
that of the first half, over the time between the halves' middles. It is read from the
broker's cumulative CPU seconds at three instants, so a busy neighbour or a clock tick moves
it little, unlike the difference of two single-interval readings.

Why: Tansu's memory engine answers every fetch that returns data (and every ListOffsets) by
listing all record batches stored for the partition, and it never deletes a batch. The cost
of a fetch grows with the batches stored; see docs/embedded_broker.md.

    python scripts/broker_longrun.py --minutes 10 --rate 500            # the dev stack's tuning
    python scripts/broker_longrun.py --minutes 3 --rate 500 --linger-ms 5 --fetch-max-wait-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from pipeline import kafka_clients
from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.broker_load import process_cpu_seconds
from pipeline.devstack.tuning import EMBEDDED_BROKER, STACK_GROUP_SESSION, BrokerTuning
from pipeline.kafka_io import broker_at, ensure_topics


@dataclass
class Counters:
    produced: int = 0
    consumed: int = 0
    produce_requests: int = 0
    max_lag: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class LongRun:
    bootstrap: str
    minutes: float
    rate: float
    partitions: int = 4
    tuning: BrokerTuning = EMBEDDED_BROKER
    interval_s: float = 10.0
    warmup_s: float = 5.0
    max_lag_s: float = 5.0
    drain_s: float = 30.0
    broker_pid: int | None = None


async def produce(run: LongRun, topic: str, counters: Counters, stop: asyncio.Event) -> None:
    producer = kafka_clients.producer(broker_at(run.bootstrap), linger_ms=run.tuning.linger_ms)
    await producer.start()
    started = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    try:
        while not stop.is_set():
            n = counters.produced
            value = orjson.dumps({"n": n, "user_id": n % 5000, "ts": time.time_ns() // 1_000_000})
            pending.append(await producer.send(topic, value, key=str(n % 5000).encode()))
            counters.produced += 1
            ahead = counters.produced / run.rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def consume(
    run: LongRun, topic: str, counters: Counters, joined: asyncio.Event, done: asyncio.Event
) -> None:
    consumer = kafka_clients.consumer(
        broker_at(run.bootstrap),
        topic,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=run.tuning.fetch_max_wait_ms,
        max_poll_records=run.tuning.max_poll_records,
        # a 3 s join instead of 5 s
        session_timeout_ms=STACK_GROUP_SESSION["session_timeout_ms"],
        heartbeat_interval_ms=STACK_GROUP_SESSION["heartbeat_interval_ms"],
    )
    await consumer.start()
    try:
        while not done.is_set():
            if consumer.assignment():
                joined.set()
            batch = await consumer.getmany(timeout_ms=200)
            counters.consumed += sum(len(records) for records in batch.values())
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()


async def long_run(run: LongRun) -> dict[str, object]:
    topic = f"longrun-{int(time.time() * 1000)}"
    await ensure_topics(broker_at(run.bootstrap), [topic], run.partitions)
    counters = Counters()
    joined, stop_producing, consumed_all = asyncio.Event(), asyncio.Event(), asyncio.Event()
    consumer = asyncio.create_task(consume(run, topic, counters, joined, consumed_all))
    # The consumer joins before anything is sent: a broker without fetches costs less, and a
    # reading taken before the join would count the fetches' whole cost as growth.
    await asyncio.wait(
        [asyncio.ensure_future(joined.wait()), consumer], timeout=30, return_when="FIRST_COMPLETED"
    )
    if consumer.done():
        consumer.result()
    if not joined.is_set():
        consumed_all.set()
        await asyncio.gather(consumer, return_exceptions=True)
        raise RuntimeError("the consumer did not join its group within 30 s")
    producer = asyncio.create_task(produce(run, topic, counters, stop_producing))
    started = time.monotonic()
    cpu0 = process_cpu_seconds(run.broker_pid) if run.broker_pid else 0.0
    last_t, last_cpu = started, cpu0
    cpu_at: list[tuple[float, float]] = [(0.0, cpu0)]  # (seconds since start, broker CPU seconds)
    failure = ""
    try:
        while time.monotonic() - started < run.minutes * 60 and not failure:
            await asyncio.sleep(run.interval_s)
            for task in (producer, consumer):
                if task.done():
                    task.result()
            now = time.monotonic()
            lag = counters.produced - counters.consumed
            counters.max_lag = max(counters.max_lag, lag)
            row: dict[str, float] = {
                "t_s": round(now - started),
                "produced": counters.produced,
                "consumed": counters.consumed,
                "lag": lag,
            }
            if run.broker_pid:
                cpu = process_cpu_seconds(run.broker_pid)
                row["broker_cpu_pct"] = round(100 * (cpu - last_cpu) / (now - last_t), 1)
                last_cpu = cpu
                cpu_at.append((now - started, cpu))
            last_t = now
            counters.rows.append(row)
            print(orjson.dumps(row).decode(), flush=True)
            if lag > run.max_lag_s * run.rate:
                failure = f"lag {lag} is over {run.max_lag_s}s of traffic at {row['t_s']}s"
        stop_producing.set()
        await producer
        drain_deadline = time.monotonic() + run.drain_s
        while counters.consumed < counters.produced and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.2)
        if not failure and counters.consumed < counters.produced:
            failure = f"{counters.produced - counters.consumed} not consumed {run.drain_s}s after the end"
    finally:
        stop_producing.set()
        consumed_all.set()
        await asyncio.gather(producer, consumer, return_exceptions=True)
    cpu_rows = [r["broker_cpu_pct"] for r in counters.rows if "broker_cpu_pct" in r]
    return {
        "passed": not failure,
        "failure": failure,
        "minutes": run.minutes,
        "rate": run.rate,
        "tuning": asdict(run.tuning),
        "produced": counters.produced,
        "consumed": counters.consumed,
        "max_lag": counters.max_lag,
        "broker_cpu_pct_first": cpu_rows[0] if cpu_rows else None,
        "broker_cpu_pct_min": min(cpu_rows) if cpu_rows else None,
        "broker_cpu_pct_last": cpu_rows[-1] if cpu_rows else None,
        "broker_cpu_s": round(process_cpu_seconds(run.broker_pid) - cpu0, 1) if run.broker_pid else None,
        **cpu_growth(cpu_at, run.warmup_s),
    }


def cpu_growth(cpu_at: list[tuple[float, float]], warmup_s: float) -> dict[str, float | None]:
    """The broker's mean CPU share (% of a core) over each half of the readings after
    ``warmup_s``, and the growth between them in points per minute."""
    kept = [(t, cpu) for t, cpu in cpu_at if t >= warmup_s - 1e-6]
    if len(kept) < 3:
        return {
            "broker_cpu_pct_first_half": None,
            "broker_cpu_pct_second_half": None,
            "broker_cpu_growth_per_min": None,
        }
    (t0, c0), (t2, c2) = kept[0], kept[-1]
    t1, c1 = min(kept[1:-1], key=lambda reading: abs(reading[0] - (t0 + t2) / 2))
    first, second = 100 * (c1 - c0) / (t1 - t0), 100 * (c2 - c1) / (t2 - t1)
    return {
        "broker_cpu_pct_first_half": round(first, 1),
        "broker_cpu_pct_second_half": round(second, 1),
        "broker_cpu_growth_per_min": round(60 * (second - first) / ((t2 - t0) / 2), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--linger-ms", type=int, default=EMBEDDED_BROKER.linger_ms)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=EMBEDDED_BROKER.fetch_max_wait_ms)
    parser.add_argument("--max-poll-records", type=int, default=EMBEDDED_BROKER.max_poll_records)
    parser.add_argument("--max-lag-s", type=float, default=5.0)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=5.0, help="left out of the CPU growth")
    parser.add_argument("--bootstrap", help="an existing broker (default: start the embedded one)")
    args = parser.parse_args(argv)
    tuning = BrokerTuning(args.linger_ms, args.fetch_max_wait_ms, args.max_poll_records)
    broker = None
    if args.bootstrap is None:
        broker = EmbeddedBroker(Path(tempfile.mkdtemp(prefix="longrun-")))
        broker.start()
        broker.wait_until(broker.listening, 30, "listening")
    try:
        run = LongRun(
            bootstrap=args.bootstrap or broker.bootstrap,  # type: ignore[union-attr]
            minutes=args.minutes,
            rate=args.rate,
            partitions=args.partitions,
            tuning=tuning,
            interval_s=args.interval_s,
            warmup_s=args.warmup_s,
            max_lag_s=args.max_lag_s,
            broker_pid=broker.pid if broker else None,
        )
        summary = asyncio.run(long_run(run))
    finally:
        if broker is not None:
            broker.stop()
    print(orjson.dumps(summary).decode())
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
