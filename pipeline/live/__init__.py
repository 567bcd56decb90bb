"""The live page of the operations endpoint (``/`` and ``/live.json``): throughput, latency,
backlog, lanes, partitions, the breaker, restores and experiment arms, drawn from the
process's own Prometheus registry.

- ``readings.py``: one pass over the registry as values; histogram quantiles;
- ``sampler.py``: one reading a second, a bounded ring of points and the state now;
- ``page.py`` and ``page.html``: the static page (inline SVG charts, no libraries)."""

from pipeline.live.page import render
from pipeline.live.sampler import LiveSampler, RuntimeParts, parts_of

__all__ = ["LiveSampler", "RuntimeParts", "parts_of", "render"]
