"""NameTable against a plain reference (a dict of {chain: (expiry, protected)} per address, scans to
purge and evict): same answers from names(), chains() and len(), same learn() results, same
evictions, under random operation mixes that include a "reload" changing which names are blocked.
Then the attacks on blocked evidence, each alone: a flood of other names for the same address (a
wildcard zone), a flood of unrelated names filling the table, and the bounds of the protected part."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netguard.engine.names import (
    MAX_CHAIN_NAMES,
    MAX_NAMES_PER_ADDRESS,
    MAX_TTL,
    MIN_TTL,
    Chain,
    NameTable,
    chain_names,
    chain_of,
)


def weight(chain: Chain) -> int:
    return len(chain_names(chain))


class Reference:
    """The table's contract written the slow, obvious way."""

    def __init__(self, max_entries: int, max_protected: int, blocked: set[str] | None) -> None:
        self.by_address: dict[bytes, dict[Chain, tuple[float, bool]]] = {}
        self.max_entries = max_entries
        self.max_protected = max_protected
        self.blocked = blocked  # None: no judgment of its own, the flag learned with the chain decides

    def judge(self, chain: Chain, stored: bool) -> bool:
        return stored if self.blocked is None else any(n in self.blocked for n in chain_names(chain))

    def held(self, protected: bool) -> int:
        return sum(weight(c) for e in self.by_address.values() for c, (_, p) in e.items() if p == protected)

    def __len__(self) -> int:
        return self.held(True) + self.held(False)

    def chains(self, address: bytes, now: float) -> list[Chain]:
        entry = self.by_address.get(address, {})
        return [c for _, c in sorted(((exp, c) for c, (exp, _) in entry.items() if exp > now), reverse=True)]

    def names(self, address: bytes, now: float) -> list[str]:
        return list(dict.fromkeys(n for c in self.chains(address, now) for n in chain_names(c)))

    def learn(self, addresses: list[bytes], chain: Chain, ttl: int, now: float, protected: bool) -> bool:
        addresses = list(dict.fromkeys(addresses))
        if not addresses:
            return True
        if weight(chain) > MAX_CHAIN_NAMES:
            return False
        expiry = now + min(max(ttl, MIN_TTL), MAX_TTL)
        def new() -> int:
            return sum(weight(chain) for a in addresses
                       if chain not in self.by_address.get(a, {}) or self.by_address[a][chain][1] != protected)

        limit = self.max_protected if protected else self.max_entries
        if self.held(protected) + new() > limit:
            self.purge(now)
            over = self.held(protected) + new() - limit
            if over > 0 and (protected or not self.make_room(over, chain, addresses)):
                return False
        for a in addresses:
            entry = self.by_address.setdefault(a, {})
            old = entry.get(chain)
            if old is not None and old[1] == protected and expiry <= old[0]:
                continue
            entry[chain] = (max(expiry, old[0]) if old else expiry, protected)
            while sum(weight(c) for c in entry) > MAX_NAMES_PER_ADDRESS:
                # Unblocked first, then the one expiring first; min() keeps the earliest learned.
                victim = min(entry, key=lambda c: (self.judge(c, entry[c][1]), entry[c][0]))
                del entry[victim]
        return True

    def make_room(self, needed: int, chain: Chain, addresses: list[bytes]) -> bool:
        while needed > 0:
            # The pairs this answer refreshes are not evicted to make room for it.
            items = [(exp, a, c) for a, e in self.by_address.items() for c, (exp, p) in e.items()
                     if not p and not (c == chain and a in addresses)]
            if not items:
                return False
            exp, a, c = min(items)
            if self.judge(c, False):
                if self.held(True) + weight(c) > self.max_protected:
                    return False
                self.by_address[a][c] = (exp, True)
            else:
                del self.by_address[a][c]
                if not self.by_address[a]:
                    del self.by_address[a]
            needed -= weight(c)
        return True

    def purge(self, now: float) -> None:
        for a in list(self.by_address):
            entry = self.by_address[a]
            for c in [c for c, (exp, _) in entry.items() if exp <= now]:
                del entry[c]
            if not entry:
                del self.by_address[a]


ADDRESSES = [bytes([10, 0, 0, i]) for i in range(4)] + [bytes(15) + b"\x01"]
NAMES = [f"n{i}.test" for i in range(40)]  # more than MAX_NAMES_PER_ADDRESS, so eviction happens
CHAINS = [*NAMES, *(chain_of(NAMES[i:i + k]) for i in (0, 5, 30) for k in (2, 3, 9))]

# (kind, addresses, chain, ttl, clock step in quarter seconds, blocked names after a reload)
Op = tuple[str, list[bytes], str, int, int, frozenset[str]]
ops = st.tuples(st.sampled_from(["learn", "learn", "learn", "purge", "reload"]),
                st.lists(st.sampled_from(ADDRESSES), max_size=3), st.sampled_from(CHAINS),
                st.sampled_from([0, 60, 61, 300, 7200]), st.integers(0, 400),
                st.frozensets(st.sampled_from(NAMES[:12]), max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 80), st.integers(1, 40), st.booleans(), st.lists(ops, max_size=60))
def test_agrees_with_reference(max_entries: int, max_protected: int, judged: bool, steps: list[Op]) -> None:
    blocked: set[str] = {NAMES[0], NAMES[5]}

    def still_protected(chain: Chain) -> bool:
        return any(n in blocked for n in chain_names(chain))

    table = NameTable(max_entries, max_protected, still_protected if judged else None)
    ref = Reference(max_entries, max_protected, blocked if judged else None)
    now = 0.0
    for kind, addresses, chain, ttl, step, reload in steps:
        now += step / 4  # the caller's clock only moves forward
        if kind == "learn":
            protected = still_protected(chain)
            assert table.learn(addresses, chain, ttl, now, protected) == ref.learn(addresses, chain, ttl, now,
                                                                                   protected)
        elif kind == "purge":
            table.purge(now)
            ref.purge(now)
        else:
            blocked.clear()
            blocked.update(reload)
        assert len(table) == len(ref) and table.protected == ref.held(True)
        assert table.protected <= max_protected and len(table) - table.protected <= max_entries
        for a in ADDRESSES:
            for t in (now, now + 59.5, now + 400):
                assert table.chains(a, t) == ref.chains(a, t)
                assert table.names(a, t) == ref.names(a, t)
    table.purge(now + MAX_TTL + 1)
    assert len(table) == 0 and not table._by_address


A, B = b"\x0a\x4d\x00\x67", b"\x0a\x4d\x00\x68"
GHCR = "ghcr.io"


def blocked_by_name(chain: Chain) -> bool:
    return GHCR in chain_names(chain)


def test_a_wildcard_flood_at_one_address_never_pushes_out_the_blocked_evidence() -> None:
    t = NameTable(still_protected=blocked_by_name)
    assert t.learn([A], GHCR, 60, now=0, protected=True)
    # Any number of other names for the same address, each with a longer TTL than the evidence.
    for i in range(10 * MAX_NAMES_PER_ADDRESS):
        assert t.learn([A], f"x{i}.wild.example", 3600, now=1 + i * 0.01)
    names = t.names(A, 59)
    assert GHCR in names and len(names) == MAX_NAMES_PER_ADDRESS
    assert t.protected == 1
    # Its TTL still ends it: expiry is the only way out for blocked evidence.
    t.purge(60)
    assert GHCR not in t.names(A, 60) and t.protected == 0


def test_a_wildcard_flood_of_blocked_names_keeps_the_latest_evidence() -> None:
    # Blocked names of one wildcard zone give way to each other, never to unblocked ones, and the
    # address keeps evidence that lives at least as long as what went.
    t = NameTable(still_protected=lambda c: c.endswith(".jfrog.io"))
    t.learn([A], "mirror.example", 3600, now=0)
    for i in range(3 * MAX_NAMES_PER_ADDRESS):
        assert t.learn([A], f"r{i}.jfrog.io", 600, now=i, protected=True)
    names = t.names(A, 100)
    assert len(names) == MAX_NAMES_PER_ADDRESS and all(n.endswith(".jfrog.io") for n in names)
    assert names[-1] == f"r{2 * MAX_NAMES_PER_ADDRESS}.jfrog.io"  # the earliest expiring went first


def test_a_flood_of_unrelated_names_evicts_only_unblocked_entries() -> None:
    t = NameTable(max_entries=1000, still_protected=blocked_by_name)
    assert t.learn([A], GHCR, 60, now=0, protected=True)
    assert t.learn([B], "registry-1.docker.io", 60, now=0)
    for i in range(5000):  # five times the table, each name with the longest TTL
        assert t.learn([(0x0B000000 + i).to_bytes(4, "big")], f"n{i}.flood.example", 3600, now=1)
    assert t.names(A, 30) == [GHCR] and t.names(B, 30) == []  # the unblocked one gave way
    assert len(t) == 1001 and t.protected == 1
    assert t.names((0x0B000000 + 4999).to_bytes(4, "big"), 30) == ["n4999.flood.example"]


def test_a_reload_that_blocks_a_learned_name_protects_it_before_eviction() -> None:
    blocked: set[str] = set()
    t = NameTable(max_entries=10, still_protected=lambda c: any(n in blocked for n in chain_names(c)))
    t.learn([A], chain_of(["dl.example", "cdn.example"]), 60, now=0)
    blocked.add("cdn.example")  # a policy reload blocks it
    for i in range(50):
        t.learn([bytes([11, 0, 0, i])], f"n{i}.flood.example", 3600, now=1)
    assert t.chains(A, 30) == [chain_of(["dl.example", "cdn.example"])] and t.protected == 2
    assert len(t) - t.protected <= 10


def test_the_protected_part_is_bounded_and_refuses_rather_than_evicts() -> None:
    t = NameTable(max_protected=3, still_protected=blocked_by_name)
    assert t.learn([A], GHCR, 60, now=0, protected=True)
    assert t.learn([B], chain_of(["dl.example", GHCR]), 60, now=0, protected=True)
    assert not t.learn([b"\x01\x01\x01\x01"], GHCR, 3600, now=1, protected=True)  # full: refused
    assert t.names(A, 1) == [GHCR] and t.names(B, 1) == ["dl.example", GHCR]
    assert t.learn([A], GHCR, 3600, now=1, protected=True)  # a refresh needs no room
    assert t.learn([b"\x01\x01\x01\x01"], GHCR, 3600, now=61, protected=True)  # B expired: room again
    assert t.learn([b"\x02\x02\x02\x02"], "other.example", 60, now=61)  # the other part is separate


def test_an_answer_with_too_many_names_is_refused() -> None:
    t = NameTable()
    assert not t.learn([A], chain_of(f"n{i}.test" for i in range(MAX_CHAIN_NAMES + 1)), 60, now=0)
    assert len(t) == 0
    assert t.learn([A], chain_of(f"n{i}.test" for i in range(MAX_CHAIN_NAMES)), 60, now=0)
    assert len(t) == MAX_CHAIN_NAMES


def test_one_chain_per_address_is_one_tuple() -> None:
    # The flat layout is the memory budget: an address with one chain holds no container of its own.
    t = NameTable()
    t.learn([A], "a.test", 60, now=0)
    assert isinstance(t._by_address[A], tuple)
    t.learn([A], "b.test", 60, now=0)
    assert t.names(A, 1) == ["b.test", "a.test"]
    t.learn([A], "b.test", 120, now=10)  # b now outlives a
    t.purge(61)
    assert isinstance(t._by_address[A], tuple) and len(t) == 1
    assert t.names(A, 61) == ["b.test"]


def test_refresh_keeps_one_address_object() -> None:
    t = NameTable()
    first = bytes([9, 9, 9, 9])
    t.learn([first], "a.test", 60, now=0)
    t.learn([bytes([9, 9, 9, 9])], "a.test", 600, now=5)
    t.learn([bytes([9, 9, 9, 9])], "b.test", 600, now=5)
    record = t._by_address[first]
    assert isinstance(record, dict) and all(item[1] is first for item in record.values())
