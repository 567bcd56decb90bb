"""A worker started from a topology with secrets gets them, not pydantic's "**********":
the file it runs loads as the topology given, secrets included, and only its owner can read it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from pipeline.devstack.worker import PipelineProcess, topology_document
from pipeline.topology.loader import load_topology
from pipeline.topology.schema import Topology


def topology(**broker: Any) -> Topology:
    return Topology.model_validate(
        {
            "name": "secrets",
            "broker": {"bootstrap_servers": "kafka:9093", **broker},
            "source": {"topics": ["in"], "group_id": "g"},
            "model": {"name": "m", "headers": {"Authorization": "Bearer abc"}},
            "sink": {"topic": "out", "dead_letter_topic": "dlq"},
        }
    )


SASL = {
    "security_protocol": "SASL_SSL",
    "sasl": {"mechanism": "SCRAM-SHA-512", "username": "alice", "password": "hunter2${x}"},
    "tls": {"ca_file": "/etc/ca.pem", "key_password": "k3y"},
}


def test_the_worker_file_holds_the_secrets_and_reads_back_as_the_same_topology(tmp_path: Path) -> None:
    given = topology(**SASL)
    worker = PipelineProcess(given, tmp_path, name="w")
    path = tmp_path / "w.yaml"
    text = path.read_text()
    assert "**********" not in text
    written = load_topology(path, env={})  # as the worker's `pipeline run` reads it
    assert written.broker.sasl is not None and written.broker.sasl.password is not None
    assert written.broker.sasl.password.get_secret_value() == "hunter2${x}"  # not interpolated again
    assert written.broker.tls.key_password is not None
    assert written.broker.tls.key_password.get_secret_value() == "k3y"
    assert written.model.headers["Authorization"].get_secret_value() == "Bearer abc"
    assert written.operations.metrics_port == worker.metrics_port
    assert written.model_copy(update={"operations": given.operations}) == given
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # secrets in clear: the owner's only


def test_without_secrets_the_document_is_pydantics_json_dump() -> None:
    plain = topology()
    plain = plain.model_copy(update={"model": plain.model.model_copy(update={"headers": {}})})
    assert topology_document(plain) == plain.model_dump(mode="json")
