"""Packaged copy of the top-level rules/ directory (catalog and embedded default policy)."""
