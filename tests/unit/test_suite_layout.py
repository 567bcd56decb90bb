"""The suite's own layout: test directories are not packages, so pytest imports each test
file by its basename; two files of one name in different directories stop the whole run at
collection (it did, on a clean clone)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_has_a_name_of_its_own() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
