"""The model repository's second model: a trivial Python-backend model with the
recommender's signature (fixed ids and scores, no math), so the cost of the model and the
cost of everything around it can be told apart."""

from __future__ import annotations

from pathlib import Path

TRIVIAL_MODEL = '''"""Trivial model with the recommender's signature (written by scripts/bench):
fixed ids and scores, no math. What serving costs without the model."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        top_k = int(config["parameters"]["top_k"]["string_value"])
        rows = max(1, int(config.get("max_batch_size", 0)))
        self.ids = np.tile(np.arange(top_k, dtype=np.int64), (rows, 1))
        self.scores = np.tile(np.linspace(1.0, 0.1, top_k, dtype=np.float32), (rows, 1))

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy().shape[0]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ITEM_IDS", self.ids[:rows]),
                        pb_utils.Tensor("SCORES", self.scores[:rows]),
                    ]
                )
            )
        return responses
'''


def write_trivial(repository: Path, name: str = "trivial") -> None:
    """The trivial model, its config the recommender's filled one with the name changed (so
    max_batch_size, dims, batcher and instances match)."""
    config = (repository / "recommender" / "config.pbtxt").read_text()
    config = config.replace('name: "recommender"', f'name: "{name}"', 1)
    if f'name: "{name}"' not in config:
        raise RuntimeError("the recommender's config.pbtxt has no name line to replace")
    (repository / name / "1").mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(config)
    (repository / name / "1" / "model.py").write_text(TRIVIAL_MODEL)


STRING_SUFFIX = "_strings"  # the same model, its catalogue in string ids (pipeline-strings)
ITEM_KEYS_OUTPUT = '  { name: "ITEM_KEYS", data_type: TYPE_STRING, dims: [ 1 ] }'

TRIVIAL_STRINGS_MODEL = '''"""Trivial model with string item ids (written by scripts/bench): fixed ids (their
hashes, pipeline/ids.py) and scores, and the ids themselves as ITEM_KEYS. No math."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        top_k = int(config["parameters"]["top_k"]["string_value"])
        rows = max(1, int(config.get("max_batch_size", 0)))
        hashes = json.loads(config["parameters"]["item_hashes"]["string_value"])[:top_k]
        self.ids = np.tile(np.asarray(hashes, dtype=np.int64), (rows, 1))
        self.scores = np.tile(np.linspace(1.0, 0.1, top_k, dtype=np.float32), (rows, 1))
        row = json.dumps([f"SKU-{i:05d}" for i in range(top_k)], separators=(",", ":")).encode()
        self.keys = np.array([[row]] * rows, dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy().shape[0]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ITEM_IDS", self.ids[:rows]),
                        pb_utils.Tensor("SCORES", self.scores[:rows]),
                        pb_utils.Tensor("ITEM_KEYS", self.keys[:rows]),
                    ]
                )
            )
        return responses
'''


def sku(item: int) -> str:
    """The string id item ``item`` has in the string-id variant's events and catalogue."""
    return f"SKU-{item:05d}"


def customer(user: int) -> str:
    return f"cust-{user}"


def _config_named(repository: Path, source: str, name: str) -> str:
    """``source``'s config under ``name``, declaring ITEM_KEYS (a config written before it
    existed does not)."""
    config = (repository / source / "config.pbtxt").read_text()
    config = config.replace(f'name: "{source}"', f'name: "{name}"', 1)
    if "ITEM_KEYS" not in config:
        config = config.replace("dims: [ 1 ] }\n]", "dims: [ 1 ] },\n" + ITEM_KEYS_OUTPUT + "\n]", 1)
    if f'name: "{name}"' not in config or "ITEM_KEYS" not in config:
        raise RuntimeError(f"{source}'s config.pbtxt cannot be made into {name}'s")
    return config


def write_string_catalogues(repository: Path) -> None:
    """``recommender_strings``: the recommender's latest version with its items named
    SKU-00000... and its users cust-0...; ``trivial_strings``: the trivial model answering
    ITEM_KEYS. The same compute as their integer twins, plus what string ids cost."""
    import json

    import numpy as np

    from pipeline import ids
    from pipeline.recsys.repository import model_versions, serving_code

    source = repository / "recommender"
    latest = source / str(model_versions(source)[-1])
    with np.load(latest / "embeddings.npz") as data:
        arrays = {name: data[name] for name in data.files}
    names = [sku(int(i)) for i in arrays["item_ids"]]
    items = np.array([ids.internal_id(name) for name in names], dtype=np.int64)
    order = np.argsort(items)  # the catalogue is sorted by internal id (scoring.dense_index)
    arrays["item_ids"], arrays["item_emb"] = items[order], arrays["item_emb"][order]
    arrays["item_keys"] = np.array([json.dumps(name) for name in names], dtype=np.str_)[order]
    if "item_bias" in arrays:
        arrays["item_bias"] = arrays["item_bias"][order]
    users = np.array([ids.internal_id(customer(int(u))) for u in arrays["user_ids"]], dtype=np.int64)
    user_order = np.argsort(users)
    arrays["user_ids"], arrays["user_emb"] = users[user_order], arrays["user_emb"][user_order]
    strings = repository / f"recommender{STRING_SUFFIX}"
    (strings / "1").mkdir(parents=True, exist_ok=True)
    for file, path in serving_code().items():
        (strings / "1" / file).write_bytes(path.read_bytes())
    np.savez(strings / "1" / "embeddings.npz", **arrays)  # type: ignore[arg-type]
    (strings / "config.pbtxt").write_text(_config_named(repository, "recommender", strings.name))

    trivial = repository / f"trivial{STRING_SUFFIX}"
    (trivial / "1").mkdir(parents=True, exist_ok=True)
    (trivial / "1" / "model.py").write_text(TRIVIAL_STRINGS_MODEL)
    hashes = json.dumps([ids.internal_id(sku(i)) for i in range(64)])
    config = _config_named(repository, "trivial", trivial.name)
    config += f'\nparameters {{ key: "item_hashes", value: {{ string_value: "{hashes}" }} }}\n'
    (trivial / "config.pbtxt").write_text(config)
