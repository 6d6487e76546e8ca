"""decide(host, port, policy) -> Decision: the one place where a name becomes a verdict."""

from __future__ import annotations

from dataclasses import dataclass

from netguard.policy.hosts import normalise_host
from netguard.policy.policy import Policy


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    host: str  # normalised
    port: int | None
    registry: str | None  # catalog id, when the host belongs to a catalog registry
    registry_name: str | None
    rule: str  # what decided: "allow = dockerhub", "ghcr is not in allow", "unknown_hosts = allow"
    reason: str  # one sentence for a person


def decide(host: str, port: int | None, policy: Policy) -> Decision:
    """Decide a connection to host (any spelling; raises HostError if it is not a host name)."""
    name = normalise_host(host)
    hit = policy.table.lookup(name, port)
    if hit is None:
        allowed = policy.unknown_hosts == "allow"
        rule = f"unknown_hosts = {policy.unknown_hosts}"
        what = f"{name} is not a known registry; {policy.label} has {rule}"
        return Decision(allowed, name, port, None, None, rule, what)
    pattern, r = hit
    if r.registry:
        who = f"{r.registry_name} ({r.registry})"
    else:
        who = "the organisation's policy server" if r.origin == "policy-url" else f"a registry host ({pattern})"
    verb = "allowed" if r.allowed else "blocked"
    text = r.text(pattern)
    # Under an organisation policy, an entry may come from the local file (policy.compose).
    where = f" (from {r.document})" if r.document and r.document != policy.source else ""
    return Decision(r.allowed, name, port, r.registry, r.registry_name, text,
                    f"{name} is {who}: {verb} by {policy.label}, rule {text!r}{where}")
