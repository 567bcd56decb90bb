"""Triton Python-backend recommender: embeddings and an item bias, top-K per user,
excluding the items in the request's history. A history item the model does not know (a
product newer than the model) is ignored like an empty slot, never refused: one new product
must not block every user who touched it. How many each row had is the UNKNOWN_ITEMS output
when the model's config declares it. Requests carry catalogue ids (USER_ID, the
items of HISTORY) and ITEM_IDS answers with catalogue ids; inside, ids are dense indices
(scoring.Recommender maps them with np.searchsorted). All requests of one execute() call
are scored together: one matrix product per block of rows (scoring.SCORE_BLOCK scores)."""

import ctypes
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoring

# glibc gives an allocation above its mmap threshold a mapping of its own and returns freed
# heap above its trim threshold to the system, so a batch's score arrays (rows x items:
# megabytes) were page-faulted in anew on every execute(), more for batches of varying sizes
# (the pipeline's) than for uniform ones (docs/design.md, the model's batch memory). Fixed
# thresholds keep them in the heap: at most TRIM_THRESHOLD of freed
# memory stays with the process. (M_* are glibc's mallopt parameter numbers.)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# glibc's largest on 64 bits. Arrays above it still get a mapping (and their faults): a
# catalogue so large that a block of scoring.SCORE_BLOCK scores' arrays exceeds 32 MiB.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory():
    """Sets the thresholds; False where the C library is not glibc (left as it is)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class TritonPythonModel:
    def initialize(self, args):
        if not keep_freed_memory():
            print("recommender: mallopt unavailable, batch arrays are page-faulted in anew", file=sys.stderr)
        config = json.loads(args["model_config"])
        self.top_k = int(config["parameters"]["top_k"]["string_value"])
        # configs written before this output existed do not declare it: it is not answered
        declared = {out["name"] for out in config.get("output", [])}
        self.reports_unknown = "UNKNOWN_ITEMS" in declared
        # A catalogue with string ids answers them too (ITEM_KEYS: each row's ids as JSON);
        # one of integers only leaves it out, and ITEM_IDS are its ids.
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with np.load(os.path.join(version_dir, "embeddings.npz")) as data:
            self.model = scoring.Recommender({name: data[name] for name in data.files})
        self.answers_keys = "ITEM_KEYS" in declared and self.model.item_keys is not None

    def execute(self, requests):
        users, histories = [], []
        for request in requests:
            users.append(pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy().reshape(-1))
            histories.append(pb_utils.get_input_tensor_by_name(request, "HISTORY").as_numpy())
        history = np.concatenate(histories)
        ids, scores, dense = self.model.answer(np.concatenate(users), history, self.top_k)
        unknown = self.model.unknown_items(history).astype(np.int32).reshape(-1, 1)
        keys = None
        if self.answers_keys:
            keys = np.array(self.model.keys_json(dense), dtype=np.object_).reshape(-1, 1)
        responses = []
        start = 0
        for rows in users:
            end = start + len(rows)
            outputs = [
                pb_utils.Tensor("ITEM_IDS", ids[start:end]),
                pb_utils.Tensor("SCORES", scores[start:end]),
            ]
            if self.reports_unknown:
                outputs.append(pb_utils.Tensor("UNKNOWN_ITEMS", unknown[start:end]))
            if keys is not None:
                outputs.append(pb_utils.Tensor("ITEM_KEYS", keys[start:end]))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start = end
        return responses
