"""`pipeline replay` on the real broker and Triton: a user's CSV export (own columns, ratings,
epoch seconds from years ago) backfilled beside live traffic, a dry run that predicts the
dead letters, resuming after Ctrl-C and SIGKILL without a row sent twice, and a big file in
bounded memory."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from pipeline import kafka_clients, procfs
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.worker import PipelineProcess, topology_document
from pipeline.kafka_io import ensure_topology_topics, read_to_end
from pipeline.recsys.generator import GeneratorConfig
from pipeline.replay.dry_run_report import EXAMPLES_PER_REASON
from pipeline.replay.sender import MAX_PENDING
from pipeline.topology.schema import Topology
from tests.integration.harness import ROOT, run_pipeline_command

pytestmark = pytest.mark.integration

TOPOLOGIES = ROOT / "topologies"
YEAR_S = 365 * 86_400
HISTORY_START_S = 1_500_000_000  # July 2017: years before any wall-clock age bound
ITEMS = GeneratorConfig().items  # the served model's catalogue
MOVIES = (TOPOLOGIES / "mappings" / "ratings.yaml").read_text()  # the shipped example


def write_csv(path: Path, rows: int, start_s: int = HISTORY_START_S, users: int = 500, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    item = rng.integers(0, ITEMS, rows)
    rating = rng.choice([1.0, 2.5, 3.5, 4.0, 5.0], rows)
    ts = start_s + np.arange(rows) * 60  # sorted, a minute apart: years of history for big files
    lines = (f"{u},{i},{r},{t}\n" for u, i, r, t in zip(user, item, rating, ts, strict=True))
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as out:
        out.write("userId,movieId,rating,timestamp\n")
        out.writelines(lines)


def save(topology: dict[str, Any] | Topology, path: Path) -> Path:
    data = topology_document(topology) if isinstance(topology, Topology) else topology
    path.write_text(yaml.safe_dump(data))
    return path


def replay_args(topology: Path, *args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "replay",
        "--topology",
        str(topology),
        "--progress",
        "log",
        *map(str, args),
    ]


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return dict(orjson.loads(proc.stdout.strip().splitlines()[-1]))


def replay(topology: Path, *args: str | Path, timeout_s: float = 300) -> dict[str, Any]:
    proc = run_pipeline_command(
        "replay", "--topology", topology, "--progress", "log", *args, timeout_s=timeout_s
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return summary_of(proc)


def live_and_backfill(stack: EmbeddedStack) -> dict[str, Any]:
    """topologies/live_and_backfill.yaml on fresh topics (its lanes pointed at them)."""
    data = topology_on_stack(stack, fresh=False, base=TOPOLOGIES / "live_and_backfill.yaml")
    tag = uuid.uuid4().hex[:8]
    live, backfill = f"live-{tag}", f"bf-{tag}"
    data["source"].update(topics=[live, backfill], group_id=f"g-{tag}")
    data["sink"].update(topic=f"out-{tag}", dead_letter_topic=f"dlq-{tag}")
    for lane in data["lanes"]:
        if lane.get("match", {}).get("topics"):
            lane["match"]["topics"] = [live]
    return data


async def records(topology: Topology, topic: str) -> list[Any]:
    return [rec async for rec in read_to_end(topology.broker, topic)]


async def produce_live(topology: Topology, stop: asyncio.Event, rate: float) -> list[float]:
    """Live events at ``rate``/s until ``stop``; returns their produce times (epoch ms)."""
    producer = kafka_clients.producer(topology.broker, client_suffix="-live", linger_ms=2)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        while not stop.is_set():
            now_ms = time.time_ns() // 1_000_000
            kind = ("view", "click", "purchase")[sent % 3]
            doc = {
                "event_id": f"live-{sent}",
                "user_id": 100_000 + sent % 300,
                "item_id": sent % ITEMS,
                "type": kind,
                "ts": now_ms,
            }
            await producer.send(
                topology.source.topics[0], orjson.dumps(doc), key=str(doc["user_id"]).encode()
            )
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()
    return [sent]


async def test_a_csv_export_backfilled_beside_live_traffic(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Years-old rated history (own column names) through the live-and-backfill topology while
    live events flow: every input accounted for, the history recommended (not too_old), its
    outputs in the backfill lane and marked, the live lane's latency within a generous bound."""
    data = live_and_backfill(stack)
    topology = Topology.model_validate(data)
    await ensure_topology_topics(topology)
    path = save(data, tmp_path / "topology.yaml")
    export = tmp_path / "ratings.csv"
    write_csv(export, 3_000)
    (tmp_path / "movies.yaml").write_text(MOVIES)
    worker = PipelineProcess(topology, tmp_path / "worker")
    worker.start_ready()
    stop_live = asyncio.Event()
    try:
        live = asyncio.create_task(produce_live(topology, stop_live, rate=100))
        proc = await asyncio.create_subprocess_exec(
            *replay_args(
                path,
                "--file",
                export,
                "--mapping",
                tmp_path / "movies.yaml",
                "--to",
                topology.source.topics[1],
                "--rate",
                "1000",
                "--checkpoint",
                tmp_path / "ck.json",
            ),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-3000:]
        summary = orjson.loads(out.decode().strip().splitlines()[-1])
        stop_live.set()
        (live_sent,) = await live
        assert summary["acknowledged"] == 3_000 and summary["finished"]
        # wait until the pipeline has finished everything
        deadline = time.monotonic() + 90
        audit: dict[str, Any] = {}
        while time.monotonic() < deadline:  # in flight counts as lost: every input answered
            done = run_pipeline_command("audit", path, "--in-flight-ms", "0", timeout_s=120)
            audit = orjson.loads(done.stdout.splitlines()[-1])
            if audit["lost"] == 0 and audit["events_in"] == 3_000 + live_sent:
                break
            await asyncio.sleep(2)
    finally:
        stop_live.set()
        worker.stop(worker.stop_grace_s)
    assert audit["lost"] == 0 and audit["in_flight"] == 0, audit
    assert audit["events_in"] == 3_000 + live_sent
    assert audit["dead_letters"] == 0, audit["dead_letter_reasons"]  # years old, yet recommended

    outputs = await records(topology, topology.sink.topic)
    by_topic: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for rec in outputs:
        doc = orjson.loads(rec.value)
        by_topic.setdefault(doc["sources"][0]["topic"], []).append((rec, doc))
    backfilled = by_topic[topology.source.topics[1]]
    assert {doc["lane"] for _, doc in backfilled} == {"backfill"}
    assert all(dict(rec.headers).get("origin") == b"backfill" for rec, _ in backfilled)
    live_docs = by_topic[topology.source.topics[0]]
    assert {doc["lane"] for _, doc in live_docs} <= {"purchases", "live"}
    # live latency: window opened (right after the fetch) → output produced (a generous bound)
    latency = sorted(rec.timestamp_ms - doc["window"]["start_ms"] for rec, doc in live_docs)
    p99 = latency[int(0.99 * (len(latency) - 1))]
    print(f"live outputs {len(live_docs)}, in-process p99 {p99} ms; backfill outputs {len(backfilled)}")
    assert p99 < 2_000


async def test_dry_run_predicts_the_dead_letters_and_the_live_topology_rejects_history(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """A file with good history rows and bad rows: the dry run's counts per reason are what
    the pipeline then dead-letters, for the backfill topology (history accepted) and for the
    live one (history too_old), and its examples are the first rows of each reason the
    pipeline dead-letters. The live one would dead-letter every row: that dry run exits 1."""
    export = tmp_path / "mixed.csv"
    write_csv(export, 60)
    with export.open("a") as out:
        out.write(f"{'u' * 300},12,4.0,1500000100\n" * 3)  # a string id past 256 characters → out_of_range
        out.write("7,12,4.0,yesterday\n" * 2)  # time not a number → wrong_type
        out.write(f"7,{2**60},4.0,1500000100\n")  # item id past 2^53 → out_of_range
        out.write("7,12,,1500000100\n" * 4)  # no rating → the type is passed on empty: unknown_type
    (tmp_path / "movies.yaml").write_text(MOVIES)
    for base, expect_too_old in (("backfill.yaml", 0), ("recommendations.yaml", 60)):
        data = topology_on_stack(stack, base=TOPOLOGIES / base)
        topology = Topology.model_validate(data)
        await ensure_topology_topics(topology)
        path = save(data, tmp_path / base)
        args = ("--file", export, "--mapping", tmp_path / "movies.yaml")
        proc = run_pipeline_command("replay", "--topology", path, "--progress", "log", *args, "--dry-run")
        assert proc.returncode == (1 if expect_too_old else 0), proc.stderr[-3000:]
        assert ("--max-reject-share" in proc.stderr) == bool(expect_too_old), proc.stderr[-3000:]
        dry = summary_of(proc)
        assert dry["rows"] == 70 and dry["valid"] == 60 - expect_too_old
        assert dry["dead_letters"].get("too_old", 0) == expect_too_old
        assert dry["dead_letters"]["wrong_type"] == 2 and dry["dead_letters"]["unknown_type"] == 4
        assert dry["dead_letters"]["out_of_range"] == 4
        assert replay(path, *args, "--checkpoint", tmp_path / f"{base}.ck")["acknowledged"] == 70
        worker = PipelineProcess(topology, tmp_path / base.split(".")[0])
        worker.start_ready()
        try:
            deadline = time.monotonic() + 60
            dead: list[Any] = []
            while time.monotonic() < deadline:  # until all 70 are answered
                dead = await records(topology, topology.sink.dead_letter_topic)
                outputs = await records(topology, topology.sink.topic)
                if len(dead) + sum(len(orjson.loads(r.value)["sources"]) for r in outputs) >= 70:
                    break
                await asyncio.sleep(1)
        finally:
            worker.stop(worker.stop_grace_s)
        headers = [rec.headers for rec in dead]
        reasons = Counter(dict(h)["dlq.reason"].decode() for h in headers)
        assert dict(reasons) == dry["dead_letters"], (base, reasons)
        first_rows: dict[str, list[int]] = {}
        for row, reason in sorted(
            (int(h["replay.row"]), h["dlq.reason"].decode()) for h in map(dict, headers)
        ):
            first_rows.setdefault(reason, []).append(row)
        examples = {reason: [shown["row"] for shown in rows] for reason, rows in dry["examples"].items()}
        assert examples == {reason: rows[:EXAMPLES_PER_REASON] for reason, rows in first_rows.items()}


def row_numbers(recs: list[Any]) -> Counter[int]:
    return Counter(int(dict(rec.headers)["replay.row"]) for rec in recs)


def wait_for_checkpoint(path: Path, beyond: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            row = int(orjson.loads(path.read_bytes())["next_row"])
        except (OSError, ValueError):
            row = 0
        if row > beyond:
            return row
        time.sleep(0.1)
    raise TimeoutError(f"checkpoint not past row {beyond}")


async def test_resume_after_ctrl_c_and_sigkill_sends_no_row_twice(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    data = topology_on_stack(stack, base=TOPOLOGIES / "backfill.yaml")
    topology = Topology.model_validate(data)
    path = save(data, tmp_path / "backfill.yaml")
    export = tmp_path / "history.csv.gz"
    write_csv(export, 20_000)
    (tmp_path / "movies.yaml").write_text(MOVIES)
    checkpoint = tmp_path / "resume.json"
    args = replay_args(
        path, "--file", export, "--mapping", tmp_path / "movies.yaml", "--checkpoint", checkpoint
    )

    def start(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*args, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = start("--rate", "3000")
    wait_for_checkpoint(checkpoint, 3_000, first)
    first.send_signal(signal.SIGINT)  # Ctrl-C: the sends in flight finish, the checkpoint is saved
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    stopped = orjson.loads(out.strip().splitlines()[-1])
    assert not stopped["finished"] and stopped["acknowledged"] == stopped["next_row"] == stopped["sent"]

    second = start("--rate", "3000")
    killed_past = wait_for_checkpoint(checkpoint, stopped["next_row"] + 3_000, second)
    os.kill(second.pid, signal.SIGKILL)  # no chance to save: sends after the checkpoint are in the topic
    second.communicate(timeout=30)

    third = start()
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err[-3000:]
    done = orjson.loads(out.strip().splitlines()[-1])
    assert done["finished"] and done["resumed_at_row"] >= killed_past
    print(f"resumed at row {done['resumed_at_row']}, {done['already_sent']} rows found already sent")

    sent = row_numbers(await records(topology, topology.source.topics[0]))
    assert set(sent) == set(range(20_000))  # none missing
    assert max(sent.values()) == 1  # none sent twice
    again = start()  # a finished replay run again sends nothing
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and orjson.loads(out.strip().splitlines()[-1])["sent"] == 0


async def test_a_big_export_replays_in_bounded_memory(stack: EmbeddedStack, tmp_path: Path) -> None:
    """The file is read as a stream and at most MAX_PENDING (20,000) sends await their
    acknowledgement, so the replay's memory stops growing once that window has filled, at
    its first rows. This test replayed a million rows under a 150 MB bound (42 s of the
    suite's budget): with ~82 MB of interpreter and clients, that caught a replay keeping
    more than ~70 bytes a row. Here 200,000 rows (10 windows): the replay's peak RSS once a
    window is acknowledged is its plateau, and the rest of the file, typically ~160,000 rows
    and at least 100,000, may add at most 10 MB to it: ~65 bytes a row, 105 at worst. A full
    window itself measured ~4 MB (82.3 MB paced to stay nearly empty, 86.3 MB full), so a
    window still filling when the plateau is read cannot fail it. Measured: 86.3 MB at
    40,000 rows, 86.7 MB at 250,000, 87.2 MB at 1,000,000; with 100 bytes a row kept on
    purpose (a sitecustomize wrapping Sender._send), 88.7 MB at row 27,393 and 105.4 MB at
    the end: failed."""
    data = topology_on_stack(stack, base=TOPOLOGIES / "backfill.yaml")
    path = save(data, tmp_path / "backfill.yaml")
    rows = 10 * MAX_PENDING
    export = tmp_path / "big.csv.gz"
    write_csv(export, rows, users=50_000)
    (tmp_path / "movies.yaml").write_text(MOVIES)
    checkpoint = tmp_path / "m.json"
    args = replay_args(
        path, "--file", export, "--mapping", tmp_path / "movies.yaml", "--checkpoint", checkpoint
    )
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        plateau_row = wait_for_checkpoint(checkpoint, MAX_PENDING, proc, timeout_s=120)
        plateau_mb = procfs.peak_rss_mb(proc.pid)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert plateau_mb is not None, "the replay was gone before its plateau was read"
    summary = orjson.loads(out.strip().splitlines()[-1])
    print(
        f"{rows:,} rows: {summary['elapsed_s']} s, peak RSS {plateau_mb:.1f} MB at row {plateau_row:,}, "
        f"{summary['peak_rss_mb']} MB at the end"
    )
    assert summary["acknowledged"] == rows and summary["finished"]
    assert plateau_row <= rows - 5 * MAX_PENDING, "the plateau was read too late"
    assert summary["peak_rss_mb"] - plateau_mb < 10  # measured 0.0 MB over the last 169,000 rows
    assert summary["peak_rss_mb"] < 150  # measured 87 MB: the interpreter, clients and 20k pending sends


async def test_a_row_the_producer_refuses_is_set_aside_and_the_replay_goes_on(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """Issue 24 item 5: a 2 MB row (the producer's max_request_size is 1 MiB; the embedded
    broker itself would take it) stopped the replay at that row on every run. It goes to the
    reject file beside the checkpoint with its number and reason, the rest is sent, and the
    dry run counts it apart."""
    data = topology_on_stack(stack, base=TOPOLOGIES / "backfill.yaml")
    topology = Topology.model_validate(data)
    path = save(data, tmp_path / "backfill.yaml")
    export = tmp_path / "events.jsonl"
    rows = [{"event_id": f"e{i}", "user_id": i, "item_id": 1, "type": "view", "ts": 1} for i in range(5)]
    rows[2]["pad"] = "x" * 2_000_000
    export.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    assert replay(path, "--file", export, "--dry-run")["rejected"] == {"record_too_large": 1}
    checkpoint = tmp_path / "ck.json"
    summary = replay(path, "--file", export, "--checkpoint", checkpoint)
    assert summary["finished"] and (summary["acknowledged"], summary["rejected"]) == (4, 1), summary
    assert summary["rejects"] == str(tmp_path / "ck.rejects.jsonl")
    (line,) = (tmp_path / "ck.rejects.jsonl").read_bytes().splitlines()
    rejected = orjson.loads(line)
    assert (rejected["row"], rejected["reason"]) == (2, "record_too_large")
    assert orjson.loads(rejected["value"])["event_id"] == "e2"  # the row itself, to fix and send
    assert sorted(row_numbers(await records(topology, topology.source.topics[0]))) == [0, 1, 3, 4]
    again = replay(path, "--file", export, "--checkpoint", checkpoint)  # finished: nothing again
    assert again["sent"] == 0 and again["finished"]
