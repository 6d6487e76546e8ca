"""The address -> names table learned from DNS answers.

Strategy: every name of an answer's CNAME chain is stored for each address the chain ends in, so a
connection to that address (IP literal, no SNI) is judged by all of them. Entries live for the
answer's TTL, clamped to [MIN_TTL, MAX_TTL]; the table holds at most MAX_ENTRIES (address, name)
pairs and MAX_NAMES_PER_ADDRESS names per address. When the table is full, `learn` refuses the
answer (returns False) and the engine gives the answer the policy's fail verdict.

Memory is the point of the layout (a full table must fit the daemon's RSS budget): each pair is one
tuple (expiry, address, name), and that same tuple is both the address's record in one flat dict
and the pair's item in the expiry heap. An address with one name (the usual case) maps to its
tuple; one with several maps to a dict name -> tuple (a list would be smaller but slower to update
for a CNAME chain's names). Purging pops the heap: an item that is no longer in its address's record
(refreshed or evicted since) is skipped, so purging costs only what expired.
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
_Record = _Item | dict[str, _Item]


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
        return [n for _, _, n in sorted((item for item in record.values() if item[0] > now), reverse=True)]

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
            if record is None:
                new += len(names)
            elif isinstance(record, tuple):
                new += len(names) - (record[2] in names)
            else:
                new += sum(n not in record for n in names)
        if self._count + new > self.max_entries:
            self.purge(now)
            if self._count + new > self.max_entries:
                return False
        heap = self._heap
        for a in addresses:
            record = by_address.get(a)
            if record is None:
                if len(names) == 1:  # the usual answer: a new address with one name
                    item = (expiry, a, names[0])
                    heapq.heappush(heap, item)
                    by_address[a] = item
                    self._count += 1
                    continue
                entry: dict[str, _Item] = {}
            elif isinstance(record, tuple):
                a = record[1]  # a refresh keeps the one address object already held
                entry = {record[2]: record}
            else:
                entry, a = record, next(iter(record.values()))[1]
            for n in names:
                old = entry.get(n)
                if old is None:
                    self._count += 1
                elif expiry <= old[0]:
                    continue
                item = (expiry, a, n)
                entry[n] = item
                heapq.heappush(heap, item)
            if len(entry) > MAX_NAMES_PER_ADDRESS:
                self._count -= _evict(entry)
            if entry:
                by_address[a] = next(iter(entry.values())) if len(entry) == 1 else entry
        if len(heap) > 2 * self._count + 1024:
            # Stale items (refreshed or evicted entries) outnumber live ones: rebuild.
            live: list[_Item] = []
            for record in by_address.values():
                if isinstance(record, tuple):
                    live.append(record)
                else:
                    live += record.values()
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
            elif isinstance(record, dict) and record.get(item[2]) is item:
                del record[item[2]]
                if len(record) == 1:
                    by_address[a] = next(iter(record.values()))
            else:
                continue  # refreshed or evicted since
            self._count -= 1


def _evict(entry: dict[str, _Item]) -> int:
    """Trim an address's names to MAX_NAMES_PER_ADDRESS, the one expiring first going first (the
    earliest learned among equals); return how many went."""
    gone = 0
    while len(entry) > MAX_NAMES_PER_ADDRESS:
        del entry[min(entry, key=lambda n: entry[n][0])]
        gone += 1
    return gone
