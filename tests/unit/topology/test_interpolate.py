"""${NAME} in topology files: values from the environment, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.topology.interpolate import UnsetVariable, interpolate

ENV = {"HOST": "kafka-1", "PORT": "9093", "EMPTY": "", "PASSWORD": "s3cr3t"}


def test_references_are_replaced_in_string_values_at_any_depth() -> None:
    data = {
        "broker": {"bootstrap_servers": "${HOST}:${PORT}", "sasl_password": "${PASSWORD}"},
        "source": {"topics": ["in-${HOST}", "plain"]},
        "batch": {"max_size": 128},
    }
    assert interpolate(data, ENV) == {
        "broker": {"bootstrap_servers": "kafka-1:9093", "sasl_password": "s3cr3t"},
        "source": {"topics": ["in-kafka-1", "plain"]},
        "batch": {"max_size": 128},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),  # as in a shell: empty takes the default too
        ("${EMPTY}", ""),
        ("${HOST:-}", "kafka-1"),
        ("cost $5", "cost $5"),
        ("$${HOST} stays", "${HOST} stays"),
        ("${PORT}", "9093"),  # a string: the schema converts it
    ],
)
def test_defaults_and_literals(text: str, expected: str) -> None:
    assert interpolate({"k": text}, ENV) == {"k": expected}


def test_an_unset_variable_names_the_key_path() -> None:
    data = {"lanes": [{"id": "a"}, {"match": {"values": ["x", "${LANE_VALUE}"]}}]}
    with pytest.raises(UnsetVariable) as caught:
        interpolate(data, ENV)
    assert caught.value.path == "lanes[1].match.values[1]"
    assert caught.value.name == "LANE_VALUE"
    assert "LANE_VALUE is not set" in str(caught.value)


def test_the_input_is_not_changed() -> None:
    data = {"a": "${HOST}"}
    interpolate(data, ENV)
    assert data == {"a": "${HOST}"}


def test_validate_reports_an_unset_variable_as_file_key_path_reason(tmp_path, capsys) -> None:
    from pipeline.cli import main

    text = (Path(__file__).resolve().parents[3] / "topologies" / "recommendations.yaml").read_text()
    path = tmp_path / "topo.yaml"
    path.write_text(text.replace("group_id:", "group_id: ${GROUP_FOR_TEST_XYZ}  #", 1))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr()
    assert f"{path}: source.group_id: environment variable GROUP_FOR_TEST_XYZ is not set" in err.out + err.err


def test_a_topology_takes_its_values_from_the_environment() -> None:
    from pipeline.topology.loader import parse_topology

    text = (Path(__file__).resolve().parents[3] / "topologies" / "recommendations.yaml").read_text()
    text = text.replace("group_id:", "group_id: ${GROUP_FOR_TEST_XYZ}  #", 1)
    assert parse_topology(text, env={"GROUP_FOR_TEST_XYZ": "team-a"}).source.group_id == "team-a"
