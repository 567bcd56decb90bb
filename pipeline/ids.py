"""User and item ids as they come: integers or strings, one non-negative int64 inside.

Inside the pipeline an id is a non-negative int64 (the user state keys users by 8 bytes and
tells a footer by a negative trailing int64, Triton's tensors are INT64, experiment arms
hash the user id). Outside, ids are what the customer's systems use: ``18``, ``cust-18``,
``SKU-00018``, UUIDs. The rule (docs/design.md, "Ids as they come"):

- an integer in 0..2^53-1 is itself (what every JSON consumer reads exactly);
- a string that is such an integer's decimal text (ASCII digits, no sign, no leading zero,
  no space: what ``str(n)`` gives) is that integer: ``"18"`` is 18, as CSV files give it;
- any other string of 1..MAX_TEXT characters (``"cust-18"``, ``"0018"``, a UUID) is an id
  of its own: xxh3-64 of its UTF-8 bytes folded into [2^53, 2^63), so a string never lands
  on an integer id; stable across processes, runs and machines;
- anything else (a bool, a float, null, an empty or longer string, a negative or larger
  integer) is refused with a reason the dead-letter topic carries.

Two strings share an internal id with the birthday probability over 2^63 - 2^53 values:
about 5.4e-8 for a million distinct strings, 5.4e-4 for a hundred million (measured and
derived in docs/design.md). The output gives ids back as they came: the user from the event,
the items from the model's catalogue (its ITEM_KEYS answer)."""

from __future__ import annotations

from typing import Final

import xxhash

MAX_INT: Final = 2**53 - 1  # largest integer id: every JSON consumer reads it exactly
STRING_BASE: Final = 2**53  # a string's internal id is at least this: never an integer id's
STRING_SPAN: Final = 2**63 - STRING_BASE  # internal ids stay non-negative int64
MAX_TEXT: Final = 256  # characters of a string id
_MAX_INT_DIGITS: Final = len(str(MAX_INT))

Id = int | str  # an id as the outside world gives it


class BadId(ValueError):
    """A value that is not an id: ``reason`` is the dead-letter reason, the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_xxh3 = xxhash.xxh3_64_intdigest


def string_id(text: str) -> int:
    """The internal id of a string id (not an integer's text): in [2^53, 2^63)."""
    return STRING_BASE + _xxh3(text.encode("utf-8", "surrogatepass")) % STRING_SPAN


def integer_text(text: str) -> int | None:
    """The integer ``text`` is the decimal text of (str(n) for n in 0..2^53-1), else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_INT_DIGITS:
        return None
    if text[0] == "0" and len(text) > 1:
        return None  # "0018": a code, not a number's text
    number = int(text)
    return number if number <= MAX_INT else None


def internal_id(value: object, name: str = "id") -> int:
    """The id's non-negative int64 inside the pipeline; BadId (reason, detail naming
    ``name``) when ``value`` is not an id."""
    if type(value) is int:  # bool is an int subclass: refused below
        if 0 <= value <= MAX_INT:
            return value
        raise BadId("out_of_range", f"field '{name}' must be in [0, 2^53), got {value}")
    if type(value) is str:
        if 0 < len(value) <= MAX_TEXT and not value.isdigit():  # most string ids: hashed inline
            return STRING_BASE + _xxh3(value.encode("utf-8", "surrogatepass")) % STRING_SPAN
        if not value:
            raise BadId("wrong_type", f"field '{name}' must not be an empty string")
        if len(value) > MAX_TEXT:
            raise BadId("out_of_range", f"field '{name}' has {len(value)} characters, at most {MAX_TEXT}")
        number = integer_text(value)
        return string_id(value) if number is None else number
    raise BadId("wrong_type", f"field '{name}' must be an integer or a string, got {type(value).__name__}")


def internal_or_none(value: object) -> int | None:
    """internal_id, or None when ``value`` is not an id (readers that skip such rows)."""
    try:
        return internal_id(value)
    except BadId:
        return None


def outside_id(value: Id) -> Id:
    """The id as the output gives it back: an integer's text as the integer, any other
    string as it came (``"18"`` → 18, ``"cust-18"`` → ``"cust-18"``)."""
    if type(value) is str and (number := integer_text(value)) is not None:
        return number
    return value


def key_text(value: Id) -> bytes:
    """The record key of an id (its text): a user's key on every topic the pipeline writes."""
    return (value if type(value) is str else str(value)).encode()
