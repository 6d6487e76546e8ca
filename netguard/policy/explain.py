"""explain(host, port, policy): how a decision is reached, step by step, for `netguard policy explain`.

Strategy: replay what decide() does in the open. The host is normalised; every table entry that
matches it is listed in the order PatternTable.lookup probes them (most specific first), so a person
sees which entry decides and which broader ones it shadows; then the decision itself, from decide().
A host that the catalog leaves out on purpose (a registry's shared blob CDN) says so, with the
catalog's reason, because "why is this registry host not blocked?" is the usual question.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from netguard.policy.decide import Decision, decide
from netguard.policy.hosts import Pattern, normalise_host
from netguard.policy.policy import Policy, Rule


@dataclass(frozen=True, slots=True)
class Match:
    pattern: Pattern
    rule: Rule
    text: str  # the rule as written: "allow = ghcr", "block = *.corp.example"


@dataclass(frozen=True, slots=True)
class LeftOut:
    registry: str
    registry_name: str
    written: str  # the catalog's left_out key
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    written: str  # the host as given
    host: str  # normalised
    port: int | None
    matches: tuple[Match, ...]  # most specific first; the first one decides
    left_out: tuple[LeftOut, ...]
    decision: Decision


def explain(host: str, port: int | None, policy: Policy) -> Explanation:
    """Explain the decision for a connection to host (raises HostError if it is not a host name)."""
    name = normalise_host(host)
    matches = []
    for pattern in candidates(name, port):
        rule = policy.table.get(pattern)
        if rule is not None:
            matches.append(Match(pattern, rule, rule.text(pattern)))
    left_out = tuple(
        LeftOut(reg.id, reg.name, written, reason)
        for reg in policy.catalog.registries.values()
        for written, reason in reg.left_out.items()
        if _left_out_matches(written, name)
    )
    return Explanation(host, name, port, tuple(matches), left_out, decide(name, port, policy))


def candidates(host: str, port: int | None) -> Iterator[Pattern]:
    """The patterns that can match a normalised host, in PatternTable.lookup's order of precedence."""
    if port is not None:
        yield Pattern(host, False, port)
    yield Pattern(host, False, None)
    labels = host.split(".")
    for i in range(1, len(labels)):
        suffix = ".".join(labels[i:])
        if port is not None:
            yield Pattern(suffix, True, port)
        yield Pattern(suffix, True, None)


def _left_out_matches(written: str, host: str) -> bool:
    return _left_out_regex(written).fullmatch(host) is not None


def _left_out_regex(written: str) -> re.Pattern[str]:
    # left_out keys are notes for people: a leading "*." stands for one or more labels (as in
    # policy patterns), another "*" or an upper-case placeholder (REGION) for one label's letters.
    lead, body = ("(?:[a-z0-9-]+\\.)+", written[2:]) if written.startswith("*.") else ("", written)
    parts = re.split(r"(\*|[A-Z]+)", body)
    return re.compile(lead + "".join("[a-z0-9-]+" if i % 2 else re.escape(part) for i, part in enumerate(parts)))
