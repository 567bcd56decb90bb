"""`pipeline train --kind` writes the chosen model, the popularity baseline or a random
(bad) version; config.pbtxt's version policy keeps loaded the versions in use: every version
by default (Triton's default: the latest only), or --keep-versions / a topology's experiment
arms, always with the one written.
Versions that cannot be kept are refused in one line, exit 2, before anything is written."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from pipeline.cli import main
from pipeline.recsys.repository import loaded_versions, version_policy
from pipeline.recsys.train import train_log
from tests.unit.recsys.test_train_selection import SMALL, log_of, structured

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_TOPOLOGY = ROOT / "pipeline" / "topologies" / "recommendations.yaml"


def train(repo: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any], str]:
    """`pipeline train` on 3000 synthetic events: exit code, summary (or {}), stderr."""
    code = main(["train", "--out", str(repo), "--synthetic", "3000", "--time-budget", "1", *extra])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, orjson.loads(lines[-1]) if code == 0 and lines else {}, err


def policy_line(repo: Path) -> str:
    [line] = [
        ln
        for ln in (repo / "recommender" / "config.pbtxt").read_text().splitlines()
        if "version_policy" in ln
    ]
    return line


def test_policy_text_lists_the_versions() -> None:
    assert version_policy([3, 1, 3]) == "{ specific { versions: [1, 3] } }"
    assert version_policy(None) == "{ all { } }"  # every version, also one copied in later
    assert loaded_versions([1, 2, 3], 3, None) == [1, 2, 3]  # default: all present
    assert loaded_versions([1, 2, 3], 3, [1]) == [1, 3]  # the written one always
    assert loaded_versions([1, 2], 3, [2, 2]) == [2, 3]


def test_kinds_and_the_default_policy_keeps_every_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    code, pop, _ = train(repo, capsys, "--kind", "popularity")
    assert code == 0 and pop["kind"] == "popularity" and pop["version"] == 1
    assert policy_line(repo) == "version_policy: { all { } }"
    code, bad, _ = train(repo, capsys, "--kind", "random")
    assert code == 0 and bad["kind"] == "random" and bad["version"] == 2
    assert policy_line(repo) == "version_policy: { all { } }"
    assert bad["loaded_versions"] == [1, 2]
    assert "candidates" not in bad  # no selection ran
    # the held-out hit rate of what was written: random is far below the baseline
    assert pop["hit@10"] == pop["test"]["hit@10_popularity"] > 0
    assert bad["hit@10"] < pop["hit@10"] / 3

    arrays = [np.load(repo / "recommender" / v / "embeddings.npz") for v in ("1", "2")]
    assert not arrays[0]["item_emb"].any() and arrays[0]["item_bias"].any()  # baseline
    assert arrays[1]["item_emb"].any() and arrays[1]["user_emb"].any()
    assert arrays[0]["item_ids"].tolist() == arrays[1]["item_ids"].tolist()  # same catalogue
    assert arrays[0]["item_ids"].size == 5000  # the generator's whole catalogue

    code, best, _ = train(repo, capsys, "--keep-versions", "2")  # default --kind best
    assert code == 0 and best["kind"] == "best" and best["version"] == 3
    assert best["candidates"] and best["chosen"]["candidate"] != "best"
    assert policy_line(repo) == "version_policy: { specific { versions: [2, 3] } }"
    assert best["loaded_versions_from"] == "--keep-versions"


def test_random_kind_is_seeded(tmp_path: Path) -> None:
    log = structured(events=3000)
    for repo in (tmp_path / "a", tmp_path / "b"):
        train_log(log, repo, config=SMALL, kind="random")
    a, b = (np.load(tmp_path / r / "recommender" / "1" / "embeddings.npz") for r in ("a", "b"))
    assert (
        a["item_emb"].tolist() == b["item_emb"].tolist()
        and a["item_bias"].tolist() == b["item_bias"].tolist()
    )


def test_no_held_out_events_no_hit_rate(tmp_path: Path) -> None:
    report = train_log(log_of([(1, 10, 1), (2, 11, 2)]), tmp_path, config=SMALL, kind="random")
    assert report.version == 1 and report.summary["kind"] == "random"
    assert report.summary["hit@10"] is None  # not computed, not 0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--keep-versions", "3"), "--keep-versions: no version 3"),  # 1 exists, 2 is written
        (("--keep-versions", "1,7"), "no version 7"),
    ],
)
def test_a_version_to_keep_must_exist(
    extra: tuple[str, ...], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert train(repo, capsys, "--kind", "popularity")[0] == 0
    before = (repo / "recommender" / "config.pbtxt").read_text()
    code, _, err = train(repo, capsys, *extra)
    assert code == 2
    assert err.count("\n") == 1 and named in err and "Traceback" not in err, err
    assert sorted(p.name for p in (repo / "recommender").iterdir()) == ["1", "config.pbtxt"]
    assert (repo / "recommender" / "config.pbtxt").read_text() == before


def test_keep_versions_the_version_being_written_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary, _ = train(tmp_path / "repo", capsys, "--kind", "popularity", "--keep-versions", "1")
    assert code == 0 and summary["loaded_versions"] == [1]


def write_topology(path: Path, *versions: str, **model: object) -> Path:
    """The shipped topology with ``model`` keys changed and, given ``versions``, an
    experiment whose arms (control first) are served by them."""
    data = yaml.safe_load(SHIPPED_TOPOLOGY.read_text())
    data["model"].update(model)
    if versions:
        share = 1 / len(versions)
        data["experiment"] = {
            "id": "exp",
            "arms": [{"id": f"arm{i}", "version": v, "share": share} for i, v in enumerate(versions)],
        }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_topology_model_version_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    for _ in range(2):
        assert train(repo, capsys, "--kind", "popularity")[0] == 0
    topology = write_topology(tmp_path / "t.yaml", version="1")
    code, summary, _ = train(repo, capsys, "--kind", "random", "--topology", str(topology))
    assert code == 0 and summary["loaded_versions"] == [1, 3]
    assert policy_line(repo) == "version_policy: { specific { versions: [1, 3] } }"


def test_topology_experiment_arms_are_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    for _ in range(3):
        assert train(repo, capsys, "--kind", "popularity")[0] == 0
    topology = write_topology(tmp_path / "exp.yaml", "2", "4")  # control on 2, treatment: written now
    code, summary, _ = train(repo, capsys, "--kind", "random", "--topology", str(topology))
    assert code == 0 and summary["version"] == 4 and summary["loaded_versions"] == [2, 4]
    assert summary["loaded_versions_from"] == f"--topology {topology}"
    assert policy_line(repo) == "version_policy: { specific { versions: [2, 4] } }"


def test_an_experiment_without_topology_support_reads_no_arms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topology object without an ``experiment`` attribute (a schema before experiments):
    the latest is served, so only the version written is kept."""
    topology = types.SimpleNamespace(model=types.SimpleNamespace(name="recommender", version=""))
    monkeypatch.setattr("pipeline.topology.loader.load_topology", lambda path: topology)
    repo = tmp_path / "repo"
    assert train(repo, capsys, "--kind", "popularity")[0] == 0
    code, summary, _ = train(repo, capsys, "--kind", "random", "--topology", "old.yaml")
    assert code == 0 and summary["loaded_versions"] == [2]


@pytest.mark.parametrize(
    ("versions", "model", "named"),
    [
        (("1", "5"), {}, "no version 5"),
        (("1", "latest"), {}, "experiment arm 'arm1' version 'latest' is not a version number"),
        (("1",), {"name": "other"}, "it serves model 'other', not 'recommender'"),
        ((), {"version": "0"}, "model.version version '0' is not a version number"),
    ],
)
def test_topology_versions_that_cannot_be_kept_are_refused(
    versions: tuple[str, ...],
    model: dict[str, str],
    named: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = tmp_path / "repo"
    assert train(repo, capsys, "--kind", "popularity")[0] == 0
    topology = write_topology(tmp_path / "exp.yaml", *versions, **model)
    code, _, err = train(repo, capsys, "--topology", str(topology))
    assert code == 2 and err.count("\n") == 1 and f"--topology {topology}: " in err and named in err, err
    assert sorted(p.name for p in (repo / "recommender").iterdir()) == ["1", "config.pbtxt"]


def test_an_unreadable_topology_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = train(tmp_path / "repo", capsys, "--topology", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.count("\n") == 1 and "missing.yaml" in err, err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("option", "value"), [("--keep-versions", "1,x"), ("--keep-versions", "0"), ("--kind", "worst")]
)
def test_bad_kind_or_version_list_is_an_argument_error(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--out", str(tmp_path / "repo"), "--synthetic", "2000", option, value])
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("pipeline train: error: argument ") and option in last and value in last, last
    assert not (tmp_path / "repo").exists()
