"""The address -> names table learned from DNS answers.

Strategy: an answer teaches one chain (every name of it the engine judged: the question, each CNAME
and SVCB/HTTPS target, the owners) for each address it gives (A, AAAA, SVCB hints), so a connection
to that address is judged by all of them, and a name can be asked whether an answer without a
blocked name gave it this address (a shared CDN) or only one whose chain holds a blocked name (an
alias of a blocked registry). The table keeps (address, chain) pairs; a chain is one string, the
names joined by a space (no host name holds one), so a one-name answer costs no more than a name.
Every bound counts names, a pair weighing as many as its chain holds, so memory stays what it was
per (address, name). Entries live for the answer's TTL, clamped to [MIN_TTL, MAX_TTL].

Blocked evidence (a chain the engine found a blocked name in) is protected: it lives in its own
budget (MAX_PROTECTED names) and is never evicted before it expires; when that budget is full,
`learn` refuses the answer (returns False) and the engine gives it the policy's fail verdict.
Everything else lives in MAX_ENTRIES names and gives way when the table is full, the entry expiring
first going first: a flood of other names (a wildcard zone makes any number) pushes out only
unblocked names, and losing one of those can only block more (the address is unknown, or the name
is no longer known to share it). Per address at most MAX_NAMES_PER_ADDRESS names: past it, an
unblocked chain goes before a blocked one, then the one expiring first. Since a policy reload may
block a name learned before, `still_protected` (the engine's current judgment of a chain) is asked
before an unprotected entry is evicted: one that is blocked now moves into the protected budget.

Memory is the point of the layout (a full table must fit the daemon's RSS budget): each pair is one
tuple (expiry, address, chain), and that same tuple is both the address's record in one flat dict
and the pair's item in its tier's expiry heap; the protected ones are also in a set (a fourth field
would cost every pair 16 bytes). An address with one chain (the usual case) maps to its tuple; one
with several maps to a dict chain -> tuple. Purging pops the heaps: an item no longer in its
address's record (refreshed or evicted since) is skipped, so purging costs only what expired.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

# Clients keep addresses longer than a TTL of 0 or 5 s says (JVMs cache 30 s, browsers a minute), and
# a connection by IP literal right after must still be judged by name: keep entries at least 60 s.
MIN_TTL = 60
# A long TTL must not pin memory for days; an hour covers every client cache we know of.
MAX_TTL = 3600
# Unprotected names (over all addresses): about 250 B each (one tuple, its expiry, chain and address
# objects, a dict slot and a heap slot), so about 16 MB when full; a busy VM resolves a few
# thousand names. Past it the entry expiring first gives way.
MAX_ENTRIES = 65536
# Protected names (answers with a blocked name): a VM resolves a handful of blocked registry names,
# so this holds hundreds of times the legitimate need (about 4 MB when full). A wildcard blocked zone
# can fill it; then new blocked evidence is refused (the fail verdict), never old evidence dropped.
MAX_PROTECTED = 16384
# Shared CDN addresses carry many names; a connection to an address with blocked evidence reads
# them all, so they are bounded: past it, unblocked chains give way first.
MAX_NAMES_PER_ADDRESS = 32
# Names one answer may teach (question, CNAME and SVCB targets, owners): resolvers stop following a
# CNAME chain after 8 to 16 hops and RFC 9460 clients after 8 aliases. More is refused (the engine
# gives the answer the fail verdict), which also keeps one chain within an address's budget.
MAX_CHAIN_NAMES = MAX_NAMES_PER_ADDRESS
SEPARATOR = " "  # joins a chain's names; normalised host names never hold it
# NAT64's well-known prefix (RFC 6052 section 2.1), 64:ff9b::/96: 64:ff9b::a.b.c.d is the IPv4 host
# a.b.c.d reached through a translator, and a DNS64 resolver synthesises such AAAA records from A
# records. Both are kept and looked up under the IPv4 address (`canonical`), so either teaches the
# other. (Network-specific prefixes, 64:ff9b:1::/48 included, are configuration netguard cannot see.)
NAT64_PREFIX = bytes.fromhex("0064ff9b") + bytes(8)

Chain = str
_Item = tuple[float, bytes, Chain]  # (expiry, address, chain)
_Record = _Item | dict[Chain, _Item]


def canonical(address: bytes) -> bytes:
    """The key an address is kept under: the IPv4 address inside NAT64's well-known prefix, else itself."""
    return address[12:] if len(address) == 16 and address[:12] == NAT64_PREFIX else address


def chain_of(names: Iterable[str]) -> Chain:
    """The chain key for an answer's names (normalised host names, in order, each once)."""
    return SEPARATOR.join(names)


def chain_names(chain: Chain) -> list[str]:
    """The names of a chain."""
    return chain.split(SEPARATOR)


def _weight(chain: Chain) -> int:
    return chain.count(SEPARATOR) + 1


class NameTable:
    """Address -> chains of names, TTL- and size-bounded. Times are the caller's clock, in seconds."""

    __slots__ = ("_by_address", "_count", "_heap", "_pheap", "_prot", "_protected", "max_entries", "max_protected",
                 "still_protected")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_protected: int = MAX_PROTECTED,
                 still_protected: Callable[[Chain], bool] | None = None) -> None:
        self._by_address: dict[bytes, _Record] = {}
        self._heap: list[_Item] = []  # unprotected items
        self._pheap: list[_Item] = []  # protected items
        self._prot: set[_Item] = set()  # the live protected items
        self._count = 0  # names in live unprotected pairs
        self._protected = 0  # names in live protected pairs
        self.max_entries = max_entries
        self.max_protected = max_protected
        self.still_protected = still_protected

    def __len__(self) -> int:
        """Names held, over all addresses (a pair counts the names of its chain)."""
        return self._count + self._protected

    @property
    def protected(self) -> int:
        """Names held as blocked evidence."""
        return self._protected

    def chains(self, address: bytes, now: float) -> list[Chain]:
        """The live chains learned for address, newest expiry first."""
        record = self._by_address.get(canonical(address))
        if record is None:
            return []
        if isinstance(record, tuple):
            return [record[2]] if record[0] > now else []
        return [item[2] for item in sorted((i for i in record.values() if i[0] > now), reverse=True)]

    def names(self, address: bytes, now: float) -> list[str]:
        """The live names learned for address, each once, from the newest-expiring chain on."""
        record = self._by_address.get(canonical(address))
        if record is None:
            return []
        if isinstance(record, tuple):
            if record[0] <= now:
                return []
            return [record[2]] if SEPARATOR not in record[2] else list(dict.fromkeys(chain_names(record[2])))
        return list(dict.fromkeys(n for c in self.chains(address, now) for n in chain_names(c)))

    def learn(self, addresses: Iterable[bytes], chain: Chain, ttl: int, now: float, protected: bool = False) -> bool:
        """Remember that each address was given with chain for ttl seconds; `protected`: the chain
        holds a blocked name. False when the chain has more than MAX_CHAIN_NAMES names, or protected
        entries do not fit even after expired ones are purged (nothing is stored then)."""
        addresses = list(dict.fromkeys(map(canonical, addresses)))
        if not addresses or not chain:
            return True
        weight = _weight(chain)
        if weight > MAX_CHAIN_NAMES:
            return False
        expiry = now + min(max(ttl, MIN_TTL), MAX_TTL)
        by_address = self._by_address
        held = self._protected if protected else self._count
        limit = self.max_protected if protected else self.max_entries
        if held + len(addresses) * weight > limit and held + self._new(addresses, chain, protected) * weight > limit:
            self.purge(now)  # which may take pairs this answer refreshes: count again
            held = self._protected if protected else self._count
            over = held + self._new(addresses, chain, protected) * weight - limit
            if over > 0 and (protected or not self._make_room(over, chain, addresses)):
                return False
        prot = self._prot
        for a in addresses:
            record = by_address.get(a)
            old = _item(record, chain)
            if old is not None:
                if (old in prot) == protected and expiry <= old[0]:
                    continue
                a = old[1]  # a refresh keeps the address object already held
                self._uncount(old)
                item = (max(expiry, old[0]), a, chain)
            else:
                if record is not None:  # so does another chain for a known address
                    a = record[1] if isinstance(record, tuple) else next(iter(record.values()))[1]
                item = (expiry, a, chain)
            if protected:
                heapq.heappush(self._pheap, item)
                prot.add(item)
                self._protected += weight
            else:
                heapq.heappush(self._heap, item)
                self._count += weight
            if record is None or record is old:
                by_address[a] = item  # the usual answer: a new address with one chain
                continue
            if isinstance(record, tuple):
                record = {record[2]: record}
            record[chain] = item
            self._trim(record)
            by_address[a] = next(iter(record.values())) if len(record) == 1 else record
        if len(self._heap) + len(self._pheap) > 2 * (self._count + self._protected) + 1024:
            self._compact()
        return True

    def purge(self, now: float) -> None:
        """Drop every expired entry."""
        for heap in (self._heap, self._pheap):
            while heap and heap[0][0] <= now:
                self._drop(heapq.heappop(heap))

    # -- internals ----------------------------------------------------------------------------

    def _new(self, addresses: list[bytes], chain: Chain, protected: bool) -> int:
        """Addresses that do not hold chain in the tier `protected` yet."""
        new = 0
        for a in addresses:
            old = _item(self._by_address.get(a), chain)
            if old is None or (old in self._prot) != protected:
                new += 1
        return new

    def _drop(self, item: _Item) -> bool:
        """Take item out of its address's record if it is still there (else it was refreshed or
        evicted since: a stale heap entry); True if it was."""
        by_address = self._by_address
        a = item[1]
        record = by_address.get(a)
        if record is item:
            del by_address[a]
        elif isinstance(record, dict) and record.get(item[2]) is item:
            del record[item[2]]
            if len(record) == 1:
                by_address[a] = next(iter(record.values()))
        else:
            return False
        self._uncount(item)
        return True

    def _uncount(self, item: _Item) -> None:
        if self._prot and item in self._prot:
            self._prot.discard(item)
            self._protected -= _weight(item[2])
        else:
            self._count -= _weight(item[2])

    def _make_room(self, needed: int, chain: Chain, addresses: list[bytes]) -> bool:
        """Evict `needed` names of unprotected entries, the one expiring first going first, except
        the pairs (address, chain) being refreshed; one that is blocked under the current judgment
        moves to the protected budget instead (False, and that one kept, if the budget is full)."""
        heap = self._heap
        spared: list[_Item] = []
        while needed > 0 and heap:
            item = heap[0]
            if _item(self._by_address.get(item[1]), item[2]) is not item:
                heapq.heappop(heap)  # stale
                continue
            heapq.heappop(heap)
            if item[2] == chain and item[1] in addresses:
                spared.append(item)
                continue
            if self.still_protected is not None and self.still_protected(item[2]):
                if self._protected + _weight(item[2]) > self.max_protected:
                    spared.append(item)
                    break
                # The same item changes tier: the record keeps it.
                self._count -= _weight(item[2])
                self._protected += _weight(item[2])
                self._prot.add(item)
                heapq.heappush(self._pheap, item)
            else:
                self._drop(item)
            needed -= _weight(item[2])
        for item in spared:
            heapq.heappush(heap, item)
        return needed <= 0

    def _trim(self, record: dict[Chain, _Item]) -> None:
        """Bring one address's names down to MAX_NAMES_PER_ADDRESS: unblocked chains go first (by the
        current judgment where there is one), then the one expiring first (the earliest learned
        among equals)."""
        held = sum(_weight(c) for c in record)
        if held <= MAX_NAMES_PER_ADDRESS:
            return
        judge = self.still_protected
        blocked = {c: judge(c) if judge is not None else i in self._prot for c, i in record.items()}
        while held > MAX_NAMES_PER_ADDRESS:
            victim = min(record.values(), key=lambda i: (blocked[i[2]], i[0]))
            del record[victim[2]]
            self._uncount(victim)
            held -= _weight(victim[2])

    def _compact(self) -> None:
        """Stale items (refreshed or evicted entries) outnumber live ones: rebuild both heaps."""
        heap: list[_Item] = []
        pheap: list[_Item] = []
        for record in self._by_address.values():
            for item in (record,) if isinstance(record, tuple) else record.values():
                (pheap if item in self._prot else heap).append(item)
        heapq.heapify(heap)
        heapq.heapify(pheap)
        self._heap, self._pheap = heap, pheap


def _item(record: _Record | None, chain: Chain) -> _Item | None:
    if record is None:
        return None
    if isinstance(record, tuple):
        return record if record[2] == chain else None
    return record.get(chain)
