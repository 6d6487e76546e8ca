"""The address -> names table learned from DNS answers.

Strategy: every name of an answer's CNAME chain is stored for each address the chain ends in, so a
connection to that address (IP literal, no SNI) is judged by all of them. Entries live for the
answer's TTL, clamped to [MIN_TTL, MAX_TTL]; the table holds at most MAX_ENTRIES (address, name)
pairs and MAX_NAMES_PER_ADDRESS names per address. When the table is full, `learn` refuses the
answer (returns False) and the engine gives the answer the policy's fail verdict.

Memory is the point of the layout (a full table must fit the daemon's RSS budget): each pair is one
tuple (expiry, address, name), and that same tuple is both the address's record in one flat dict
and the pair's item in the expiry heap. An address with one name (the usual case) maps to its
tuple; one with several maps to a list of them, in the order the names were first learned. Purging
pops the heap: an item that is no longer in its address's record (refreshed or evicted since) is
skipped, so purging costs only what expired.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

# Clients keep addresses longer than a TTL of 0 or 5 s says (JVMs cache 30 s, browsers a minute), and
# a connection by IP literal right after must still be judged by name: keep entries at least 60 s.
MIN_TTL = 60
# A long TTL must not pin memory for days; an hour covers every client cache we know of.
MAX_TTL = 3600
# (address, name) pairs: about 250 B each (one tuple, its expiry, name and address objects, a dict
# slot and a heap slot), so about 16 MB when full; a busy VM resolves a few thousand names.
MAX_ENTRIES = 65536
# Shared CDN addresses carry many names; past this, the entry expiring first gives way.
MAX_NAMES_PER_ADDRESS = 32

_Item = tuple[float, bytes, str]  # (expiry, address, name)
_Record = _Item | list[_Item]


class NameTable:
    """Address -> names, TTL- and size-bounded. Times are the caller's clock, in seconds."""

    __slots__ = ("_by_address", "_count", "_heap", "max_entries")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._by_address: dict[bytes, _Record] = {}
        self._heap: list[_Item] = []
        self._count = 0
        self.max_entries = max_entries

    def __len__(self) -> int:
        return self._count

    def names(self, address: bytes, now: float) -> list[str]:
        """The live names learned for address, newest expiry first."""
        record = self._by_address.get(address)
        if record is None:
            return []
        if isinstance(record, tuple):
            return [record[2]] if record[0] > now else []
        return [n for _, _, n in sorted((item for item in record if item[0] > now), reverse=True)]

    def learn(self, addresses: Iterable[bytes], names: Iterable[str], ttl: int, now: float) -> bool:
        """Remember that each address carries each name for ttl seconds. False when the table is
        full even after expired entries are purged (nothing is stored then)."""
        addresses = list(dict.fromkeys(addresses))
        names = list(dict.fromkeys(names))
        expiry = now + min(max(ttl, MIN_TTL), MAX_TTL)
        by_address = self._by_address
        new = 0
        for a in addresses:
            record = by_address.get(a)
            new += len(names) if record is None else sum(_find(record, n) is None for n in names)
        if self._count + new > self.max_entries:
            self.purge(now)
            if self._count + new > self.max_entries:
                return False
        heap = self._heap
        for a in addresses:
            record = by_address.get(a)
            for n in names:
                old = None if record is None else _find(record, n)
                if old is None:
                    self._count += 1
                elif expiry <= old[0]:
                    continue
                item = (expiry, a if record is None else _address(record), n)
                heapq.heappush(heap, item)
                record = _put(record, old, item)
            if record is not None:
                if isinstance(record, list):
                    self._count -= _evict(record)
                by_address[a] = record
        if len(heap) > 2 * self._count + 1024:
            # Stale items (refreshed or evicted entries) outnumber live ones: rebuild.
            live: list[_Item] = []
            for record in by_address.values():
                if isinstance(record, tuple):
                    live.append(record)
                else:
                    live += record
            heapq.heapify(live)
            self._heap = live
        return True

    def purge(self, now: float) -> None:
        """Drop every expired entry."""
        heap = self._heap
        by_address = self._by_address
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            a = item[1]
            record = by_address.get(a)
            if record is item:
                del by_address[a]
            elif isinstance(record, list) and any(x is item for x in record):
                del record[_index(record, item)]
                if len(record) == 1:
                    by_address[a] = record[0]
            else:
                continue  # refreshed or evicted since
            self._count -= 1


def _find(record: _Record, name: str) -> _Item | None:
    """The item for name in an address's record, if any."""
    if isinstance(record, tuple):
        return record if record[2] == name else None
    return next((item for item in record if item[2] == name), None)


def _address(record: _Record) -> bytes:
    """The address object the record already holds (so a refresh keeps one copy)."""
    return record[1] if isinstance(record, tuple) else record[0][1]


def _put(record: _Record | None, old: _Item | None, item: _Item) -> _Record:
    """The record with item added, or in old's place (keeping the order names were learned in)."""
    if record is None:
        return item
    if isinstance(record, tuple):
        return item if old is not None else [record, item]
    if old is None:
        record.append(item)
    else:
        record[_index(record, old)] = item
    return record


def _index(record: list[_Item], item: _Item) -> int:
    return next(i for i, x in enumerate(record) if x is item)


def _evict(record: list[_Item]) -> int:
    """Trim a record to MAX_NAMES_PER_ADDRESS, the entry expiring first going first (the earliest
    learned among equals); return how many went."""
    gone = 0
    while len(record) > MAX_NAMES_PER_ADDRESS:
        del record[min(range(len(record)), key=lambda i: record[i][0])]
        gone += 1
    return gone
