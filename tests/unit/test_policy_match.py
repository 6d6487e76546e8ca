"""Matching: exact vs wildcard boundaries, specificity, ports; and agreement with a naive reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netguard.policy import Pattern, parse_pattern
from netguard.policy.table import PatternTable


def table_of(*texts: str) -> PatternTable[str]:
    t: PatternTable[str] = PatternTable()
    for text in texts:
        t.put(parse_pattern(text)[0], text)
    return t


def match(t: PatternTable[str], host: str, port: int | None = None) -> str | None:
    hit = t.lookup(host, port)
    return None if hit is None else hit[1]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("x.azurecr.io", "*.azurecr.io"),
        ("a.b.azurecr.io", "*.azurecr.io"),  # one or more labels below the domain
        ("azurecr.io", None),  # the wildcard needs at least one label below
        ("azurecr.io.evil.com", None),
        ("evilazurecr.io", None),
        ("xazurecr.io", None),
        ("azurecr.iox", None),
    ],
)
def test_wildcard_boundaries(host: str, expected: str | None) -> None:
    assert match(table_of("*.azurecr.io"), host) == expected


def test_exact_beats_wildcard_and_deeper_beats_shallower() -> None:
    t = table_of("*.gcr.io", "k8s.gcr.io", "*.eu.gcr.io")
    assert match(t, "k8s.gcr.io") == "k8s.gcr.io"
    assert match(t, "x.k8s.gcr.io") == "*.gcr.io"
    assert match(t, "a.eu.gcr.io") == "*.eu.gcr.io"
    assert match(t, "eu.gcr.io") == "*.gcr.io"


def test_ports() -> None:
    t = table_of("registry.corp.example:5000", "*.corp.example")
    assert match(t, "registry.corp.example", 5000) == "registry.corp.example:5000"
    assert match(t, "registry.corp.example", 443) == "*.corp.example"
    assert match(t, "registry.corp.example", None) == "*.corp.example"
    only_port = table_of("registry.corp.example:5000")
    assert match(only_port, "registry.corp.example", 443) is None


def naive(entries: list[Pattern], host: str, port: int | None) -> Pattern | None:
    """The obvious reference: scan every entry, keep the most specific one that matches."""
    best: tuple[tuple[int, int, int], Pattern] | None = None
    for p in entries:
        if p.port is not None and p.port != port:
            continue
        if p.wildcard:
            if not host.endswith("." + p.name):
                continue
            rank = (0, p.name.count(".") + 1, p.port is not None)
        else:
            if host != p.name:
                continue
            rank = (1, 0, p.port is not None)
        key = (rank[0], rank[1], int(rank[2]))
        if best is None or key > best[0]:
            best = (key, p)
    return None if best is None else best[1]


labels = st.sampled_from(["a", "b", "c", "io", "com", "gcr", "xn--bcher-kva", "a-b"])
names = st.lists(labels, min_size=1, max_size=5).map(".".join)
ports = st.one_of(st.none(), st.sampled_from([443, 5000]))
patterns = st.builds(Pattern, names, st.booleans(), ports)


@given(st.lists(patterns, max_size=30), names, ports)
def test_lookup_agrees_with_naive_reference(entries: list[Pattern], host: str, port: int | None) -> None:
    t: PatternTable[Pattern] = PatternTable()
    for p in entries:
        t.put(p, p)
    hit = t.lookup(host, port)
    assert (None if hit is None else hit[1]) == naive(list(set(entries)), host, port)
