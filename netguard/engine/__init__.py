"""Per-flow state and verdicts. Pure: the clock is passed in, nothing here does I/O."""

from netguard.engine.core import Engine, Stats
from netguard.engine.verdict import ACCEPT, Action, Event, FlowKey, Verdict

__all__ = ["ACCEPT", "Action", "Engine", "Event", "FlowKey", "Stats", "Verdict"]
