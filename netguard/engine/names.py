"""The address -> names table learned from DNS answers.

Strategy: a dict from raw address bytes to {name: expiry}. Every name of an answer's CNAME chain is
stored for each address the chain ends in, so a connection to that address (IP literal, no SNI) is
judged by all of them. Entries live for the answer's TTL, clamped to [MIN_TTL, MAX_TTL]; the table
holds at most MAX_ENTRIES (address, name) pairs and MAX_NAMES_PER_ADDRESS names per address. When
the table is full, `learn` refuses the answer (returns False) and the engine gives the answer the
policy's fail verdict. Expiry goes through a heap of (expiry, address, name), so purging costs
only what expired (entries refreshed or evicted since leave stale heap items, skipped on the way).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

# Clients keep addresses longer than a TTL of 0 or 5 s says (JVMs cache 30 s, browsers a minute), and
# a connection by IP literal right after must still be judged by name: keep entries at least 60 s.
MIN_TTL = 60
# A long TTL must not pin memory for days; an hour covers every client cache we know of.
MAX_TTL = 3600
# (address, name) pairs: about 20 MB at worst, and a busy VM resolves a few thousand names.
MAX_ENTRIES = 65536
# Shared CDN addresses carry many names; past this, the entry expiring first gives way.
MAX_NAMES_PER_ADDRESS = 32


class NameTable:
    """Address -> names, TTL- and size-bounded. Times are the caller's clock, in seconds."""

    __slots__ = ("_by_address", "_count", "_heap", "max_entries")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._by_address: dict[bytes, dict[str, float]] = {}
        self._heap: list[tuple[float, bytes, str]] = []
        self._count = 0
        self.max_entries = max_entries

    def __len__(self) -> int:
        return self._count

    def names(self, address: bytes, now: float) -> list[str]:
        """The live names learned for address, newest expiry first."""
        entry = self._by_address.get(address)
        if not entry:
            return []
        live = sorted(((exp, n) for n, exp in entry.items() if exp > now), reverse=True)
        return [n for _, n in live]

    def learn(self, addresses: Iterable[bytes], names: Iterable[str], ttl: int, now: float) -> bool:
        """Remember that each address carries each name for ttl seconds. False when the table is
        full even after expired entries are purged (nothing is stored then)."""
        addresses = list(dict.fromkeys(addresses))
        names = list(dict.fromkeys(names))
        expiry = now + min(max(ttl, MIN_TTL), MAX_TTL)
        new = sum(1 for a in addresses for n in names if n not in self._by_address.get(a, {}))
        if self._count + new > self.max_entries:
            self.purge(now)
            if self._count + new > self.max_entries:
                return False
        for a in addresses:
            entry = self._by_address.setdefault(a, {})
            for n in names:
                old = entry.get(n)
                if old is None:
                    self._count += 1
                if old is None or expiry > old:
                    entry[n] = expiry
                    heapq.heappush(self._heap, (expiry, a, n))
            while len(entry) > MAX_NAMES_PER_ADDRESS:
                del entry[min(entry, key=entry.__getitem__)]
                self._count -= 1
        if len(self._heap) > 2 * self._count + 1024:
            # Stale items (refreshed or evicted entries) outnumber live ones: rebuild.
            self._heap = [(exp, a, n) for a, entry in self._by_address.items() for n, exp in entry.items()]
            heapq.heapify(self._heap)
        return True

    def purge(self, now: float) -> None:
        """Drop every expired entry."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            expiry, a, n = heapq.heappop(heap)
            entry = self._by_address.get(a)
            if entry is None or entry.get(n) != expiry:
                continue  # refreshed or evicted since
            del entry[n]
            self._count -= 1
            if not entry:
                del self._by_address[a]
