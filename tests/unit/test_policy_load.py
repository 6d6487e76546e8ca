"""Loading a policy builds its table while reading the lists: the same table and the same problems as
reading everything first, and a memory peak that stays near the table's own size (issue 7)."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netguard.daemon.policyfiles import load_catalog
from netguard.engine.names import NameTable
from netguard.policy import Pattern, PolicyError, decide, parse_policy
from netguard.policy.table import PatternTable

# Bytes per entry at the load's peak and per learned (address, name) pair, beyond the strings the
# caller already holds. Before issue 7: about 306 and 304; after: about 150 and 120.
MAX_LOAD_PEAK_PER_ENTRY = 230
MAX_BYTES_PER_PAIR = 200


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.toml", load_catalog())
    return [str(p) for p in e.value.problems]


def test_duplicates_name_the_spelling_before() -> None:
    assert problems('allow = ["a.example", "ghcr", "A.example.", "a.example"]') == [
        "p.toml:1:31: allow: 'A.example.' is listed twice (as 'a.example')",
        "p.toml:1:45: allow: 'a.example' is listed twice (as 'A.example.')",
    ]


def test_a_pattern_in_both_lists_is_reported_after_the_lists_with_its_last_block_spelling() -> None:
    text = 'allow = ["x.example", "bad..example"]\nblock = ["X.example", "x.example."]'
    assert problems(text) == [
        "p.toml:1:23: allow: empty label in 'bad..example' (two dots in a row, or a leading dot)",
        "p.toml:2:23: block: 'x.example.' is listed twice (as 'X.example')",
        "p.toml:2:23: x.example is in both allow and block",
    ]


def test_catalog_entries_follow_allowed_ids_wherever_they_are_listed() -> None:
    # "acr" comes after a pattern inside it; the block pattern inherits the registry from that pattern.
    p = parse_policy('allow = ["ghcr.io:5000", "team.azurecr.io", "acr"]\nblock = ["x.team.azurecr.io"]', "p.toml",
                     load_catalog())
    found = {(h, port): (d.allowed, d.registry, d.rule) for h, port in [
        ("ghcr.io", 443), ("ghcr.io", 5000), ("team.azurecr.io", 443), ("other.azurecr.io", 443),
        ("x.team.azurecr.io", 443)] for d in [decide(h, port, p)]}
    assert found == {
        ("ghcr.io", 443): (False, "ghcr", "ghcr is not in allow"),
        ("ghcr.io", 5000): (True, "ghcr", "allow = ghcr.io:5000"),
        ("team.azurecr.io", 443): (True, "acr", "allow = team.azurecr.io"),
        ("other.azurecr.io", 443): (True, "acr", "allow = acr"),
        ("x.team.azurecr.io", 443): (False, "acr", "block = x.team.azurecr.io"),
    }


ports = st.one_of(st.none(), st.sampled_from([443, 5000]))
labels = st.sampled_from(["a", "b", "example", "test"])
patterns = st.builds(Pattern, st.lists(labels, min_size=1, max_size=3).map(".".join), st.booleans(), ports)


@given(st.lists(st.tuples(patterns, st.integers()), max_size=30))
def test_table_keeps_what_was_put(entries: list[tuple[Pattern, int]]) -> None:
    t: PatternTable[int] = PatternTable()
    for p, v in entries:
        t.put(p, v)
    expected = dict(entries)
    assert dict(iter(t)) == expected and len(t) == len(expected)
    assert all(t.get(p) == v for p, v in expected.items())


def _policy_text(n: int) -> str:
    rng = random.Random(7)
    hosts = [f"reg{i}.team{rng.randrange(10**6)}.example" for i in range(n // 2)]
    wild = [f"*.zone{i}.corp{rng.randrange(10**6)}.example" for i in range(n - n // 2)]
    return 'allow = [' + ",".join(f'"{h}"' for h in hosts) + "]\nblock = [" + ",".join(f'"{w}"' for w in wild) + "]\n"


def test_load_peak_stays_near_the_table() -> None:
    n = 20_000
    text = _policy_text(n)
    catalog = load_catalog()
    tracemalloc.start()
    try:
        policy = parse_policy(text, "big.toml", catalog)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(policy.table) >= n
    assert peak / n < MAX_LOAD_PEAK_PER_ENTRY


def test_learned_pairs_stay_small() -> None:
    n = 20_000
    addresses = [i.to_bytes(4, "big") for i in range(n)]
    names = [f"n{i:08d}.flood.example" for i in range(n)]
    table = NameTable(n)
    tracemalloc.start()
    try:
        for i in range(n):
            table.learn([addresses[i]], names[i], 300, 1000.0 + i)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == n
    assert used / n < MAX_BYTES_PER_PAIR

