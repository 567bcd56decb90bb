"""The throughput benchmark (`pipeline bench`, `python scripts/bench`): the pipeline against a
naive loop, a hand-written batched loop and Triton alone on one embedded stack. Its modules
follow a run: cli (options) → main (reps and the latency step) → runs (one variant on the
stack, sampled) → baselines / ceiling (the competing loops, as worker processes) → stats →
report and plot."""
