"""Topology files: schema, errors naming file/key path/reason, env overrides, `pipeline validate`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.errors import TopologyError
from pipeline.topology.loader import ENV_OVERRIDES, all_problems, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "topologies").glob("*.yaml"))
BASE: dict[str, Any] = yaml.safe_load((ROOT / "topologies" / "recommendations.yaml").read_text())


@pytest.fixture(autouse=True)
def _no_pipeline_env(monkeypatch):
    # all_problems / `pipeline validate` read os.environ: keep the developer's shell out.
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)


def variant(*edits: tuple[str, Any]) -> str:
    """The shipped topology with dotted-path edits; a value of ... deletes the key."""
    data = copy.deepcopy(BASE)
    for path, value in edits:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def problem_of(text: str, file: str = "topo.yaml") -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, file, env={})
    err = info.value
    assert err.file == file
    assert str(err) == f"{file}: {err.path or '<root>'}: {err.problem}"
    return err


def test_there_are_shipped_topologies():
    assert [p.name for p in SHIPPED]
    assert "recommendations.yaml" in [p.name for p in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_topologies_validate(path):
    topology = load_topology(path, env={})
    assert topology.name
    assert all_problems(path.read_text(), str(path)) == []


def test_shipped_recommendations_values():
    topology = load_topology(ROOT / "topologies" / "recommendations.yaml", env={})
    assert topology.name == "recommendations"
    assert topology.source.topics == ["interactions"]
    assert topology.source.credits.high_watermark == 20_000
    assert topology.source.credits.low_watermark == 10_000
    assert (topology.window.max_ms, topology.window.max_events) == (20, 4_096)
    assert topology.model.name == "recommender"
    assert topology.sink.topic == "recommendations"
    assert topology.sink.dead_letter_topic == "interactions.dlq"
    assert topology.broker.bootstrap_servers == "127.0.0.1:9092"
    assert topology.model.url == "127.0.0.1:8001"


def test_topology_is_frozen():
    topology = parse_topology(variant(), env={})
    with pytest.raises(ValidationError):
        topology.window.max_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edits", "path", "reason"),
    [
        (
            [("source.credits.low_watermark", 20_000)],
            "source.credits",
            "low_watermark must be below high_watermark",
        ),
        (
            [("source.credits.low_watermark", 30_000)],
            "source.credits",
            "low_watermark must be below high_watermark",
        ),
        ([("source.bogus", 1)], "source.bogus", "Extra inputs are not permitted"),
        ([("surprise", {"a": 1})], "surprise", "Extra inputs are not permitted"),
        ([("window.max_ms", "soon")], "window.max_ms", "valid integer"),
        ([("window.max_ms", 0)], "window.max_ms", "greater than 0"),
        ([("source.topics", "interactions")], "source.topics", "valid list"),
        ([("source.topics", [1])], "source.topics[0]", "valid string"),
        ([("source.topics", [])], "source.topics", "at least 1 item"),
        ([("model.name", ...)], "model.name", "Field required"),
        ([("model.name", "")], "model.name", "at least 1 character"),
        ([("model", ...)], "model", "Field required"),
        ([("sink.dead_letter_topic", "recommendations")], "sink", "dead_letter_topic must differ from topic"),
        ([("sink.compression", "zstd")], "sink.compression", "'gzip' or 'none'"),
        ([("operations.metrics_port", 70_000)], "operations.metrics_port", "less than or equal to 65535"),
        ([("model.top_k", 1_001)], "model.top_k", "less than or equal to 1000"),
    ],
)
def test_invalid_topology_names_key_path_and_reason(edits, path, reason):
    err = problem_of(variant(*edits))
    assert err.path == path
    assert reason in err.problem


def test_sink_topic_feeding_back_into_the_source_is_a_root_error():
    err = problem_of(variant(("sink.topic", "interactions")))
    assert err.path == ""
    assert "overlap" in err.problem
    assert "interactions" in err.problem
    assert str(err).startswith("topo.yaml: <root>: ")


def test_first_error_counts_the_rest_and_all_problems_lists_each():
    text = variant(("window.max_ms", "soon"), ("batch.max_size", -1), ("source.nope", True))
    err = problem_of(text)
    assert "(and 2 more)" in err.problem
    problems = all_problems(text, "topo.yaml")
    assert sorted(p.path for p in problems) == ["batch.max_size", "source.nope", "window.max_ms"]
    assert all(p.file == "topo.yaml" for p in problems)
    assert all(p.problem and "more)" not in p.problem for p in problems)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: ok\nsource:\n  topics: [a, b\nmodel: {}\n", "line 4, column 6"),
        ("name: ok\nsource:\n  topics: x\n   bad: 1\n", "line 4, column 7"),
        ("name: [ok\n", "line 2, column 1"),
    ],
)
def test_yaml_syntax_error_reports_line_and_column(text, where):
    err = problem_of(text)
    assert err.path == where
    assert err.problem.startswith("not valid YAML: ")
    assert str(err).startswith(f"topo.yaml: {where}: not valid YAML")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("", "NoneType"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(text, kind):
    err = problem_of(text)
    assert err.path == ""
    assert err.problem == f"expected a mapping at the top, got {kind}"


def test_missing_file_is_a_topology_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as info:
        load_topology(missing, env={})
    assert info.value.file == str(missing)
    assert info.value.path == ""
    assert "cannot read" in info.value.problem
    assert "No such file" in info.value.problem


def test_env_overrides_apply_when_given():
    env = {"PIPELINE_BOOTSTRAP_SERVERS": "kafka-1:29092,kafka-2:29092", "PIPELINE_TRITON_URL": "triton:8001"}
    topology = parse_topology(variant(), env=env)
    assert topology.broker.bootstrap_servers == "kafka-1:29092,kafka-2:29092"
    assert topology.model.url == "triton:8001"
    assert topology.model.name == "recommender"  # the rest of the file is kept


def test_env_overrides_create_missing_sections():
    text = variant(("broker", ...), ("model.url", ...))
    topology = parse_topology(text, env={"PIPELINE_BOOTSTRAP_SERVERS": "k:1", "PIPELINE_TRITON_URL": "t:2"})
    assert topology.broker.bootstrap_servers == "k:1"
    assert topology.model.url == "t:2"


def test_no_env_keeps_file_values_and_unrelated_vars_are_ignored():
    topology = parse_topology(variant(), env={"PIPELINE_SOMETHING_ELSE": "x", "PATH": "/bin"})
    assert topology.broker.bootstrap_servers == "127.0.0.1:9092"
    assert topology.model.url == "127.0.0.1:8001"


def test_metrics_port_override_is_validated():
    assert parse_topology(variant(), env={"PIPELINE_METRICS_PORT": "9400"}).operations.metrics_port == 9400
    with pytest.raises(TopologyError) as info:
        parse_topology(variant(), "t.yaml", env={"PIPELINE_METRICS_PORT": "not-a-port"})
    assert info.value.path == "operations.metrics_port"


def test_empty_override_is_rejected_with_its_key_path():
    with pytest.raises(TopologyError) as info:
        parse_topology(variant(), "t.yaml", env={"PIPELINE_TRITON_URL": ""})
    assert info.value.path == "model.url"


def test_env_override_does_not_hide_a_section_of_the_wrong_type():
    """A section that is not a mapping must stay an error when an override targets it:
    whether a file validates may not depend on the environment."""
    text = variant(("broker", "10.0.0.5:9092"))
    assert problem_of(text).path == "broker"  # without the override: rejected
    try:
        accepted = parse_topology(text, "topo.yaml", env={"PIPELINE_BOOTSTRAP_SERVERS": "kafka:9092"})
    except TopologyError as err:
        assert err.path == "broker"
    else:
        pytest.fail(f"broker: '10.0.0.5:9092' accepted under an override as {accepted.broker!r}")


def test_os_environ_is_used_when_env_is_none(monkeypatch):
    monkeypatch.setenv("PIPELINE_TRITON_URL", "from-environ:8001")
    assert parse_topology(variant()).model.url == "from-environ:8001"


# --- `pipeline validate` ------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_valid_file_returns_0(capsys):
    shipped = str(ROOT / "topologies" / "recommendations.yaml")
    assert main(["validate", shipped]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{shipped}: valid"
    assert err == ""


def test_validate_invalid_file_returns_2_and_prints_file_path_reason(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", variant(("source.credits.low_watermark", 25_000)))
    assert main(["validate", bad]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{bad}: source.credits: ")
    assert "low_watermark must be below high_watermark" in lines[0]


def test_validate_prints_every_problem_of_a_file(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", variant(("model.name", ...), ("source.extra", 1)))
    assert main(["validate", bad]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert sorted(lines) == sorted(
        [
            f"{bad}: model.name: Field required",
            f"{bad}: source.extra: Extra inputs are not permitted",
        ]
    )


def test_validate_yaml_error_names_line_and_column(tmp_path, capsys):
    bad = write(tmp_path, "syntax.yaml", "name: [ok\n")
    assert main(["validate", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: line 2, column 1: not valid YAML")


def test_validate_missing_file_returns_2(tmp_path, capsys):
    missing = str(tmp_path / "absent.yaml")
    assert main(["validate", missing]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{missing}: <root>: cannot read: ")
    assert "No such file" in err


def test_validate_several_files_checks_them_all(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", variant())
    bad = write(tmp_path, "bad.yaml", variant(("window.max_events", "many")))
    missing = str(tmp_path / "absent.yaml")
    assert main(["validate", bad, good, missing]) == 2
    out, err = capsys.readouterr()
    assert out.strip() == f"{good}: valid"
    assert f"{bad}: window.max_events: " in err
    assert f"{missing}: <root>: cannot read" in err


def test_validate_all_valid_files_returns_0(tmp_path, capsys):
    one = write(tmp_path, "one.yaml", variant())
    two = write(tmp_path, "two.yaml", variant(("name", "other"), ("sink.topic", "recs-2")))
    assert main(["validate", one, two]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{one}: valid", f"{two}: valid"]


def test_validate_needs_a_file():
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


NOT_UTF8 = b'name: recs\nbroker:\n  bootstrap_servers: "\xff\xfe"\n'


def test_a_file_that_is_not_utf8_is_a_topology_error_naming_line_and_byte(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(NOT_UTF8)
    with pytest.raises(TopologyError) as info:
        load_topology(bad, env={})
    assert info.value.file == str(bad)
    assert info.value.path == "line 3"
    assert info.value.problem == "not UTF-8 text (byte 0xff at offset 41)"


@pytest.mark.parametrize(
    "command",
    [
        ["validate", "{}"],
        ["run", "{}"],
        ["replay", "--topology", "{}", "--file", "events.csv"],
        ["redrive", "{}", "--reason", "unknown_type"],
        ["audit", "{}"],
        ["dev", "--topology", "{}"],
    ],
)
def test_commands_given_a_file_that_is_not_utf8_say_so_in_one_line(tmp_path, capsys, command):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(NOT_UTF8)
    assert main([part.format(bad) for part in command]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{bad}: line 3: not UTF-8 text (byte 0xff at offset 41)\n"


@pytest.mark.parametrize(
    ("servers", "why"),
    [
        ("127.0.0.1:99999", "'127.0.0.1:99999': the port must be a number from 1 to 65535"),
        ("kafka-1", "'kafka-1' is not host:port"),
        ("kafka-1:x", "'kafka-1:x': the port must be a number from 1 to 65535"),
        (":::", "':::': the port must be a number from 1 to 65535"),
        ("kafka-1:9092,kafka-2:0", "'kafka-2:0': the port must be a number from 1 to 65535"),
        ("kafka-1:9092,", "an empty entry is not host:port"),
    ],
)
def test_a_bootstrap_address_that_is_not_host_port_is_invalid(servers: str, why: str, tmp_path, capsys):
    """validate, the loader and the env override say it, before a client fails on it."""
    path = tmp_path / "t.yaml"
    path.write_text(variant(("broker.bootstrap_servers", servers)))
    assert main(["validate", str(path)]) == 2
    assert f"broker.bootstrap_servers: Value error, {why}" in capsys.readouterr().err
    with pytest.raises(TopologyError) as info:
        parse_topology(variant(), env={"PIPELINE_BOOTSTRAP_SERVERS": servers})
    assert info.value.path == "broker.bootstrap_servers"
    assert info.value.problem == f"Value error, {why}"


def test_bootstrap_addresses_with_ports_are_valid():
    servers = "kafka-1:9092, [::1]:29092,10.0.0.7:65535"
    assert parse_topology(variant(("broker.bootstrap_servers", servers))).broker.bootstrap_servers == servers
