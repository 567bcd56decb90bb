"""`pipeline dev` as a user runs it: its own broker and Triton, a summary line, and no
process left behind, whether it ends by itself or by SIGTERM; what it prints at start is
where it can be watched from (the broker, /metrics, `pipeline tail`, `pipeline audit`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml

from pipeline.cli import DEFAULT_TOPOLOGY
from pipeline.devstack.process import free_port
from pipeline.devstack.tuning import STACK_GROUP_SESSION
from pipeline.kafka_clients import check_connection
from pipeline.kafka_io import broker_at
from tests.integration.harness import processes_mentioning, run_pipeline_command

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def dev_command(workdir: Path, *extra: str, repository: Path | None = None) -> list[str]:
    """`pipeline dev` on ``workdir``, serving ``repository`` (default: the workdir's own)."""
    served = repository or workdir / "model_repository"
    return [
        sys.executable,
        "-m",
        "pipeline",
        "dev",
        "--workdir",
        str(workdir),
        "--model-repository",
        str(served),
        *extra,
    ]


STOP_BOUND_S = 60.0  # dev's own stop: the pipeline's drain, then the broker's and Triton's


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM and the stop's bound, then SIGKILL: a failed assertion must not orphan a
    stack (a SIGKILLed dev's children get SIGTERM from the kernel, but only at that)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_dev_accounts_for_every_event_and_leaves_no_process(tmp_path: Path) -> None:
    done = subprocess.run(
        dev_command(tmp_path, "--events", "2000"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 2000
    assert summary["lost"] == 0
    assert summary["dead_letters"] == 0
    assert summary["duplicates"] == 0
    assert summary["recommendations"] > 0
    assert summary["throughput_eps"] > 0 and summary["p99_ms"] >= summary["p50_ms"] > 0
    assert "one per user per window" in summary["reading"]["recommendations"]  # explains itself
    assert "100 ms" in summary["reading"]["latency"]
    assert not (tmp_path / "topology.yaml").exists()  # tail then says no dev stack runs there
    assert processes_mentioning(str(tmp_path)) == []


def test_dev_with_reacting_users(stack, tmp_path: Path) -> None:
    """--reacting: users' next items follow the recommendations the run reads back. The
    session's model learned the generator's tastes, so many of them do (~40 %; ~3 % when the
    generator's tastes were not the model's)."""
    shutil.copytree(stack.model_repository, tmp_path / "model_repository")  # no training
    topology = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    topology["source"].update(STACK_GROUP_SESSION)  # a 3 s join instead of 5 s
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(topology))
    done = subprocess.run(
        dev_command(tmp_path, "--events", "1500", "--rate", "600", "--reacting", "--topology", str(file)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 1500 and summary["lost"] == 0
    reactions = summary["reactions"]
    assert reactions["recommendations"] == summary["recommendations"]  # the follower's, handed on
    assert reactions["with_recommendation"] > 50, reactions  # a user's next event after its answer
    assert reactions["reacted"] > 0.25 * reactions["with_recommendation"], reactions
    assert processes_mentioning(str(tmp_path)) == []


def test_dev_experiment_trained_against_popularity(stack, tmp_path: Path) -> None:
    """--experiment: the trained model against the popularity baseline, 50/50 by user, a
    random version in the shadow, users reacting. The trained arm's online hit@10 is clearly
    higher (its interval above the baseline's), no user is shown two arms, and the shadow is
    judged (near zero) but writes nothing."""
    shutil.copytree(stack.model_repository, tmp_path / "model_repository")  # the trained model
    topology = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    topology["source"].update(STACK_GROUP_SESSION)
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(topology))
    done = subprocess.run(
        dev_command(tmp_path, "--events", "4000", "--rate", "800", "--experiment", "--topology", str(file)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 4000 and summary["lost"] == 0 and summary["dead_letters"] == 0
    arms = summary["experiment"]["online_hit_at_k"]
    trained, popularity, shadow = arms["trained"], arms["popularity"], arms["random"]
    assert min(trained["judged"], popularity["judged"], shadow["judged"]) > 500, arms
    assert trained["hit_rate_95"][0] > popularity["hit_rate_95"][1], arms
    assert shadow["shadow"] and shadow["hit_rate"] < 0.02, arms
    assert summary["experiment"]["users_in_two_arms"] == 0
    seen = summary["reactions"]["by_model"]  # every recommendation read back, by arm
    assert set(seen) == {"trained/recommender_ab:1", "popularity/recommender_ab:2"}, seen
    assert summary["reactions"]["recommendations"] == summary["recommendations"]
    assert processes_mentioning(str(tmp_path)) == []


def test_dev_recycles_its_broker_and_stops_cleanly_on_sigterm(stack, tmp_path: Path) -> None:
    """The always-on mode: a broker restart every few seconds (a growth of 0 makes every
    report call for one), then SIGTERM. Nothing is lost across the restarts. The session's
    model (training is the test above's)."""
    shutil.copytree(stack.model_repository, tmp_path / "model_repository")
    proc = subprocess.Popen(
        dev_command(tmp_path, "--rate", "300", "--report-every", "3", "--recycle-growth", "0"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    restarts = 0
    try:
        deadline = time.monotonic() + 240
        assert proc.stderr is not None
        for line in proc.stderr:
            restarts += "embedded broker restarted empty" in line
            if restarts == 1 or time.monotonic() > deadline:
                break
        assert processes_mentioning(str(tmp_path)), "broker and Triton should be running"
        time.sleep(2)  # let events flow into the second epoch
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        _stop(proc)
    assert restarts == 1
    assert proc.returncode == 0
    summary = orjson.loads(out.strip().splitlines()[-1])
    assert summary["broker_recycles"] >= 1
    assert summary["events_in"] > 500  # at 300/s through a recycle: two epochs' worth
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert processes_mentioning(str(tmp_path)) == []


def test_sigterm_while_the_stack_starts_leaves_no_process(stack, tmp_path: Path) -> None:
    """Before `pipeline dev` has its own signal handlers (the broker and Triton starting),
    SIGTERM still unwinds through their stops: exit 130, nothing orphaned."""
    shutil.copytree(stack.model_repository, tmp_path / "model_repository")  # no training
    proc = subprocess.Popen(dev_command(tmp_path), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(processes_mentioning(str(tmp_path))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the broker, then Triton (still loading its model)
        started = processes_mentioning(str(tmp_path))
        assert started, "the broker should have started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted while starting" in err
    # A Triton still starting when the signal came is stopped by its watchdog once dev has
    # exited (SIGTERM, SIGKILL 10 s later): gone within that bound, not at dev's exit.
    deadline = time.monotonic() + 15
    while (left := processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except urllib.error.URLError:  # not listening yet (the endpoint starts with the pipeline)
        return 0, ""


def _until(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def test_dev_can_be_watched_at_the_addresses_it_prints(stack, tmp_path: Path) -> None:
    """One dev run, watched as its start lines say: the broker answers at the address
    printed, /metrics and /readyz at the URL printed (the port PIPELINE_METRICS_PORT asked
    for, on a topology taking its broker from ``${KAFKA_BOOT}``, set), `pipeline tail`
    finds the stack by its workdir and prints a recommendation, and `pipeline audit` on the
    running topology counts nothing lost. Then SIGKILL, which runs no handler and no atexit:
    the broker, Triton and Triton's backend stub stop by their watchdogs all the same."""
    topology = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    topology["broker"]["bootstrap_servers"] = "${KAFKA_BOOT}"  # dev puts its own on top
    topology["source"].update(STACK_GROUP_SESSION)
    file = tmp_path / "topology.in.yaml"
    file.write_text(yaml.safe_dump(topology))
    port = free_port()
    env = {**os.environ, "KAFKA_BOOT": "elsewhere:9092", "PIPELINE_METRICS_PORT": str(port)}
    command = dev_command(
        tmp_path, "--rate", "300", "--topology", str(file), repository=stack.model_repository
    )
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        printed = []
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            printed.append(line)
            if line.lstrip().startswith("watch") or time.monotonic() > deadline:
                break
        text = "".join(printed)
        broker = re.search(r"broker +(\S+)", text)
        metrics = re.search(r"metrics +(http://\S+)/metrics", text)
        assert broker and metrics and "triton.log" in text and "broker.log" in text, text
        assert metrics.group(1) == f"http://127.0.0.1:{port}", text
        assert asyncio.run(check_connection(broker_at(broker.group(1)), timeout_s=5))
        assert f"pipeline tail --workdir {tmp_path} recommendations" in text, text

        _until(lambda: _get(f"{metrics.group(1)}/readyz")[0] == 200, 60, "/readyz 200")
        status, exposition = _get(f"{metrics.group(1)}/metrics")
        assert status == 200 and "pipeline_events_consumed_total" in exposition

        def tailed() -> str | None:
            done = run_pipeline_command("tail", "--workdir", tmp_path, "-n", "3", "recommendations")
            assert done.returncode == 0, done.stderr
            return done.stdout if " → " in done.stdout else None

        shown = _until(tailed, 30, "a recommendation in pipeline tail")
        assert re.search(
            r"recommendations\[\d\]@\d+  user \d+ → \d+(, \d+)* \(recommender v\d+, \d+ ms", shown
        )

        audited = run_pipeline_command("audit", tmp_path / "topology.yaml", timeout_s=60)
        assert audited.returncode == 0, audited.stderr[-2000:]
        books = orjson.loads(audited.stdout.splitlines()[-1])
        # still fed: the young unanswered inputs are in flight, with the group consuming them
        assert books["lost"] == 0 and books["events_in"] > 0 and "in_flight" in books, books
        assert books["group_members"] >= 1, books
        assert len(processes_mentioning(str(tmp_path))) >= 3  # the broker, Triton and its stub
        proc.kill()
        proc.wait()
    finally:
        _stop(proc)
    deadline = time.monotonic() + 30
    while (left := processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.2)
    shown = [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]
    for pid in left:  # the test's own orphans: not left for the next run
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == [], shown
