"""scripts/bench sections import and produce well-formed rows (their figures are not judged here:
speed goals live in the bench output, not in tests)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
run = importlib.import_module("bench_sections.run")


@pytest.mark.parametrize("name", run.SECTIONS)
def test_every_section_the_driver_runs_imports(name: str) -> None:
    assert callable(importlib.import_module(f"bench_sections.{name}").run)


def test_policy_section_rows_and_markdown() -> None:
    rows = importlib.import_module("bench_sections.policy").run(True)
    assert [r["scenario"] for r in rows] == [f"decide() with {n:,} policy entries" for n in (10, 1_000, 100_000)]
    for r in rows:
        assert set(run.ROW_KEYS) <= set(r) and isinstance(r["value"], float) and r["value"] > 0
    table = run.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "100,000 policy entries" in table


def test_engine_section_rows() -> None:
    rows = importlib.import_module("bench_sections.engine").run(True)
    assert len(rows) == 6 and all(r["scenario"].startswith("in process: ") for r in rows)
    for r in rows:
        assert set(run.ROW_KEYS) <= set(r) and r["section"] == "engine" and r["value"] > 0
        assert r["min"] <= r["value"] <= r["max"]


def test_engine_section_connections_take_the_daemons_allowed_path() -> None:
    """The section's connections (SYN, SYN-ACK, ClientHello with Linux's options) are allowed by an
    engine set up as the daemon's (the kernel makes the allow final); without the SYN-ACK the same
    ClientHello is data the server never took (dropped), which is why the section feeds it."""
    from netguard.daemon.policyfiles import load_policy
    from netguard.engine import Action
    from netguard.lab.lab import python_client_hello

    section = importlib.import_module("bench_sections.engine")
    policy = load_policy(None)
    syn, synack, hello = section.connections(2, python_client_hello("registry-1.docker.io"))[1]
    engine = section._engine(policy)
    assert section.expected_verdicts(engine, (syn, synack, hello)) == [Action.ACCEPT, Action.ACCEPT,
                                                                        Action.UNCONFIRMED]
    assert engine.stats.allowed == 1 and not engine.stats.dropped
    skipped = section._engine(policy)
    assert skipped.handle(syn, 1000.0, True).action is Action.ACCEPT
    assert skipped.handle(hello, 1000.0, True).action is Action.DROP
    assert skipped.stats.dropped == {"data before the server's SYN-ACK": 1}
