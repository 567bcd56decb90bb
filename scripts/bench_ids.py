"""String ids (pipeline/ids.py): the chance that two share an internal id, exactly from the
birthday bound and counted on generated ids, and what the hash costs per id against
hashlib.blake2b. Prints a markdown table (docs/design.md, "Ids as they come").

    python scripts/bench_ids.py [--count 10000000] [--timing 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from fractions import Fraction

import numpy as np

from pipeline import ids

SPAN = ids.STRING_SPAN  # the values a string id can take


def birthday(n: int, span: int = SPAN) -> float:
    """P(at least two of ``n`` distinct strings share an id), uniform over ``span`` values:
    1 - prod(1 - i/span), from the series of its logarithm (the terms after the second
    are below 1e-30 for n <= 10^9)."""
    first = Fraction(n * (n - 1), 2 * span)
    second = Fraction(n * (n - 1) * (2 * n - 1), 12 * span * span)
    return -math.expm1(-float(first + second))


def shared(texts: Iterator[str]) -> tuple[int, int]:
    """(strings hashed, internal ids held by more than one of them)."""
    hashes = array("q", (ids.internal_id(t) for t in texts))
    values = np.frombuffer(hashes, dtype=np.int64)
    values.sort()
    return len(values), int(np.count_nonzero(values[1:] == values[:-1]))


def per_id_ns(hash_one: Callable[[str], int], texts: list[str]) -> float:
    started = time.perf_counter_ns()
    for text in texts:
        hash_one(text)
    return (time.perf_counter_ns() - started) / len(texts)


def blake2b_id(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return ids.STRING_BASE + int.from_bytes(digest, "big") % SPAN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000_000, help="generated ids per kind")
    parser.add_argument("--timing", type=int, default=1_000_000, help="ids per timing pass")
    args = parser.parse_args()
    print("| distinct string ids | P(two share an internal id), birthday bound | expected pairs |")
    print("|---|---|---|")
    for n in (10**6, 10**7, 10**8, 10**9):
        print(f"| {n:.0e} | {birthday(n):.2e} | {n * (n - 1) / (2 * SPAN):.2e} |")
    print()
    print("| generated ids | hashed | ids shared | seconds |")
    print("|---|---|---|---|")
    kinds = {
        "random UUIDs (uuid4)": lambda: (str(uuid.uuid4()) for _ in range(args.count)),
        "SKU-00000000…": lambda: (f"SKU-{n:08d}" for n in range(args.count)),
        "cust-0…": lambda: (f"cust-{n}" for n in range(args.count)),
    }
    for name, texts in kinds.items():
        started = time.monotonic()
        hashed, collided = shared(texts())
        print(f"| {name} | {hashed:,} | {collided} | {time.monotonic() - started:.0f} |")
    sample = [str(uuid.uuid4()) for _ in range(args.timing)]
    print()
    print("| hash of a UUID string (one process, interleaved, best of 3) | ns per id |")
    print("|---|---|")
    best: dict[str, float] = {}
    for _ in range(3):
        for label, fn in (
            ("xxh3-64 (xxhash), ids.string_id", ids.string_id),
            ("blake2b, 8 bytes (hashlib)", blake2b_id),
            ("ids.internal_id (the rule and xxh3-64)", ids.internal_id),
        ):
            best[label] = min(best.get(label, math.inf), per_id_ns(fn, sample))
    for label, ns in best.items():
        print(f"| {label} | {ns:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
