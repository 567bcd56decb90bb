"""Control logic, plain data and no I/O: lanes and their scheduler, lane rules, the lane
guard, the adaptive controller, the circuit breaker, retry policy and budgets."""
