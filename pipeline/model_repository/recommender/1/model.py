"""Triton Python-backend recommender: embeddings and an item bias, top-K per user,
excluding the items in the request's history. Requests carry catalogue ids (USER_ID, the
items of HISTORY) and ITEM_IDS answers with catalogue ids; inside, ids are dense indices
(scoring.Recommender maps them with np.searchsorted). All requests of one execute() call
are scored together: one matrix product per block of rows (scoring.SCORE_BLOCK scores)."""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoring


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.top_k = int(config["parameters"]["top_k"]["string_value"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with np.load(os.path.join(version_dir, "embeddings.npz")) as data:
            self.model = scoring.Recommender({name: data[name] for name in data.files})

    def execute(self, requests):
        users, histories, bad = [], [], []
        for request in requests:
            user = pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy()
            history = pb_utils.get_input_tensor_by_name(request, "HISTORY").as_numpy()
            users.append(user.reshape(-1))
            histories.append(history)
            bad.append(bool(self.model.invalid_history(history).any()))
        good = [i for i, is_bad in enumerate(bad) if not is_bad]
        results = {}
        if good:
            user_ids = np.concatenate([users[i] for i in good])
            history = np.concatenate([histories[i] for i in good])
            ids, scores = self.model.recommend(user_ids, history, self.top_k)
            start = 0
            for i in good:
                end = start + len(users[i])
                results[i] = (ids[start:end], scores[start:end])
                start = end
        responses = []
        for i in range(len(requests)):
            if i not in results:
                error = pb_utils.TritonError(
                    f"HISTORY holds an item id outside the catalogue of {self.model.n_items} items",
                    pb_utils.TritonError.INVALID_ARG,
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            ids, scores = results[i]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ITEM_IDS", ids),
                        pb_utils.Tensor("SCORES", scores),
                    ]
                )
            )
        return responses
