"""pipeline/ids.py: integers stay as they are, strings become a stable non-negative int64
above every integer id, and what is not an id is refused with a dead-letter reason."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from pipeline import ids


@pytest.mark.parametrize("value", [0, 18, ids.MAX_INT])
def test_integers_are_themselves(value: int) -> None:
    assert ids.internal_id(value) == value


@pytest.mark.parametrize(("text", "number"), [("0", 0), ("18", 18), (str(ids.MAX_INT), ids.MAX_INT)])
def test_an_integers_decimal_text_is_that_integer(text: str, number: int) -> None:
    assert ids.internal_id(text) == number and ids.outside_id(text) == number


@pytest.mark.parametrize(
    "text",
    ["cust-18", "SKU-00018", "0018", "-5", "18 ", "1e3", "١٨", str(ids.MAX_INT + 1), str(uuid.UUID(int=7))],
)
def test_other_strings_are_ids_of_their_own_above_every_integer(text: str) -> None:
    internal = ids.internal_id(text)
    assert ids.STRING_BASE <= internal < 2**63  # never an integer id, always a non-negative int64
    assert internal == ids.string_id(text) and ids.outside_id(text) == text


def test_a_strings_id_is_the_same_in_another_process() -> None:
    """Python's own hash() differs per process (PYTHONHASHSEED): the id must not."""
    texts = ["cust-18", "SKU-00018", "é-ünïcode", str(uuid.UUID(int=12345))]
    code = "import sys; from pipeline import ids; print([ids.internal_id(t) for t in sys.argv[1:]])"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code, *texts],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
            timeout=60,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert runs == {str([ids.internal_id(t) for t in texts])}


def test_the_hash_is_pinned() -> None:
    """A changed hash would orphan every stored history and every trained catalogue."""
    assert ids.internal_id("cust-18") == 14450374336262973
    assert ids.internal_id("SKU-00018") == 6530277825790763932


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "wrong_type"),
        (1.0, "wrong_type"),
        (None, "wrong_type"),
        ([1], "wrong_type"),
        ("", "wrong_type"),
        (-1, "out_of_range"),
        (ids.MAX_INT + 1, "out_of_range"),
        ("x" * (ids.MAX_TEXT + 1), "out_of_range"),
    ],
)
def test_what_is_not_an_id_is_refused_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(ids.BadId) as refused:
        ids.internal_id(value, "item_id")
    assert refused.value.reason == reason and "item_id" in refused.value.detail
    assert ids.internal_or_none(value) is None


def test_a_record_key_is_the_ids_text() -> None:
    assert ids.key_text(18) == b"18" == ids.key_text("18")
    assert ids.key_text("cust-18") == b"cust-18"
