"""Host pattern table whose lookup cost depends on the name, not on the number of entries.

Strategy: exact entries and wildcard entries sit in two dicts keyed by the name itself (patterns
with a port, which are rare, in a third keyed by (name, wildcard, port)). A lookup for `a.b.c` with
port P probes, most specific first: (a.b.c, exact, P), (a.b.c, exact, any), then each proper suffix
from the longest, (b.c, wildcard, P), (b.c, wildcard, any), (c, ...). That is at most 2 × labels
dictionary probes, whatever the table holds. The first hit wins, so an exact entry beats a wildcard
and a deeper wildcard beats a shallower one.

Keying by the plain name keeps a 100k-entry policy small: one dict slot and the name string per
entry (callers share value objects), and a probe hashes a string, whose hash is cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from netguard.policy.hosts import Pattern

V = TypeVar("V")


class PatternTable(Generic[V]):
    """Maps host patterns to values; `lookup` returns the most specific match."""

    __slots__ = ("_exact", "_ported", "_wild")

    def __init__(self) -> None:
        self._exact: dict[str, V] = {}
        self._wild: dict[str, V] = {}
        self._ported: dict[tuple[str, bool, int], V] = {}

    def __len__(self) -> int:
        return len(self._exact) + len(self._wild) + len(self._ported)

    def __iter__(self) -> Iterator[tuple[Pattern, V]]:
        yield from ((Pattern(name, False, None), value) for name, value in self._exact.items())
        yield from ((Pattern(name, True, None), value) for name, value in self._wild.items())
        yield from ((Pattern(*key), value) for key, value in self._ported.items())

    def get(self, pattern: Pattern) -> V | None:
        """The value stored at exactly this pattern."""
        name, wildcard, port = pattern
        if port is not None:
            return self._ported.get((name, wildcard, port))
        return (self._wild if wildcard else self._exact).get(name)

    def put(self, pattern: Pattern, value: V) -> None:
        """Store value at pattern (replacing what was there)."""
        name, wildcard, port = pattern
        if port is not None:
            self._ported[(name, wildcard, port)] = value
        elif wildcard:
            self._wild[name] = value
        else:
            self._exact[name] = value

    def lookup(self, host: str, port: int | None) -> tuple[Pattern, V] | None:
        """The most specific entry matching a normalised host (and port, if known)."""
        ported = self._ported if port is not None and self._ported else None
        if ported is not None and port is not None:
            hit = ported.get((host, False, port))
            if hit is not None:
                return Pattern(host, False, port), hit
        hit = self._exact.get(host)
        if hit is not None:
            return Pattern(host, False, None), hit
        wild = self._wild
        dot = host.find(".")
        while dot != -1:
            suffix = host[dot + 1 :]
            if ported is not None and port is not None:
                hit = ported.get((suffix, True, port))
                if hit is not None:
                    return Pattern(suffix, True, port), hit
            hit = wild.get(suffix)
            if hit is not None:
                return Pattern(suffix, True, None), hit
            dot = host.find(".", dot + 1)
        return None
