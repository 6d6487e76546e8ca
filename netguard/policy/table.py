"""Host pattern table whose lookup cost depends on the name, not on the number of entries.

Strategy: exact entries and wildcard entries sit in one dict keyed by (name, wildcard, port). A
lookup for `a.b.c` with port P probes, most specific first: (a.b.c, exact, P), (a.b.c, exact, any),
then each proper suffix from the longest, (b.c, wildcard, P), (b.c, wildcard, any), (c, ...). That is
at most 2 × labels dictionary probes, whatever the table holds. The first hit wins, so an exact
entry beats a wildcard and a deeper wildcard beats a shallower one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from netguard.policy.hosts import Pattern

V = TypeVar("V")


class PatternTable(Generic[V]):
    """Maps host patterns to values; `lookup` returns the most specific match.

    The Pattern (a tuple) is the key and callers are expected to share value objects, so a
    100k-entry policy costs one dict entry and one small tuple per pattern."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple[str, bool, int | None], V] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[Pattern, V]]:
        return ((Pattern(*key), value) for key, value in self._entries.items())

    def get(self, pattern: Pattern) -> V | None:
        return self._entries.get(pattern)

    def put(self, pattern: Pattern, value: V) -> None:
        self._entries[pattern] = value

    def lookup(self, host: str, port: int | None) -> tuple[Pattern, V] | None:
        """The most specific entry matching a normalised host (and port, if known)."""
        entries = self._entries
        if port is not None:
            hit = entries.get((host, False, port))
            if hit is not None:
                return Pattern(host, False, port), hit
        hit = entries.get((host, False, None))
        if hit is not None:
            return Pattern(host, False, None), hit
        dot = host.find(".")
        while dot != -1:
            suffix = host[dot + 1 :]
            if port is not None:
                hit = entries.get((suffix, True, port))
                if hit is not None:
                    return Pattern(suffix, True, port), hit
            hit = entries.get((suffix, True, None))
            if hit is not None:
                return Pattern(suffix, True, None), hit
            dot = host.find(".", dot + 1)
        return None
