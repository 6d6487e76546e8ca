"""Engine.handle(packet bytes, now) -> Verdict: the per-packet decision, with no I/O.

Strategy: two kinds of packets arrive (the firewall rules send nothing else):
- DNS answers (from port 53, UDP or TCP; UDP replies with a DNS response header from any other
  port). Every name of the answer (question, CNAME and SVCB/HTTPS targets, owners, and the
  additional records that belong to them) is judged; the addresses (A, AAAA, SVCB hints) are
  learned for all of them as one chain (NameTable; a chain with a blocked name is evidence that no
  flood of other names can evict). If one is blocked and dns_block is on, the answer is replaced by
  NXDOMAIN carrying an Extended DNS Error. DNS answers only ever get ACCEPT, REWRITE or DROP: a
  repeat would queue them again.
- Client packets of undecided flows (TCP, UDP 443). TCP payload is reassembled by sequence number
  (Stream) from the SYN on; the contiguous prefix is read as TLS (ClientHello -> SNI), HTTP (Host,
  CONNECT target) or neither. The name decides through the policy, unless it is allowed and DNS
  gave the destination address only in answers naming a blocked host and never for this name (an
  address conflict: a hosts-file remap, TLS without verification, domain fronting); without a
  name, the destination address decides through the names learned from DNS. UDP 443 is read as
  QUIC Initial packets.
  A decided flow is remembered (bounded) so packets already queued behind the deciding one get the
  same verdict, and so a policy reload can find open flows that became blocked.

Every limit (undecided flows, bytes per flow, out-of-order pieces, names, idle time) and every
unreadable input gets the policy's fail verdict: block when fail_mode = "closed", allow when
"open". Known evasion techniques are blocked in either mode: overlapping segments whose bytes
differ, and a data packet whose TTL differs from its SYN's (a decoy meant to expire before the
server). The single place where ParseError becomes a verdict is `handle`.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from netguard.engine import classify
from netguard.engine.names import MAX_CHAIN_NAMES, Chain, NameTable, chain_names, chain_of
from netguard.engine.packets import replace_tcp_payload, replace_udp_payload, tcp_packet
from netguard.engine.stream import Result, Stream
from netguard.engine.verdict import ACCEPT, Action, Event, FlowKey, Verdict
from netguard.policy import Decision, HostError, Policy, decide
from netguard.wire import dns, tls
from netguard.wire.errors import ParseError
from netguard.wire.ip import ACK, PROTO_TCP, PROTO_UDP, RST, SYN, Packet, TcpSegment, UdpDatagram, parse_packet

# Undecided flows tracked at once. A flow is undecided for one round trip (SYN to first data), so
# this is the number of connections opened within that time; past it, new flows get the fail verdict.
MAX_FLOWS = 4096
# Client bytes buffered per flow: the largest ClientHello (16 KiB, wire.tls.MAX_CLIENT_HELLO) in
# records of at most 16 KiB, each with its 5-byte header, and any HTTP request head fits.
# Worst case for the whole table: MAX_FLOWS x MAX_FLOW_BYTES, about 70 MB.
MAX_FLOW_BYTES = 16384 + 4 + 5 * 4 + 1024
# An undecided flow that has sent nothing for this long is forgotten (its SYN may have been lost).
FLOW_IDLE = 60.0
# Data-less client segments before a decision: the server speaks first (SSH, SMTP), so the name
# will never come from the client; judge by address. With xt u32 the kernel keeps data-less segments
# only while the server has sent nothing but its SYN-ACK (firewall.py), so the handshake's ACK never
# arrives here but the client's ACKs of a banner do; a replayed capture shows them all.
MAX_EMPTY_SEGMENTS = 3
# Decided flows remembered: for packets queued behind the deciding one, and to cut open flows on
# reload (about 300 bytes each). Evicting the oldest only loses the ability to cut that flow.
MAX_DECIDED = 32768
# QUIC datagrams read before judging by address (a ClientHello spans two or three Initials).
MAX_QUIC_DATAGRAMS = 6
# DNS-over-TCP answer bytes buffered per connection (a message is at most 65535 + 2 bytes).
MAX_DNS_TCP_BYTES = 65537
# DNS-over-TCP connections followed at once (resolvers keep few open; a stub opens one per query).
MAX_DNS_TCP_STREAMS = 1024
# (name, port) -> decision for the names used most recently: a VM talks to a few registries over and
# over, and deciding a name anew (normalising it, building the reason) is a good part of the work per
# new connection. Least recently used first out, so a flood of fresh names costs O(1) each. About
# 600 bytes an entry (the decision's strings), so at most about 0.6 MB.
MAX_CACHED_DECISIONS = 1024

EDE_PREFIX = "netguard"


@dataclass(slots=True)
class _Flow:
    key: FlowKey
    last: float
    stream: Stream | None = None
    syn_seen: bool = False
    empty: int = 0
    reader: classify.Reader | None = None
    ttl: int | None = None  # the SYN's TTL / hop limit: every later packet of the flow has the same
    quic: classify.QuicReader | None = None
    datagrams: int = 0


@dataclass(slots=True)
class _Remembered:
    allowed: bool
    host: str | None
    source: str
    port: int
    event: Event | None = None  # a decision made without a packet (idle limit): told with the next one


@dataclass
class _DnsStream:
    next_seq: int
    pending: bytes = b""
    blocked: bool = False
    last: float = 0.0


@dataclass
class Stats:
    """Counters for status and benchmarks."""

    packets: int = 0
    allowed: int = 0
    blocked: int = 0
    dns_rewritten: int = 0
    fail_verdicts: int = 0
    by_limit: dict[str, int] = field(default_factory=dict)


class Engine:
    """Per-flow state and verdicts for one policy (replaced atomically by `reload`)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.names = NameTable(still_protected=self._chain_blocked)
        self.stats = Stats()
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._decided: OrderedDict[FlowKey, _Remembered] = OrderedDict()
        self._dns_tcp: OrderedDict[FlowKey, _DnsStream] = OrderedDict()
        # Flows forgotten while idle before any client byte: where their bytes start.
        self._bases: OrderedDict[FlowKey, int] = OrderedDict()
        self.max_flows = MAX_FLOWS
        # Decisions of self._decisions_policy (a reload, or any new policy, starts afresh).
        self._decisions: OrderedDict[tuple[str, int | None], Decision | None] = OrderedDict()
        self._decisions_policy = policy

    # -- entry points -------------------------------------------------------------------------

    def handle(self, data: bytes, now: float, from_client: bool | None = None) -> Verdict:
        """Judge one queued packet (raw IP bytes, possibly cut short by the queue's copy range).

        `from_client`: True for a packet the firewall queued as a client flow's (OUTPUT), False
        for a DNS answer (INPUT), None when the hook cannot tell (FORWARD, offline replay); then a
        packet from port 53 is a DNS answer unless it belongs to a client flow begun by a SYN."""
        self.stats.packets += 1
        try:
            packet = parse_packet(_fit_lengths(data))
        except ParseError as exc:
            return self._fail_unkeyed(f"unreadable packet: {exc}")
        if packet.is_fragment or packet.l4 is None:
            return self._fail_unkeyed("IP fragment or no transport header")
        l4 = packet.l4
        key = FlowKey(packet.proto, packet.src, l4.sport, packet.dst, l4.dport)
        answer = from_client is not True and self._is_dns_answer(key, l4, from_client)
        try:
            if answer:
                return self._dns(packet, key, now)
            if isinstance(l4, TcpSegment):
                return self._tcp(packet, l4, key, now)
            return self._udp(l4, key, now)
        except ParseError as exc:
            # Unreadable input on a flow (the TLS or HTTP parsers, a DNS answer): the fail verdict.
            self._flows.pop(key, None)
            return self._fail(key, now, f"unreadable {'DNS answer' if answer else _what(l4)}: {exc}",
                              dns_answer=answer)

    def _is_dns_answer(self, key: FlowKey, l4: TcpSegment | UdpDatagram, from_client: bool | None) -> bool:
        """A DNS answer: from port 53 (not a client flow begun by a SYN), or a reply the DNS rules
        queued from another port for its DNS response header (firewall.py). At INPUT
        (from_client False) nothing else is queued. At FORWARD (None) client flows are queued too:
        the header tells them apart (a QUIC long header has zeros where a response has its QR bit
        and question count; a TCP client flow begins with a SYN), and UDP to port 443 stays QUIC's."""
        if l4.sport == 53:
            return not self._client_flow(key, l4)
        if from_client is False:
            return True
        if isinstance(l4, UdpDatagram):
            return l4.dport != 443 and dns.looks_like_response(l4.payload) and not self._client_flow(key, l4)
        return dns.looks_like_response(l4.payload, 2) and not self._client_flow(key, l4)

    def _client_flow(self, key: FlowKey, l4: TcpSegment | UdpDatagram) -> bool:
        if key in self._flows or key in self._decided:
            return True
        return isinstance(l4, TcpSegment) and bool(l4.flags & SYN) and not l4.flags & ACK

    def reload(self, policy: Policy, now: float) -> list[Event]:
        """Put a new policy in force; return the remembered open flows it now blocks (to be cut)."""
        self.policy = policy
        cut: list[Event] = []
        for key, r in list(self._decided.items()):
            if not r.allowed:
                continue
            d: Decision | None
            if r.host is not None and r.source not in ("dns-table", "address"):
                d, source = self._decide_host(r.host, r.port, r.source, key, now)
            else:
                d, source = self._decide_address(key, now)
            if d is not None and not d.allowed:
                r.allowed = False
                cut.append(_event(now, key, d, source))
        return cut

    def expire(self, now: float) -> None:
        """Forget idle undecided flows and DNS-over-TCP buffers, and expired names.

        An idle flow that already sent bytes gets the fail verdict: those bytes reached the server
        unjudged, and bytes read later from the middle of the stream could not be judged right (a
        ClientHello's second half alone names nothing). One that sent nothing is forgotten, but
        where its bytes start is kept, so its first bytes are still read as the start."""
        while self._flows:
            key, flow = next(iter(self._flows.items()))
            if now - flow.last < FLOW_IDLE:
                break
            del self._flows[key]
            if flow.datagrams or (flow.stream is not None and flow.stream.has_data()):
                verdict = self._fail(key, now, f"no name after {FLOW_IDLE:.0f} s idle", limit="idle")
                remembered = self._decided.get(key)
                if remembered is not None:
                    remembered.event = verdict.event
            elif flow.stream is not None:
                self._bases[key] = flow.stream.base
                while len(self._bases) > MAX_DECIDED:
                    self._bases.popitem(last=False)
        while self._dns_tcp:
            key, st = next(iter(self._dns_tcp.items()))
            if now - st.last < FLOW_IDLE:
                break
            del self._dns_tcp[key]
        self.names.purge(now)

    @property
    def undecided(self) -> int:
        """Flows currently being read."""
        return len(self._flows)

    # -- TCP client flows ---------------------------------------------------------------------

    def _tcp(self, packet: Packet, seg: TcpSegment, key: FlowKey, now: float) -> Verdict:
        known = self._decided.get(key)
        if known is not None and not seg.flags & SYN:
            self._decided.move_to_end(key)
            event, known.event = known.event, None
            return Verdict(Action.ALLOW if known.allowed else Action.BLOCK, event=event)
        flow = self._flows.get(key)
        if seg.flags & RST:
            # The state stays: a forged reset that the server ignores (out of window) must not make
            # netguard read the rest of a ClientHello as a new stream.
            return ACCEPT
        if seg.flags & SYN and not seg.flags & ACK:
            self._decided.pop(key, None)
            self._bases.pop(key, None)
            if flow is None or flow.stream is None or flow.stream.base != (seg.seq + 1) & 0xFFFFFFFF:
                if flow is None and len(self._flows) >= self.max_flows:
                    self.expire(now)
                    if len(self._flows) >= self.max_flows:
                        return self._fail(key, now, f"more than {self.max_flows} undecided flows",
                                          limit="flows")
                flow = _Flow(key, now, Stream((seg.seq + 1) & 0xFFFFFFFF, MAX_FLOW_BYTES), syn_seen=True,
                             ttl=packet.ttl)
                self._flows[key] = flow
            flow.last = now
            if not seg.payload:  # TCP Fast Open carries data in the SYN
                return ACCEPT
            return self._tcp_data(packet, seg, flow, now, seg.seq + 1)
        if flow is None:
            # No SYN seen (netguard started after the flow, or the flow was forgotten): read from here.
            if len(self._flows) >= self.max_flows:
                self.expire(now)
                if len(self._flows) >= self.max_flows:
                    return self._fail(key, now, f"more than {self.max_flows} undecided flows", limit="flows")
            base = self._bases.pop(key, None)
            flow = _Flow(key, now, Stream(seg.seq if base is None else base, MAX_FLOW_BYTES),
                         syn_seen=base is not None)
            self._flows[key] = flow
        flow.last = now
        self._flows.move_to_end(key)
        if not seg.payload:
            flow.empty += 1
            if flow.empty > MAX_EMPTY_SEGMENTS and flow.stream is not None and not flow.stream.prefix:
                return self._finish(flow, now, *self._decide_address(key, now))
            return ACCEPT
        return self._tcp_data(packet, seg, flow, now, seg.seq)

    def _tcp_data(self, packet: Packet, seg: TcpSegment, flow: _Flow, now: float, seq: int) -> Verdict:
        stream = flow.stream
        if stream is None:  # pragma: no cover - every TCP flow has a stream
            return ACCEPT
        if flow.ttl is not None and packet.ttl != flow.ttl:
            # A client's stack sends every packet of a connection with one TTL. A different one is
            # the decoy trick: a packet made to expire (or be dropped) before the server, carrying
            # bytes the filter should judge instead of the real ones.
            return self._fail(flow.key, now, f"TTL {packet.ttl} where the SYN had {flow.ttl}", evasion="ttl",
                              packet=packet, seg=seg)
        result = stream.add(seq, seg.payload)
        if result is Result.CONFLICT:
            return self._fail(flow.key, now, "overlapping TCP segments carry different bytes", evasion="overlap",
                              packet=packet, seg=seg)
        if result is Result.LIMIT:
            return self._fail(flow.key, now, f"no name in the first {MAX_FLOW_BYTES} bytes", limit="bytes",
                              packet=packet, seg=seg)
        if flow.reader is None:
            flow.reader = classify.Reader()
        found = flow.reader.feed(bytes(stream.prefix))
        if found is None:
            return ACCEPT
        d: Decision | None
        if found.name is None:
            d, source = self._decide_address(flow.key, now)
        else:
            d, source = self._decide_found(found, flow.key, now)
        return self._finish(flow, now, d, source, packet=packet, seg=seg)

    # -- UDP 443 (QUIC) -----------------------------------------------------------------------

    def _udp(self, dgram: UdpDatagram, key: FlowKey, now: float) -> Verdict:
        known = self._decided.get(key)
        if known is not None:
            event, known.event = known.event, None
            return Verdict(Action.ALLOW if known.allowed else Action.BLOCK, event=event)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= self.max_flows:
                self.expire(now)
                if len(self._flows) >= self.max_flows:
                    return self._fail(key, now, f"more than {self.max_flows} undecided flows", limit="flows")
            flow = _Flow(key, now, quic=classify.QuicReader())
            self._flows[key] = flow
        flow.last = now
        flow.datagrams += 1
        quic = flow.quic
        found = quic.feed(dgram.payload) if quic is not None else None
        if found is None and flow.datagrams < MAX_QUIC_DATAGRAMS:
            return ACCEPT
        if found is None or found.name is None:
            return self._finish(flow, now, *self._decide_address(key, now))
        return self._finish(flow, now, *self._decide_found(found, key, now))

    # -- decisions ----------------------------------------------------------------------------

    def _decide_name(self, name: str, port: int | None) -> Decision | None:
        cache = self._decisions
        if self._decisions_policy is not self.policy:
            cache.clear()
            self._decisions_policy = self.policy
        key = (name, port)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        d: Decision | None
        try:
            d = decide(name, port, self.policy)
        except HostError:
            d = None
        cache[key] = d
        if len(cache) > MAX_CACHED_DECISIONS:
            cache.popitem(last=False)  # the least recently used
        return d

    def _decide_found(self, found: classify.Found, key: FlowKey, now: float) -> tuple[Decision | None, str]:
        name = found.name or ""
        port = found.port if found.port is not None else key.dport
        if _is_address(name.strip("[]")):
            # A name field that holds an address: judge the address the client named.
            return self._decide_address(key, now, ipaddress.ip_address(name.strip("[]")).packed)
        return self._decide_host(name, port, found.source, key, now)

    def _decide_host(self, name: str, port: int | None, source: str, key: FlowKey,
                     now: float) -> tuple[Decision | None, str]:
        """A connection that names `name` (found in `source`) to key.dst: the name decides, unless it
        is allowed and DNS gave that address only in answers that name a blocked host and never for
        this name (an address conflict: a hosts-file remap or --resolve, TLS without verification,
        domain fronting, a CNAME alias of a blocked registry). Where an answer without a blocked
        name gave the address for this name too (a shared CDN), the name decides."""
        d = self._decide_name(name, port)
        if d is None or not d.allowed:
            return d, source
        chains = self.names.chains(key.dst, now)
        if not chains or d.host in chains:  # the usual case: never learned, or for this name alone
            return d, source
        evidence: Decision | None = None
        for chain in chains:
            names = chain_names(chain)
            blocked = self._blocked_in(names, key.dport)
            if blocked is None:
                if d.host in names:
                    return d, source
            elif evidence is None:
                evidence = blocked
        if evidence is None:
            return d, source
        text = str(ipaddress.ip_address(key.dst))
        return Decision(False, evidence.host, key.dport, evidence.registry, evidence.registry_name, evidence.rule,
                        f"address conflict: {d.host} ({source}) to {text}, which DNS gave for {evidence.host} "
                        f"and never for {d.host}; {evidence.reason}"), "dns-table"

    def _blocked_in(self, names: list[str], port: int | None) -> Decision | None:
        """The first of names (normalised) the policy blocks at port, or None."""
        for n in names:
            d = self._decide_name(n, port)
            if d is not None and not d.allowed:
                return d
        return None

    def _chain_blocked(self, chain: Chain) -> bool:
        # The name table asks before it evicts a chain learned as unblocked (a reload may have
        # blocked one of its names since).
        return self._blocked_in(chain_names(chain), None) is not None

    def _decide_address(self, key: FlowKey, now: float, address: bytes | None = None) -> tuple[Decision, str]:
        address = key.dst if address is None else address
        learned = self._decide_learned(address, key.dport, now)
        if learned is not None:
            return learned, "dns-table"
        text = str(ipaddress.ip_address(address))
        unknown = self.policy.unknown_hosts
        return Decision(unknown == "allow", text, key.dport, None, None, f"unknown_hosts = {unknown}",
                        f"{text} has no name netguard saw (no SNI, Host or DNS answer); "
                        f"{self.policy.label} has unknown_hosts = {unknown}"), "address"

    def _decide_learned(self, address: bytes, port: int, now: float) -> Decision | None:
        """The decision by the names DNS answers gave for address (a blocking one first); None if none."""
        decisions = [d for d in (self._decide_name(n, port) for n in self.names.names(address, now)) if d]
        if not decisions:
            return None
        return next((d for d in decisions if not d.allowed), decisions[0])

    def _finish(self, flow: _Flow, now: float, d: Decision | None, source: str, *,
                packet: Packet | None = None, seg: TcpSegment | None = None) -> Verdict:
        if d is None:
            return self._fail(flow.key, now, f"invalid name from {source}", packet=packet, seg=seg)
        self._flows.pop(flow.key, None)
        self._remember(flow.key, d.allowed, d.host, source, d.port)
        event = _event(now, flow.key, d, source)
        if d.allowed:
            self.stats.allowed += 1
            return Verdict(Action.ALLOW, event=event)
        self.stats.blocked += 1
        return Verdict(Action.BLOCK, inject=self._alert(packet, seg), event=event)

    def _remember(self, key: FlowKey, allowed: bool, host: str | None, source: str, port: int | None) -> None:
        self._decided[key] = _Remembered(allowed, host, source, port or key.dport)
        self._decided.move_to_end(key)
        while len(self._decided) > MAX_DECIDED:
            self._decided.popitem(last=False)

    def _alert(self, packet: Packet | None, seg: TcpSegment | None) -> tuple[bytes, ...]:
        if self.policy.block_action != "tls-alert" or packet is None or seg is None or not seg.flags & ACK:
            return ()
        # From the server to the client, at the sequence numbers the client expects next.
        alert = tcp_packet(packet.version, packet.dst, packet.src, seg.dport, seg.sport, seg.ack,
                           seg.seq + len(seg.payload), ACK | 0x08, tls.access_denied_alert(), window=seg.window)
        return (alert,)

    def _fail(self, key: FlowKey, now: float, why: str, *, limit: str | None = None, evasion: str | None = None,
              dns_answer: bool = False, packet: Packet | None = None, seg: TcpSegment | None = None) -> Verdict:
        """The fail verdict (fail_mode), or for a known evasion technique a block whatever the mode."""
        self.stats.fail_verdicts += 1
        if limit:
            self.stats.by_limit[limit] = self.stats.by_limit.get(limit, 0) + 1
        allowed = self.policy.fail_mode == "open" and not evasion
        rule = evasion or f"fail_mode = {self.policy.fail_mode}"
        client_key = key.reply() if dns_answer else key
        event = Event(now, client_key, allowed, None, "none", None, None, rule,
                      f"{why}; {self.policy.label} has {rule}" if not evasion else why)
        self._flows.pop(key, None)
        if dns_answer:
            return Verdict(Action.ACCEPT if allowed else Action.DROP, event=event)
        self._remember(key, allowed, None, "none", key.dport)
        if allowed:
            return Verdict(Action.ALLOW, event=event)
        self.stats.blocked += 1
        return Verdict(Action.BLOCK, inject=self._alert(packet, seg), event=event)

    def _fail_unkeyed(self, why: str) -> Verdict:
        # Without headers there is no flow to mark; DROP is safe on every hook (a repeat is not).
        self.stats.fail_verdicts += 1
        return Verdict(Action.ACCEPT if self.policy.fail_mode == "open" else Action.DROP)

    # -- DNS answers --------------------------------------------------------------------------

    def _dns(self, packet: Packet, key: FlowKey, now: float) -> Verdict:
        l4 = packet.l4
        if isinstance(l4, UdpDatagram):
            replaced, event = self._dns_message(l4.payload, key, now, same_length=False)
            if event is None:
                return ACCEPT
            if event.allowed:
                return Verdict(Action.ACCEPT, event=event)
            if replaced is None:
                return Verdict(Action.DROP, event=event)
            self.stats.dns_rewritten += 1
            return Verdict(Action.REWRITE, payload=replace_udp_payload(packet, replaced), event=event)
        if not isinstance(l4, TcpSegment):  # pragma: no cover - handle() only passes TCP or UDP
            return ACCEPT
        return self._dns_tcp_segment(packet, l4, key, now)

    def _dns_tcp_segment(self, packet: Packet, seg: TcpSegment, key: FlowKey, now: float) -> Verdict:
        if key.sport != 53:
            # From another port only segments that begin with a DNS response header are queued, so
            # each must hold whole messages: the rest of a split one would pass unread.
            messages, rest = dns.split_tcp_messages(seg.payload)
            if not messages or rest:
                return self._fail(key, now, f"a DNS answer over TCP from port {key.sport} split across segments",
                                  dns_answer=True)
            return self._dns_tcp_rewrite(packet, seg, messages, key, now, _DnsStream(seg.seq, last=now))
        if seg.flags & (SYN | RST) or not seg.payload:
            if seg.flags & SYN:
                self._dns_tcp[key] = _DnsStream((seg.seq + 1) & 0xFFFFFFFF, last=now)
                while len(self._dns_tcp) > MAX_DNS_TCP_STREAMS:
                    self._dns_tcp.popitem(last=False)
            return ACCEPT
        st = self._dns_tcp.get(key)
        if st is None:
            st = self._dns_tcp[key] = _DnsStream(seg.seq, last=now)
            while len(self._dns_tcp) > MAX_DNS_TCP_STREAMS:
                # The oldest connection's partial message is forgotten: its next segment is then
                # judged alone (whole messages) or repeats that connection's last verdict.
                self._dns_tcp.popitem(last=False)
        st.last = now
        if seg.seq != st.next_seq:
            # A retransmission (or a gap): judge it alone if it holds whole messages, else repeat
            # what this connection got before.
            messages, rest = dns.split_tcp_messages(seg.payload)
            if not messages or rest:
                return Verdict(Action.DROP) if st.blocked else ACCEPT
            return self._dns_tcp_rewrite(packet, seg, messages, key, now, st)
        buf = st.pending + seg.payload
        if len(buf) > MAX_DNS_TCP_BYTES:
            return self._fail(key, now, "DNS-over-TCP message too long", limit="bytes", dns_answer=True)
        st.next_seq = (seg.seq + len(seg.payload)) & 0xFFFFFFFF
        messages, rest = dns.split_tcp_messages(buf)
        whole = not st.pending and not rest
        st.pending = rest
        if not messages:
            return ACCEPT
        if whole:
            return self._dns_tcp_rewrite(packet, seg, messages, key, now, st)
        events = [self._dns_message(m, key, now, same_length=True)[1] for m in messages]
        blocked = next((e for e in events if e is not None and not e.allowed), None)
        if blocked is not None:
            st.blocked = True
            return Verdict(Action.DROP, event=blocked)
        return Verdict(Action.ACCEPT, event=next((e for e in events if e is not None), None))

    def _dns_tcp_rewrite(self, packet: Packet, seg: TcpSegment, messages: list[bytes], key: FlowKey,
                         now: float, st: _DnsStream) -> Verdict:
        out = b""
        first: Event | None = None
        blocked: Event | None = None
        for m in messages:
            replaced, event = self._dns_message(m, key, now, same_length=True)
            first = first or event
            if event is not None and not event.allowed:
                blocked = blocked or event
                if replaced is None:
                    st.blocked = True
                    return Verdict(Action.DROP, event=event)
            out += dns.frame_tcp(replaced if replaced is not None else m)
        if blocked is None:
            return Verdict(Action.ACCEPT, event=first)
        st.blocked = True
        self.stats.dns_rewritten += 1
        return Verdict(Action.REWRITE, payload=replace_tcp_payload(packet, out), event=blocked)

    def _dns_message(self, data: bytes, key: FlowKey, now: float, *,
                     same_length: bool) -> tuple[bytes | None, Event | None]:
        """Judge and learn one DNS message. Returns (replacement or None, event or None)."""
        msg = dns.parse_message(data)
        if not msg.is_response:
            return None, None
        # Every name once, lower case, in order: question, then answers (owners, CNAME and SVCB
        # targets: an SVCB/HTTPS record is followed like a CNAME, its "." target being the owner).
        seen: dict[str, None] = {}
        for q in msg.questions:
            seen[q.name.lower()] = None
        addresses: list[bytes] = []
        ttl: int | None = None
        for rr in msg.answers:
            seen[rr.name.lower()] = None
            value = rr.data
            if value is None:
                continue
            if isinstance(value, str):
                seen[value.lower()] = None
            elif isinstance(value, bytes):
                addresses.append(value)
                ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
            else:
                seen[value.target.lower()] = None
                if value.hints:
                    addresses += value.hints
                    ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
        if msg.additional:
            ttl = _follow_additional(msg.additional, seen, addresses, ttl)
        seen.pop("", None)
        names = list(seen)
        decisions: list[Decision] = []
        blocked: Decision | None = None
        for n in names:
            d = self._decide_name(n if n[:1] != "_" else _service_host(n), None)
            if d is not None:
                decisions.append(d)
                if blocked is None and not d.allowed:
                    blocked = d
        if not decisions:
            return None, None
        client_key = key.reply()
        judged = (decisions[0].host,) if len(decisions) == 1 else tuple(dict.fromkeys(d.host for d in decisions))
        learned = not addresses or self.names.learn(addresses, chain_of(judged), ttl or 0, now,
                                                    protected=blocked is not None)
        if not learned:
            self.stats.by_limit["names"] = self.stats.by_limit.get("names", 0) + 1
            self.stats.fail_verdicts += 1
            if self.policy.fail_mode == "closed":
                why = (f"a DNS answer with more than {MAX_CHAIN_NAMES} names" if len(judged) > MAX_CHAIN_NAMES
                       else "the table of names learned from DNS is full")
                reply = _blocked_reply(data, msg, (f"{EDE_PREFIX}: {why}", EDE_PREFIX, ""),
                                       len(data) if same_length else None)
                return reply, Event(now, client_key, False, names[0], "none", None, None,
                                    "fail_mode = closed", f"{why}; {self.policy.label} has fail_mode = closed")
        if blocked is None:
            return None, _event(now, client_key, decisions[0], "dns-answer", names=judged)
        if not self.policy.dns_block:
            return None, _event(now, client_key, blocked, "dns-answer", True, judged)
        event = _event(now, client_key, blocked, "dns-answer", names=judged)
        # Longest first: a DNS-over-TCP answer keeps its length, so the longest text that fits is used.
        texts = (f"{EDE_PREFIX}: {blocked.host} is blocked by {self.policy.label} ({blocked.rule})",
                 f"{EDE_PREFIX}: {blocked.host} is blocked by {self.policy.label}",
                 f"{EDE_PREFIX}: {blocked.host} is blocked", EDE_PREFIX, "")
        return _blocked_reply(data, msg, texts, len(data) if same_length else None), event


def _follow_additional(records: tuple[dns.ResourceRecord, ...], seen: dict[str, None], addresses: list[bytes],
                       ttl: int | None) -> int | None:
    """Take the additional section's A/AAAA/SVCB records whose owner is a name of the answer (a
    resolver adds an SVCB target's addresses there, RFC 9460 section 4.2), following SVCB targets
    from there; records of other owners are not the answer's. Returns the TTL so far."""
    by_owner: dict[str, list[dns.ResourceRecord]] = {}
    for rr in records:
        by_owner.setdefault(rr.name.lower(), []).append(rr)
    todo = [n for n in seen if n in by_owner]
    while todo:
        for rr in by_owner.pop(todo.pop(), ()):
            value = rr.data
            if isinstance(value, bytes):
                addresses.append(value)
            elif isinstance(value, dns.Svcb):
                target = value.target.lower()
                if target not in seen:
                    seen[target] = None
                    if target in by_owner:
                        todo.append(target)
                if not value.hints:
                    continue
                addresses += value.hints
            else:
                continue
            ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
    return ttl


def _service_host(name: str) -> str:
    """The host a name serves: "_8443._https.registry.example" (RFC 9460 port prefix; also
    "_dmarc." and the like) belongs to registry.example; other names are themselves."""
    if not name.startswith("_"):
        return name
    labels = name.split(".")
    i = 0
    while i < len(labels) and labels[i].startswith("_"):
        i += 1
    return ".".join(labels[i:])


def _event(now: float, key: FlowKey, d: Decision, source: str, allowed: bool | None = None,
           names: tuple[str, ...] = ()) -> Event:
    return Event(now, key, d.allowed if allowed is None else allowed, d.host, source, d.registry,
                 d.registry_name, d.rule, d.reason, names)


def _blocked_reply(message: bytes, parsed: dns.DnsMessage, texts: tuple[str, ...], length: int | None) -> bytes | None:
    """NXDOMAIN with an EDE text; with `length`, exactly that many bytes (a DNS-over-TCP answer
    cannot change size): the longest text that fits, padded with spaces (or, without EDNS, with
    trailing bytes, which DNS parsers skip). None if even the shortest reply is too long."""
    for text in texts:
        reply = dns.build_blocked_reply(message, rcode="NXDOMAIN", info_code=dns.EDE_BLOCKED, text=text,
                                        parsed=parsed)
        if length is None or len(reply) == length:
            return reply
        if len(reply) > length:
            continue
        padded = dns.build_blocked_reply(message, rcode="NXDOMAIN", info_code=dns.EDE_BLOCKED,
                                         text=text + " " * (length - len(reply)), parsed=parsed)
        if len(padded) > length:
            continue
        return padded + bytes(length - len(padded))
    return None


def _is_address(text: str) -> bool:
    # A host name's last label is never all digits and never holds ':'; skip the slow parse for names.
    if not text or (":" not in text and not text[-1].isdigit()):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _what(l4: TcpSegment | UdpDatagram) -> str:
    if l4.sport == 53:
        return "DNS answer"
    return "client bytes" if isinstance(l4, TcpSegment) else "QUIC datagram"


def _fit_lengths(data: bytes) -> bytes:
    """NFQUEUE copies at most ~4 KB of a packet: shrink the IP length field to the bytes at hand, so
    the headers parse and the payload is the part that was copied (the kernel keeps the packet)."""
    if len(data) < 40 and not (data and data[0] >> 4 == 4 and len(data) >= 20):
        return data
    version = data[0] >> 4
    if version == 4:
        total = int.from_bytes(data[2:4], "big")
        if total > len(data):
            return data[:2] + len(data).to_bytes(2, "big") + data[4:]
    elif version == 6:
        payload = int.from_bytes(data[4:6], "big")
        if payload and 40 + payload > len(data):
            return data[:4] + (len(data) - 40).to_bytes(2, "big") + data[6:]
    return data


__all__ = ["PROTO_TCP", "PROTO_UDP", "Engine", "Stats"]
