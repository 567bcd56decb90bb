"""`python scripts/soak [options]` from a checkout, or `python -m scripts.soak`."""

import sys
from pathlib import Path

if not __package__:
    # Run as a directory: its own folder is first on sys.path, where its modules would pass
    # for top-level ones. The checkout's root instead, so it imports as scripts.soak.
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from scripts.soak.cli import main

if __name__ == "__main__":
    sys.exit(main())
