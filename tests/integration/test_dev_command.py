"""`pipeline dev` as a user runs it: its own broker and Triton, a summary line, and no
process left behind, whether it ends by itself or by SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from pipeline.cli import DEFAULT_TOPOLOGY
from pipeline.devstack.tuning import STACK_GROUP_SESSION
from tests.integration.harness import processes_mentioning

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def dev_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "dev", "--workdir", str(workdir), *extra]


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
        if proc.poll() is None:
            proc.kill()
            proc.wait()
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
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted while starting" in err
    left = processes_mentioning(str(tmp_path))
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]
