"""Reassembly by sequence number, as properties: any order, any split, wrap-around, conflicts."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from netguard.engine.names import MAX_NAMES_PER_ADDRESS, MIN_TTL, NameTable, chain_of
from netguard.engine.stream import MAX_PIECES, Result, Stream


@st.composite
def split_data(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]], int]:
    data = draw(st.binary(min_size=1, max_size=600))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=40)))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    pieces = [(a, data[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    # Retransmissions: some pieces twice, and ranges that span several pieces.
    pieces += draw(st.lists(st.sampled_from(pieces), max_size=5))
    for a, b in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 200)), max_size=5)):
        pieces.append((a, data[a:a + b]))
    order = draw(st.permutations(pieces))
    base = draw(st.sampled_from([0, 1000, 0xFFFFFFFF - 100, 0xFFFFFFF0]))
    return data, list(order), base


@given(split_data())
def test_any_order_reassembles_the_same_bytes(case: tuple[bytes, list[tuple[int, bytes]], int]) -> None:
    data, pieces, base = case
    s = Stream(base, 4096)
    for offset, piece in pieces:
        assert s.add((base + offset) & 0xFFFFFFFF, piece) is Result.OK
    assert bytes(s.prefix) == data


@given(st.binary(min_size=2, max_size=100), st.data())
def test_an_overlap_with_other_bytes_is_a_conflict(data: bytes, draw: st.DataObject) -> None:
    s = Stream(5, 4096)
    assert s.add(5, data) is Result.OK
    i = draw.draw(st.integers(0, len(data) - 1))
    forged = data[:i] + bytes(((data[i] + 1) % 256,)) + data[i + 1:]
    assert s.add(5, forged) is Result.CONFLICT
    held = Stream(0, 4096)
    assert held.add(10, data) is Result.OK  # out of order, held as a piece
    assert held.add(10, forged) is Result.CONFLICT


def test_limits() -> None:
    s = Stream(0, 100)
    assert s.add(0, b"x" * 100) is Result.OK
    assert s.add(100, b"y") is Result.LIMIT
    pieces = Stream(0, 10 * MAX_PIECES)
    for i in range(MAX_PIECES):
        assert pieces.add(2 + 2 * i, b"z") is Result.OK
    assert pieces.add(2 + 2 * MAX_PIECES, b"z") is Result.LIMIT


def test_name_table_bounds() -> None:
    t = NameTable(max_entries=4)
    assert t.learn([b"\x01\x02\x03\x04"], chain_of(["a.test", "b.test"]), 0, now=0)
    assert sorted(t.names(b"\x01\x02\x03\x04", now=MIN_TTL - 1)) == ["a.test", "b.test"]
    assert t.names(b"\x01\x02\x03\x04", now=MIN_TTL + 1) == []  # TTL 0 is kept MIN_TTL seconds
    # Full: the entry expiring first gives way (unblocked names are evicted, not refused).
    assert t.learn([b"\x05\x06\x07\x08"], chain_of(["c.test", "d.test", "e.test"]), 60, now=1)
    assert t.names(b"\x01\x02\x03\x04", now=2) == [] and len(t) == 3
    many = NameTable()
    for i in range(MAX_NAMES_PER_ADDRESS + 5):
        many.learn([b"\x09\x09\x09\x09"], f"n{i}.test", 60, now=0)
    assert len(many.names(b"\x09\x09\x09\x09", now=1)) == MAX_NAMES_PER_ADDRESS


def _engine_inputs() -> st.SearchStrategy[bytes]:
    import contextlib
    import ssl

    from scapy.all import IP, TCP, UDP, raw  # type: ignore[attr-defined]

    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="ghcr.io")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    seeds = [raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=443, flags="PA", seq=1) / hello),
             raw(IP(src="10.0.0.53", dst="10.0.0.1") / UDP(sport=53, dport=1000) / bytes.fromhex(
                 "0007818000010001000000000467686372026"
                 "96f0000010001c00c000100010000012c00040a000067"))]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data[:draw(st.integers(0, len(data)))])

    return st.one_of(st.binary(max_size=200), mutated())


@given(st.lists(_engine_inputs(), min_size=1, max_size=6))
def test_the_engine_never_raises(packets: list[bytes]) -> None:
    from netguard.daemon.policyfiles import load_policy
    from netguard.engine import Action, Engine

    engine = Engine(load_policy(None))
    for p in packets:
        v = engine.handle(p, 1000.0)
        assert isinstance(v.action, Action)


def test_name_table_purge_keeps_refreshed_entries_and_the_count_right() -> None:
    t = NameTable(max_entries=100)
    a, b = b"\x01\x01\x01\x01", b"\x02\x02\x02\x02"
    t.learn([a], "x.test", 60, now=0)
    t.learn([a], "x.test", 600, now=30)  # refreshed: lives until 630
    t.learn([b], "y.test", 60, now=0)
    t.purge(100)
    assert t.names(a, 100) == ["x.test"] and t.names(b, 100) == [] and len(t) == 1
    t.purge(700)
    assert len(t) == 0 and t.names(a, 700) == []


def test_name_table_flood_is_linear() -> None:
    import time

    t = NameTable(max_entries=5000)
    start = time.perf_counter()
    for i in range(20000):  # four times the table: most answers meet a full table
        t.learn([i.to_bytes(4, "big")], f"n{i}.test", 60, now=i * 0.001)
    assert len(t) == 5000
    assert time.perf_counter() - start < 2.0  # a walk per evicted entry would take minutes
