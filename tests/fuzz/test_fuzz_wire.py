"""Fuzz every wire parser (bounded for CI): random bytes and mutated valid inputs may raise only
ParseError. `scripts/fuzz --per-parser N` runs the same targets for millions of inputs."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from targets import TARGETS, mutate, seeds

from netguard.wire.errors import ParseError

# Per target and kind; 16 tests x this many examples stays well under the suite's time budget.
EXAMPLES = 1000

fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_target(name: str, data: bytes) -> None:
    with contextlib.suppress(ParseError):
        TARGETS[name](data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_parse(name: str) -> None:
    for seed in seeds(name):
        TARGETS[name](seed)  # valid inputs parse without error


@pytest.mark.parametrize("name", sorted(TARGETS))
@fuzz_settings
@given(data=st.binary(max_size=1500))
def test_random_inputs(name: str, data: bytes) -> None:
    run_target(name, data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@fuzz_settings
@given(rng=st.randoms(use_true_random=False), pick=st.integers(0, 1000))
def test_mutated_inputs(name: str, rng: random.Random, pick: int) -> None:
    pool = seeds(name)
    run_target(name, mutate(pool[pick % len(pool)], rng, pool))


def test_mutator_changes_inputs() -> None:
    rng = random.Random(1)
    seed = seeds("tls")[0]
    assert sum(mutate(seed, rng, (seed,)) != seed for _ in range(100)) > 90
