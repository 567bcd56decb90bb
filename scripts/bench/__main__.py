"""`python scripts/bench [options]` from a checkout, or `python -m scripts.bench`."""

import sys
from pathlib import Path

if not __package__:
    # Run as a directory: its own folder is first on sys.path, where its modules would pass
    # for top-level ones. The checkout's root instead, so it imports as scripts.bench.
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from scripts.bench.main import main

if __name__ == "__main__":
    sys.exit(main())
