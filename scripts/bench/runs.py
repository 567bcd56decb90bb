"""One run of one variant on the embedded stack, from the parent: topics pre-loaded, the
consuming process started and sampled until it is done, its outputs read back and
summarised, with what Triton counted of it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import procfs
from pipeline.devstack.process import ChildProcess
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.worker import PipelineProcess
from pipeline.kafka_io import broker_at, ensure_topics, ensure_topology_topics
from pipeline.topology.schema import Topology

from .cli import set_key
from .config import (
    CEILING_SECONDS,
    CEILING_SHAPES,
    CEILING_VARIANTS,
    ENTRY,
    PARTITIONS,
    ROOT,
    RUN_TIMEOUT_S,
    SAMPLE_S,
)
from .events import Events, paced, preload, read_outputs
from .model import STRING_SUFFIX
from .report import setting_name
from .sampling import Sampler, peak_rss_mb
from .stats import stages, summarise


class Bench:
    def __init__(self, args: argparse.Namespace, stack: EmbeddedStack, workdir: Path) -> None:
        self.args = args
        self.stack = stack
        self.runs = workdir / "runs"
        self.dump_dir = workdir / "times"  # each run's output and take times, for a closer look
        self.runs.mkdir(parents=True, exist_ok=True)
        self.broker = broker_at(stack.broker.bootstrap)
        self.shipped: dict[str, Any] = args.shipped  # hand and ceiling follow its batch, streams, ...
        self.batch = int(self.shipped["batch"]["max_size"])
        self.events = Events(max(args.events, args.naive_events))
        self.string_events = Events(args.events, strings=True)

    def sampler(self, consumer_pid: int) -> Sampler:
        triton = self.stack.triton.pid
        return Sampler(
            {
                "consumer": [consumer_pid],
                "triton": [triton, *procfs.children(triton)],
                "triton_stub": procfs.children(triton),  # the Python backend's model processes (stubs)
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
        served = model + STRING_SUFFIX if variant == "pipeline-strings" else model
        before = self.triton_counts(served)
        row = self.run_variant(model, variant)
        after = self.triton_counts(served)
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
        if variant in ("pipeline", "pipeline-2w", "pipeline-state"):
            workers = 2 if variant == "pipeline-2w" else 1
            return self.run_pipeline(model, tag, workers, durable_state=variant == "pipeline-state")
        if variant == "pipeline-strings":
            return self.run_pipeline(model, tag, strings=True)
        if variant in CEILING_VARIANTS:
            return self.run_ceiling(model, tag, shm=variant == "ceiling-shm")
        events = self.args.events if variant == "hand" else min(self.args.naive_events, self.args.events)
        spec = self.worker_spec(variant, model, tag, events)
        asyncio.run(ensure_topics(self.broker, [spec["input"], spec["output"]], PARTITIONS))
        inputs = asyncio.run(preload(self.broker, spec["input"], self.events, events))
        sampler, rss = self.run_worker(variant, tag, spec)
        outputs = asyncio.run(read_outputs(self.broker, spec["output"]))
        return summarise(variant, model, outputs, inputs, sampler, rss, "fetched_ms", self.dump_dir)

    def run_worker(self, kind: str, tag: str, spec: dict[str, Any]) -> tuple[Sampler, float]:
        """A worker process (`--_worker KIND`), sampled until its status file is written:
        the samples and its peak RSS."""
        proc = ChildProcess(
            f"{kind}-{tag}",
            [sys.executable, str(ENTRY), "--_worker", kind, "--_spec", json.dumps(spec)],
            self.runs / f"{kind}-{tag}.log",
            cwd=ROOT,
        )
        try:
            proc.start()
            sampler = self.sampler(proc.pid)
            self.wait(proc, sampler, Path(spec["status"]).exists, 0.1)
            return sampler, peak_rss_mb(proc.pid)
        finally:
            proc.stop()

    def topology(self, model: str, setting: tuple[tuple[str, Any], ...] = ()) -> Topology:
        data = topology_on_stack(self.stack)  # fresh topics and group
        data["model"]["name"] = model
        for path, value in (*self.args.set, *setting):
            set_key(data, path, value)
        return Topology.model_validate(data)

    def run_pipeline(
        self, model: str, tag: str, workers: int = 1, durable_state: bool = False, strings: bool = False
    ) -> dict[str, Any]:
        """``strings``: the events in string ids, on the model's twin with a string catalogue."""
        state = (("state.dir", str(self.runs / f"state-{tag}")),) if durable_state else ()
        topology = self.topology(model + STRING_SUFFIX if strings else model, state)
        asyncio.run(ensure_topology_topics(topology, PARTITIONS))
        topic = topology.source.topics[0]
        events = self.string_events if strings else self.events
        inputs = asyncio.run(preload(self.broker, topic, events, self.args.events))
        worker = PipelineProcess(topology, self.runs, name=f"pipeline-{tag}", workers=workers)
        try:
            worker.start()
            sampler = self.sampler(worker.pid)
            self.wait(worker, sampler, lambda: finished(worker) >= self.args.events, 0.5)
            rss = sum(peak_rss_mb(pid) for pid in (worker.pid, *procfs.children(worker.pid)))
            dead = counter(worker, "pipeline_dead_letters_total")
        finally:
            worker.stop(worker.stop_grace_s)
        outputs = asyncio.run(read_outputs(self.broker, topology.sink.topic))
        variant = (
            "pipeline-strings"
            if strings
            else "pipeline-state"
            if durable_state
            else "pipeline"
            if workers == 1
            else f"pipeline-{workers}w"
        )
        row = summarise(variant, model, outputs, inputs, sampler, rss, "window", self.dump_dir)
        row["dead_letters"] = dead
        return row

    def run_ceiling(self, model: str, tag: str, shm: bool = False) -> dict[str, Any]:
        spec = self.worker_spec("ceiling", model, tag, self.args.events)
        spec["shm"] = shm
        sampler, rss = self.run_worker("ceiling", tag, spec)
        result = json.loads(Path(spec["status"]).read_text())
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
        row = summarise("pipeline", "recommender", outputs, inputs, sampler, rss, "window", self.dump_dir)
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


def counter(worker: PipelineProcess, name: str) -> float:
    try:
        text = worker.metrics()
    except (OSError, urllib.error.URLError):
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def finished(worker: PipelineProcess) -> float:
    """Events the pipeline finished (recommended or dead-lettered, acknowledged)."""
    return counter(worker, "pipeline_events_finished_total")
