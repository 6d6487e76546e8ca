"""Reading policy and catalog files (the I/O half of netguard.policy).

Strategy: the catalog and the embedded default policy ship inside the package as netguard.rules
(the repository's rules/ directory); a policy file given by the operator is read here and handed to
the pure parser, so a bad file raises PolicyError before anything is replaced.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from netguard.policy import Catalog, Policy, parse_catalog, parse_policy

EMBEDDED = "embedded"


def _rules_text(name: str) -> str:
    return resources.files("netguard.rules").joinpath(name).read_text(encoding="utf-8")


@cache
def load_catalog() -> Catalog:
    """The catalog shipped with netguard (rules/registries.toml)."""
    return parse_catalog(_rules_text("registries.toml"), "rules/registries.toml")


def load_policy(path: str | Path | None) -> Policy:
    """The policy in `path`, or the embedded default policy when path is None."""
    if path is None:
        return parse_policy(_rules_text("default.toml"), EMBEDDED, load_catalog(), "default policy")
    p = Path(path)
    return parse_policy(p.read_text(encoding="utf-8"), str(p), load_catalog(), p.stem)
