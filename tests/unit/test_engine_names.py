"""NameTable against a plain reference (a dict of {name: expiry} per address, a scan to purge): same
answers from names() and len(), same learn() results, same evictions, under random operation mixes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netguard.engine.names import MAX_NAMES_PER_ADDRESS, MAX_TTL, MIN_TTL, NameTable


class Reference:
    """The table's contract written the slow, obvious way."""

    def __init__(self, max_entries: int) -> None:
        self.by_address: dict[bytes, dict[str, float]] = {}
        self.max_entries = max_entries

    def __len__(self) -> int:
        return sum(len(e) for e in self.by_address.values())

    def names(self, address: bytes, now: float) -> list[str]:
        entry = self.by_address.get(address, {})
        return [n for _, n in sorted(((exp, n) for n, exp in entry.items() if exp > now), reverse=True)]

    def learn(self, addresses: list[bytes], names: list[str], ttl: int, now: float) -> bool:
        addresses, names = list(dict.fromkeys(addresses)), list(dict.fromkeys(names))
        expiry = now + min(max(ttl, MIN_TTL), MAX_TTL)
        new = sum(1 for a in addresses for n in names if n not in self.by_address.get(a, {}))
        if len(self) + new > self.max_entries:
            self.purge(now)
            if len(self) + new > self.max_entries:
                return False
        for a in addresses:
            if not names:
                continue
            entry = self.by_address.setdefault(a, {})
            for n in names:
                if n not in entry or expiry > entry[n]:
                    entry[n] = expiry
            while len(entry) > MAX_NAMES_PER_ADDRESS:
                del entry[min(entry, key=entry.__getitem__)]
        return True

    def purge(self, now: float) -> None:
        for a in list(self.by_address):
            entry = self.by_address[a]
            for n in [n for n, exp in entry.items() if exp <= now]:
                del entry[n]
            if not entry:
                del self.by_address[a]


ADDRESSES = [bytes([10, 0, 0, i]) for i in range(4)] + [bytes(15) + b"\x01"]
NAMES = [f"n{i}.test" for i in range(40)]  # more than MAX_NAMES_PER_ADDRESS, so eviction happens

# (learn?, addresses, names, ttl, clock step in quarter seconds); a purge uses only the step.
Op = tuple[bool, list[bytes], list[str], int, int]
ops = st.tuples(st.booleans(), st.lists(st.sampled_from(ADDRESSES), max_size=3),
                st.lists(st.sampled_from(NAMES), max_size=12), st.sampled_from([0, 60, 61, 300, 7200]),
                st.integers(0, 400))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 80), st.lists(ops, max_size=60))
def test_agrees_with_reference(max_entries: int, steps: list[Op]) -> None:
    table, ref = NameTable(max_entries), Reference(max_entries)
    now = 0.0
    for learn, addresses, names, ttl, step in steps:
        now += step / 4  # the caller's clock only moves forward
        if learn:
            assert table.learn(addresses, names, ttl, now) == ref.learn(addresses, names, ttl, now)
        else:
            table.purge(now)
            ref.purge(now)
        assert len(table) == len(ref)
        for a in ADDRESSES:
            for t in (now, now + 59.5, now + 400):
                assert table.names(a, t) == ref.names(a, t)
    table.purge(now + MAX_TTL + 1)
    assert len(table) == 0 and not table._by_address


def test_one_name_per_address_is_one_tuple() -> None:
    # The flat layout is the memory budget: an address with one name holds no container of its own.
    t = NameTable()
    t.learn([b"\x01\x02\x03\x04"], ["a.test"], 60, now=0)
    assert isinstance(t._by_address[b"\x01\x02\x03\x04"], tuple)
    t.learn([b"\x01\x02\x03\x04"], ["b.test"], 60, now=0)
    assert t.names(b"\x01\x02\x03\x04", 1) == ["b.test", "a.test"]
    t.learn([b"\x01\x02\x03\x04"], ["b.test"], 120, now=10)  # b now outlives a
    t.purge(61)
    assert isinstance(t._by_address[b"\x01\x02\x03\x04"], tuple) and len(t) == 1
    assert t.names(b"\x01\x02\x03\x04", 61) == ["b.test"]


def test_refresh_keeps_one_address_object() -> None:
    t = NameTable()
    first = bytes([9, 9, 9, 9])
    t.learn([first], ["a.test"], 60, now=0)
    t.learn([bytes([9, 9, 9, 9])], ["a.test", "b.test"], 600, now=5)
    record = t._by_address[first]
    assert isinstance(record, dict) and all(item[1] is first for item in record.values())


def test_eviction_takes_the_earliest_learned_of_those_expiring_first() -> None:
    a = b"\x07\x07\x07\x07"
    t, ref = NameTable(), Reference(10_000)
    for table in (t, ref):
        table.learn([a], NAMES[:20], 60, now=0)
        table.learn([a], NAMES[20:], 60, now=1)
    gone = len(NAMES) - MAX_NAMES_PER_ADDRESS
    assert sorted(t.names(a, 2)) == sorted(ref.names(a, 2)) == sorted(NAMES[gone:])
    assert t.names(a, 2) == ref.names(a, 2) and len(t) == MAX_NAMES_PER_ADDRESS


def test_a_full_table_still_takes_refreshes() -> None:
    a, b = b"\x01\x01\x01\x01", b"\x02\x02\x02\x02"
    t = NameTable(max_entries=3)
    assert t.learn([a], ["x.test", "y.test"], 60, now=0) and t.learn([b], ["z.test"], 60, now=0)
    assert t.learn([b], ["z.test"], 600, now=1) and t.learn([a], ["y.test", "x.test"], 600, now=1)
    assert not t.learn([b], ["z.test", "w.test"], 600, now=2)
    assert t.names(b, 100) == ["z.test"] and t.names(a, 100) == ["y.test", "x.test"] and len(t) == 3
