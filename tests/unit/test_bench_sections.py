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
