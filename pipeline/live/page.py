"""The live page's HTML: the static file shipped in the package, with the data of the
moment inlined, so the first paint needs no second request (and a browser that runs no
more than the page's own script still draws it)."""

from __future__ import annotations

import functools
from importlib import resources

PLACEHOLDER = b"/*LIVE_DATA*/null"


@functools.cache
def template() -> bytes:
    page = resources.files("pipeline.live").joinpath("page.html").read_bytes()
    if PLACEHOLDER not in page:
        raise RuntimeError("pipeline/live/page.html lost its data placeholder")
    return page


def render(document: bytes) -> bytes:
    """The page with ``document`` (JSON) as its first data. Every ``<`` is escaped as JSON
    allows (it can only stand inside strings), so no label (a topic, a lane, an arm) can end
    the script element it sits in."""
    return template().replace(PLACEHOLDER, document.replace(b"<", b"\\u003c"))
