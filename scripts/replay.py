"""`pipeline replay` under its old name: the same command, the same options.

    python scripts/replay.py --topology topologies/backfill.yaml --file history.csv.gz --mapping map.yaml
    python scripts/replay.py --topology topologies/backfill.yaml --topic interactions \\
        --since 2026-11-25T10:00:00Z --until 2026-11-25T11:00:00Z
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["replay", *sys.argv[1:]]))
