"""Per-flow state and verdicts. Pure: the clock is passed in."""
