"""Policy lookup cost at 10, 1k and 100k entries: it must not grow with the table.

Each table holds the shipped catalog plus random exact and wildcard entries; the same queries
(hits on exact entries, hits under wildcards, misses) run against every size, interleaved
(10, 1k, 100k, 10, 1k, 100k, ...) so drift on the machine affects all sizes alike.
"""

from __future__ import annotations

import random
import statistics
import time

from netguard.daemon.policyfiles import load_catalog
from netguard.policy import decide, parse_policy

SIZES = (10, 1_000, 100_000)
GOAL_RATIO = 1.2


def _policy(n: int, rng: random.Random):  # type: ignore[no-untyped-def]
    hosts = [f"reg{i}.team{rng.randrange(10**6)}.example" for i in range(n // 2)]
    wild = [f"*.zone{i}.corp{rng.randrange(10**6)}.example" for i in range(n - n // 2)]
    text = "allow = [" + ",".join(f'"{h}"' for h in hosts) + "]\nblock = [" + ",".join(f'"{w}"' for w in wild) + "]\n"
    return parse_policy(text, f"bench-{n}", load_catalog()), hosts, wild


def run(quick: bool) -> list[dict[str, object]]:
    rng = random.Random(7)
    built = {n: _policy(n, rng) for n in SIZES}
    queries = ["ghcr.io", "registry-1.docker.io", "x.azurecr.io", "evil.example", "a.b.c.unknown.example",
               "123456789012.dkr.ecr.eu-central-1.amazonaws.com"]
    for n, (_, hosts, wild) in built.items():  # a hit on this table's own entries, same shape at every size
        built[n] = (built[n][0], [*queries, hosts[0], "x." + wild[0][2:]], wild)
    loops, repeats = (2_000, 7) if quick else (20_000, 15)
    samples: dict[int, list[float]] = {n: [] for n in SIZES}
    for _ in range(repeats):
        for n in SIZES:
            policy, qs, _ = built[n]
            start = time.perf_counter_ns()
            for _ in range(loops):
                for q in qs:
                    decide(q, 443, policy)
            samples[n].append((time.perf_counter_ns() - start) / (loops * len(qs)) / 1000)
    rows: list[dict[str, object]] = []
    base = statistics.median(samples[SIZES[0]])
    for n in SIZES:
        med = statistics.median(samples[n])
        ratio = med / base
        rows.append({"section": "policy", "scenario": f"decide() with {n:,} policy entries", "metric": "µs/lookup",
                     "value": round(med, 3), "unit": "µs", "min": round(min(samples[n]), 3),
                     "max": round(max(samples[n]), 3),
                     "goal": None if n == SIZES[0] else f"≤ {GOAL_RATIO}× the {SIZES[0]}-entry figure",
                     "ok": None if n == SIZES[0] else ratio <= GOAL_RATIO,
                     "note": f"{ratio:.2f}× the {SIZES[0]}-entry figure; median of {repeats}, "
                             f"{loops * len(built[n][1]):,} decisions each"})
    return rows
