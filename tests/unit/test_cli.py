"""The command line: --version, schema, JSON logs."""

from __future__ import annotations

import logging

import orjson
import pytest

from pipeline import logs
from pipeline.cli import main
from tests.unit.refused_arguments import assert_refused_by_the_parser


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("pipeline 0.")


def test_schema_is_the_topology_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["title"] == "Topology"
    assert {"broker", "source", "sink", "model"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_json_logs_are_one_object_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        logs.setup("INFO", "json")
        logging.getLogger("pipeline.test").info("assigned %d partitions", 4)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("pipeline.test").exception("failed")
    finally:
        logs.setup("WARNING", "text")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "assigned 4 partitions" and lines[0]["level"] == "INFO"
    assert lines[0]["logger"] == "pipeline.test" and lines[0]["ts"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exception"]


@pytest.mark.parametrize(
    "argv",
    [
        ["dev", "--events", "-5"],
        ["dev", "--events", "0"],
        ["dev", "--rate", "-1"],
        ["dev", "--timeout", "0"],
        ["dev", "--report-every", "-30"],
        ["dev", "--recycle-growth", "nan"],
        ["run", "topology.yaml", "--workers", "0"],
        ["resources", "topology.yaml", "--partitions", "0"],
    ],
)
def test_numbers_that_make_no_sense_are_refused_before_anything_starts(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`pipeline dev --events -5` started the whole stack and exited 0."""
    assert_refused_by_the_parser(argv, capsys)


def test_resources_prints_the_budget_of_a_topology_whose_secrets_are_not_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Kubernetes topology names its SASL secrets by variable: sizing reads none of them."""
    from pathlib import Path

    from pipeline.sizing import memory_budget
    from pipeline.topology.loader import load_topology

    monkeypatch.delenv("KAFKA_SASL_USERNAME", raising=False)
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    k8s = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "recommendations.yaml"
    assert main(["resources", str(k8s), "--partitions", "6"]) == 0
    out = capsys.readouterr().out
    env = {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}
    budget = memory_budget(load_topology(k8s, env=env), 6)
    assert f"resources.limits.memory: {budget.limit >> 20}Mi" in out
    assert "holding 6 input partitions" in out
