"""Monitor mode (`mode = "monitor"`): everything judged and logged as under enforcement, nothing blocked.

Strategy: one point, where the daemon applies the engine's verdicts. The engine decides exactly as
it would under enforcement (so the log, the counters and `netguard status` show what enforcement
would do, for a roll-out); `let_pass` then turns each verdict that would stop something into
one that lets it pass: a blocked flow gets the *allowed* mark (so the kernel's REJECT rule never
fires and the rest of the flow stays in the kernel), a rewritten or dropped DNS answer (or an
unreadable packet) goes on unchanged, and no TLS alert is sent. The blocking events are logged with
`"verdict": "would-block"`. FOLLOW (a plain HTTP connection read request by request, a TLS flow
re-read after a HelloRetryRequest) already lets its packet pass and goes on unchanged, so its later
requests are judged and logged as under enforcement; the first request enforcement would block
turns the flow allowed (enforcement would have cut it there, so the log shows one would-block per
connection, as for any other flow), and the flow is remembered to be cut like the others.

Flows let through are remembered (bounded), so that switching the same machine to enforcement
cuts the open ones the new policy blocks, as a reload cuts newly blocked flows: `to_cut` judges
them again under the new policy.
"""

from __future__ import annotations

from collections import OrderedDict

from netguard.engine import Action, Event, FlowKey, Verdict
from netguard.policy import HostError, Policy, decide

# Flows let through in monitor mode, kept to be cut when enforcement starts. Each is one Event
# (about 300 bytes); the oldest are forgotten first, and are the likeliest to have closed anyway.
MAX_LET_THROUGH = 4096
# Where a name came from; any other source (address, none) was decided by a setting or an evasion.
_NAMED = frozenset({"sni", "quic-sni", "http-host", "http-connect", "socks4", "socks5", "tunnel-sni",
                    "dns-table"})
_EVASIONS = frozenset({"ttl", "overlap"})


class Monitor:
    """Counts and remembers what monitor mode let through."""

    def __init__(self) -> None:
        self.would_block = 0  # flows and DNS answers enforcement would have blocked
        self.let_through: OrderedDict[FlowKey, Event] = OrderedDict()

    def let_pass(self, verdict: Verdict) -> Verdict:
        """The verdict that lets this packet (and its flow) pass, whatever the engine decided."""
        event = verdict.event
        if event is not None and not event.allowed:
            self.would_block += 1
        action = verdict.action
        # Datagrams held for a QUIC connection go on as the connection does: allowed.
        held = tuple((token, Action.ALLOW if a is Action.DROP else a) for token, a in verdict.held)
        if action is Action.BLOCK:
            if event is not None and event.source != "dns-answer":
                self.remember(event)
            return Verdict(Action.ALLOW, event=event, held=held)
        if action is Action.DROP or (action is Action.REWRITE and event is not None):
            return Verdict(Action.ACCEPT, event=event, held=held)
        # A REWRITE without an event blocks nothing (a SYN without its Multipath TCP option): as it is.
        # ACCEPT, ALLOW, FOLLOW, UNCONFIRMED and HOLD stop nothing: as they are.
        return verdict._replace(held=held) if held != verdict.held else verdict

    def remember(self, event: Event) -> None:
        """Keep a flow that was let through (to cut it once enforcement starts)."""
        self.let_through[event.key] = event
        self.let_through.move_to_end(event.key)
        while len(self.let_through) > MAX_LET_THROUGH:
            self.let_through.popitem(last=False)

    def to_cut(self, policy: Policy) -> list[Event]:
        """The flows let through that `policy` blocks (to cut when it is enforced); forgets them all."""
        cut = [e for e in self.let_through.values() if blocks(e, policy)]
        self.let_through.clear()
        return cut


def blocks(event: Event, policy: Policy) -> bool:
    """Would `policy` block the flow of this (blocking) event? Judged by its name where it had one,
    else by the setting or evasion that decided it."""
    if event.source in _NAMED and event.host:
        try:
            return not decide(event.host, event.key.dport, policy).allowed
        except HostError:
            pass  # an address literal in a name field (a SOCKS target): judged by unknown_hosts below
    if event.rule in _EVASIONS:
        return True
    if event.rule.startswith("unknown_hosts"):
        return policy.unknown_hosts == "deny"
    if event.rule.startswith("fail_mode"):
        return policy.fail_mode == "closed"
    return False
