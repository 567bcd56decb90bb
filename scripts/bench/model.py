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
