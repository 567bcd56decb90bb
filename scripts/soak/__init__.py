"""The soak (`python scripts/soak`): the embedded stack under steady load with random faults,
ending with an audit. Its modules follow a run: cli (options, the stack) → run (epochs and
rounds) → crew (the workers) and faults → audit → summary → report (table and plot)."""
