"""What the engine hands back for one packet: an action for the kernel and, when a flow or a DNS
answer was decided, an event describing the decision.

Strategy: frozen values only. The shell maps Action to NetfilterQueue calls, always a repeat with a
mark so the packet goes on through the rest of the chain: ACCEPT -> mark "passed" (this packet
only); ALLOW -> mark allowed (the rules save it in the connection, the rest of the flow stays in
the kernel); FOLLOW -> mark "follow" (allowed so far, saved in the connection: the client's data
keeps coming to the queue, for a plain HTTP connection whose every request is judged); BLOCK ->
mark blocked (the kernel REJECT rule fires; with `payload`, a server packet replaced by a reset
toward the client); REWRITE -> the packet's bytes replaced by `payload`, mark "passed"; DROP ->
drop(); HOLD -> no verdict yet: the shell keeps the packet under `token` (it stays in the kernel's
queue) until a later verdict lists that token in `held` with ALLOW (let it go on, before the packet
at hand) or DROP, or Engine.expire gives it up.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any, NamedTuple


class Action(enum.Enum):
    ACCEPT = "accept"  # undecided so far: let this packet go, keep watching the flow
    ALLOW = "allow"
    FOLLOW = "follow"  # allowed so far; the client's next bytes must be read too
    UNCONFIRMED = "unconfirmed"  # allowed; the kernel makes it final at the server's first TLS record
    BLOCK = "block"
    DROP = "drop"
    REWRITE = "rewrite"
    HOLD = "hold"  # keep the packet in the queue; a later verdict settles it by its token


class FlowKey(NamedTuple):
    """A flow as the client sees it: addresses are raw 4 or 16 bytes. (A NamedTuple: it is hashed
    for every packet, and a tuple hashes in C.)"""

    proto: int  # 6 TCP, 17 UDP
    src: bytes
    sport: int
    dst: bytes
    dport: int

    def reply(self) -> FlowKey:
        """The same flow seen from the other end."""
        proto, src, sport, dst, dport = self
        return _new_tuple(FlowKey, (proto, dst, dport, src, sport))

    def text(self) -> dict[str, Any]:
        """The 5-tuple as JSON-ready values."""
        return {"proto": {6: "tcp", 17: "udp"}.get(self.proto, str(self.proto)),
                "src": _address_text(self.src), "sport": self.sport,
                "dst": _address_text(self.dst), "dport": self.dport}


def _address_text(address: bytes) -> str:
    # Every block is logged with its addresses; ipaddress takes several times longer for IPv4.
    if len(address) == 4:
        return "{}.{}.{}.{}".format(*address)
    return str(ipaddress.ip_address(address))


class Event(NamedTuple):
    """One decision: a flow allowed or blocked, or a DNS answer judged. (A NamedTuple, like Verdict:
    one is made for every decided flow, and a tuple is built in C, a frozen dataclass field by field.)

    `source` says where the name came from: "sni", "http-host", "http-connect", "socks4", "socks5",
    "tunnel-sni" (a ClientHello inside a CONNECT or SOCKS tunnel), "quic-sni", "dns-answer" (a DNS
    answer judged), "dns-table" (the destination address learned from DNS), "address" (no name at
    all) or "none" (a fail verdict: unreadable input or a limit). A name field that holds an address
    literal is judged by that address (the names DNS gave for it), with the field's source.
    """

    time: float
    key: FlowKey
    allowed: bool
    host: str | None
    source: str
    registry: str | None
    registry_name: str | None
    rule: str
    reason: str
    names: tuple[str, ...] = ()  # DNS answers: every name of the answer (question, CNAME chain)

    def record(self) -> dict[str, Any]:
        """The event as one JSON-ready record."""
        record = {"time": round(self.time, 6), "verdict": "allow" if self.allowed else "block",
                  "host": self.host, "registry": self.registry, "registry_name": self.registry_name,
                  "rule": self.rule, "reason": self.reason, "source": self.source, **self.key.text()}
        if self.names:
            record["names"] = list(self.names)
        return record


class Verdict(NamedTuple):
    """The action for one packet; `payload` for REWRITE (and for BLOCK of a server packet); `inject`
    packets to send to the client before the verdict (a TLS alert when block_action = "tls-alert");
    `event` when something was decided with this packet; `token` for HOLD; `held`: packets held
    earlier, settled now (token, ALLOW or DROP), to be given their verdicts before this packet's."""

    action: Action
    payload: bytes | None = None
    inject: tuple[bytes, ...] = ()
    event: Event | None = None
    token: int | None = None
    held: tuple[tuple[int, Action], ...] = ()


ACCEPT = Verdict(Action.ACCEPT)

# A NamedTuple's generated __new__ is a Python function (with keyword defaults); tuple.__new__ on the
# class builds the same value in C. For the values made on every new connection and DNS answer.
_new_tuple = tuple.__new__


def flow_key(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> FlowKey:
    """Same as FlowKey(proto, src, sport, dst, dport) (see _new_tuple)."""
    return _new_tuple(FlowKey, (proto, src, sport, dst, dport))


def decided(action: Action, event: Event | None) -> Verdict:
    """Same as Verdict(action, event=event) (see _new_tuple)."""
    return _new_tuple(Verdict, (action, None, (), event, None, ()))


def event_of(time: float, key: FlowKey, allowed: bool, host: str | None, source: str, registry: str | None,
             registry_name: str | None, rule: str, reason: str, names: tuple[str, ...] = ()) -> Event:
    """Same as Event(...) with these fields in order (see _new_tuple)."""
    return _new_tuple(Event, (time, key, allowed, host, source, registry, registry_name, rule, reason, names))
