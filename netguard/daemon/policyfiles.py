"""Reading policy and catalog files (the I/O half of netguard.policy).

Strategy: the catalog and the embedded default policy ship inside the package as netguard.rules
(the repository's rules/ directory); a policy file given by the operator is read here and handed to
the pure parser, so a bad file raises PolicyError before anything is replaced.
"""

from __future__ import annotations

import hashlib
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
    return load_policy_digest(path)[0]


def load_policy_digest(path: str | Path | None) -> tuple[Policy, str]:
    """load_policy, and the SHA-256 of the text it was parsed from (read once, so the digest is of
    the policy in force even when the file changes meanwhile)."""
    if path is None:
        text = _rules_text("default.toml")
        policy = parse_policy(text, EMBEDDED, load_catalog(), "default policy")
    else:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        policy = parse_policy(text, str(p), load_catalog(), p.stem)
    return policy, hashlib.sha256(text.encode()).hexdigest()
