"""Sections of scripts/bench. Each module exposes run(quick: bool) -> list[dict] with the keys of
bench_sections.run.ROW_KEYS; numbers are measured at run time, never typed in."""
