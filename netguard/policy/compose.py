"""An organisation policy and a machine's local policy file as one Policy, and the policy server's host.

Strategy: the organisation's document decides everything it says: its settings (mode, unknown_hosts,
fail_mode, marks...) and its entries. A local file then lays its own entries over the organisation's
table at the same pattern, as a policy's entries lie over the catalog's: its `block` entries always
(a machine may be stricter), its `allow` entries and allowed registries only when the organisation
policy says `local_allow = true`. What the local file may not change is left out and named in the
warnings, never silently dropped. Every table entry keeps the document it came from (Rule.document),
so `policy show` / `explain` and the reasons in the log can say "(from /etc/netguard/local.toml)".
Precedence between entries stays the table's: the most specific pattern wins, so a local block of
`*.corp.example` does not override an organisation allow of `registry.corp.example`.

`pin_host` adds the host the organisation policy is fetched from as an exact allow entry, with and
without the URL's port (the portless one serves DNS answers, which have no port), laid last so it
outranks every other entry: netguard never blocks its own way to a newer policy.
"""

from __future__ import annotations

import dataclasses

from netguard.policy.hosts import Pattern
from netguard.policy.policy import Policy, Rule
from netguard.policy.table import PatternTable

# Keys of a local file that only the organisation policy sets once there is one.
_ORG_SETTINGS = ("unknown_hosts", "fail_mode", "block_action", "dns_block", "queue_num", "mark_mask",
                 "mark_allowed", "mark_blocked", "mode", "local_allow")


def combine(org: Policy, local: Policy) -> Policy:
    """The organisation policy with the local file's entries laid over it (see the module's Strategy).
    The result is named and labelled as the organisation policy; its warnings say what was left out."""
    table: PatternTable[Rule] = PatternTable()
    for pattern, rule in org.table:
        table.put(pattern, rule)
    allow_ids = set(org.allow_ids)
    left_out: list[str] = []
    for pattern, rule in local.table:
        if rule.origin == "catalog":
            continue  # the catalog's entries as the organisation policy set them
        if rule.allowed and not org.local_allow:
            left_out.append(f"allow = {pattern}")
            continue
        table.put(pattern, rule)
    for reg_id in sorted(local.allow_ids - org.allow_ids):
        reg = org.catalog.registries.get(reg_id)
        if not org.local_allow or reg is None:
            left_out.append(f"allow = {reg_id}")
            continue
        allowed = Rule(True, reg.id, reg.name, "catalog", local.source)
        for pattern in reg.patterns:
            current = table.get(pattern)
            if current is not None and current.origin == "catalog":
                table.put(pattern, allowed)
        allow_ids.add(reg_id)
    warnings = list(org.warnings) + list(local.warnings)
    if left_out:
        warnings.append(f"{local.source}: left out, {org.label} does not let a local file allow "
                        f"(local_allow = false): {', '.join(left_out)}")
    ignored = [k for k in _ORG_SETTINGS if k in local.keys]
    if ignored:
        warnings.append(f"{local.source}: ignored, {org.label} sets these: {', '.join(ignored)}")
    return dataclasses.replace(org, table=table, allow_ids=frozenset(allow_ids), warnings=tuple(warnings))


def pin_host(policy: Policy, host: str, port: int, document: str) -> Policy:
    """The policy with `host` (normalised) always allowed, outranking every entry; a warning when the
    policy would otherwise block it (a policy server on a registry host opens that host)."""
    table: PatternTable[Rule] = PatternTable()
    for pattern, rule in policy.table:
        table.put(pattern, rule)
    warnings = list(policy.warnings)
    before = policy.table.lookup(host, port)
    if (before is not None and not before[1].allowed) or (before is None and policy.unknown_hosts == "deny"):
        decided = before[1].text(before[0]) if before is not None else "unknown_hosts = deny"
        warnings.append(f"the policy server {host} would be blocked ({decided!r}); it stays allowed, on every "
                        "port, because netguard fetches the policy from it")
    registry = before[1] if before is not None else None
    pin = Rule(True, registry.registry if registry else None, registry.registry_name if registry else None,
               "policy-url", document)
    table.put(Pattern(host, False, None), pin)
    table.put(Pattern(host, False, port), pin)
    return dataclasses.replace(policy, table=table, warnings=tuple(warnings))
