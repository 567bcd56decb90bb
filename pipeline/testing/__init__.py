"""The testing kit: the assembled pipeline, in process, without a broker or Triton.

- ``running(topology, records)`` / ``run_to_end(...)``: the real runtime on the kit's ends
  (``run.py``), with ``topology(**sections)`` for the shipped topology with overrides;
- ``ListSource`` and ``CaptureSink`` (``ends.py``): in-memory ends with the real partitions'
  owner behind the source (offsets, credits, commits, rebalances);
- ``FakeTriton`` (``fake_triton.py``): the inference server contract answered in process,
  with failures and refusals on demand;
- ``ManualClock`` (``clock.py``) and the value builders (``builders.py``).
"""

from pipeline.testing.clock import ManualClock
from pipeline.testing.ends import CaptureSink, ListSource
from pipeline.testing.fake_triton import FakeTriton, hashed_scorer, request_arrays
from pipeline.testing.run import InProcessRun, run_to_end, running, topology

__all__ = [
    "CaptureSink",
    "FakeTriton",
    "InProcessRun",
    "ListSource",
    "ManualClock",
    "hashed_scorer",
    "request_arrays",
    "run_to_end",
    "running",
    "topology",
]
