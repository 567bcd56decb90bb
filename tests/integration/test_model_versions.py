"""The version policy the trainer writes, on a real Triton: by default every version in the
repository is loaded (an experiment's control arm on the previous version is served), an
explicit list loads those and the version written, nothing else; the loaded versions answer
each with its own model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pipeline.devstack.triton import EmbeddedTriton
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.train import train_and_write

pytestmark = pytest.mark.integration

ITEMS = 600
HISTORY = 16


def answers(client: grpcclient.InferenceServerClient, version: str) -> np.ndarray:
    users = np.arange(8, dtype=np.int64).reshape(-1, 1)
    history = np.full((8, HISTORY), -1, dtype=np.int64)
    history[:, 0] = np.arange(8) * 7
    inputs = [
        grpcclient.InferInput("USER_ID", [8, 1], "INT64"),
        grpcclient.InferInput("HISTORY", [8, HISTORY], "INT64"),
    ]
    inputs[0].set_data_from_numpy(users)
    inputs[1].set_data_from_numpy(history)
    result = client.infer("recommender", inputs, model_version=version)
    ids = result.as_numpy("ITEM_IDS")
    assert ids is not None and ids.shape == (8, 10)
    return ids


def ready_versions(client: grpcclient.InferenceServerClient) -> set[str]:
    index = client.get_model_repository_index(as_json=True)
    return {m["version"] for m in index.get("models", []) if m.get("state") == "READY"}


def test_triton_loads_the_versions_the_policy_lists(tmp_path: Path) -> None:
    config = GeneratorConfig(users=200, items=ITEMS, clusters=6, seed=9)
    events = list(EventGenerator(config).events(3000))
    repository = tmp_path / "repo"
    assert train_and_write(events, repository, ITEMS, kind="popularity").version == 1
    assert train_and_write(events, repository, ITEMS, kind="random").version == 2  # default: all

    # explicit mode: the test reloads the model after writing a third version
    triton = EmbeddedTriton(tmp_path, repository, ("--model-control-mode=explicit", "--load-model=*"))
    with triton.running(triton.ready, 120):
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            assert ready_versions(client) == {"1", "2"}
            assert client.is_model_ready("recommender", "1") and client.is_model_ready("recommender", "2")
            popular, random = answers(client, "1"), answers(client, "2")
            assert (popular != random).any(axis=1).all(), "each version answers with its own model"
            assert (popular[1:, 0] == popular[0, 0]).mean() > 0.5  # popularity: mostly one top item

            report = train_and_write(events, repository, ITEMS, kind="random", keep_versions=[1])
            assert report.version == 3 and report.summary["loaded_versions"] == [1, 3]
            client.load_model("recommender")  # re-reads config.pbtxt
            assert ready_versions(client) == {"1", "3"}
            assert not client.is_model_ready("recommender", "2")
            assert answers(client, "1").tolist() == popular.tolist()
        finally:
            client.close()
