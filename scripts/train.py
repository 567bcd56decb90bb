"""Train the recommender and write the next version of a Triton model repository: the same
code as `pipeline train` (pipeline/recsys/cli.py). Events come from an event file (JSON lines
or CSV with a column mapping), a Kafka topic (read to its end), or the synthetic generator.
Prints a JSON summary: candidates, the chosen model, held-out hit@K against most-popular.

    python scripts/train.py --out var/model_repository                      # synthetic
    python scripts/train.py --file events.jsonl --out var/model_repository
    python scripts/train.py --file ratings.csv --mapping movies.yaml --out repo
    python scripts/train.py --topic interactions --bootstrap 127.0.0.1:9092 --out repo
"""

from __future__ import annotations

import sys

from pipeline.recsys.cli import main

if __name__ == "__main__":
    sys.exit(main())
