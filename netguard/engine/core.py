"""Engine.handle(packet bytes, now) -> Verdict: the per-packet decision, with no I/O.

Strategy: two kinds of packets arrive (the firewall rules send nothing else):
- DNS answers (from port 53, UDP or TCP). Every name of the answer (question, CNAME chain, owners)
  is judged; the addresses are learned for all of them (NameTable). If one is blocked and
  dns_block is on, the answer is replaced by NXDOMAIN carrying an Extended DNS Error. DNS answers
  only ever get ACCEPT, REWRITE or DROP: a repeat would queue them again.
- Client packets of undecided flows (TCP, UDP 443). TCP payload is reassembled by sequence number
  (Stream) from the SYN on; the contiguous prefix is read as TLS (ClientHello -> SNI), HTTP (Host,
  CONNECT target) or neither. The name decides through the policy; without a name, the destination
  address decides through the names learned from DNS. UDP 443 is read as QUIC Initial packets.
  A decided flow is remembered (bounded) so packets already queued behind the deciding one get the
  same verdict, and so a policy reload can find open flows that became blocked.
- Client packets of followed flows (`followed`: the kernel queued them for a flow marked "follow").
  A plain HTTP connection is read request by request for its whole life (bodies skipped by their
  framing), so that every request is judged: its flow gets FOLLOW, not ALLOW, and its state moves
  to a bounded table of followed flows. A CONNECT or SOCKS request keeps its flow undecided until
  the tunnel's first bytes are read too (a ClientHello, requests or a nested proxy request).
  An allowed TLS flow is followed again when the kernel saw a HelloRetryRequest come back (its
  rule marks the flow "follow"): the records after the first ClientHello are read and the second
  ClientHello is judged; bytes between the two that went by unread are the fail verdict.

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
from netguard.engine.classify import DONE
from netguard.engine.names import NameTable
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
# Names judged on one flow that are kept, for a reload to judge them again: a CONNECT or SOCKS target and
# the names inside its tunnel; of a kept-alive HTTP connection the last few hosts (its next request
# is judged under the new policy anyway).
MAX_JUDGED = 8
# Followed flows (plain HTTP connections read request by request, TLS flows after a HelloRetryRequest):
# at most this many at once, about 1 KB each plus a partial request head. Past it the least recently
# used is forgotten; its next packet is read as the start of a request, or gets the fail verdict.
MAX_FOLLOWED = 4096
# A followed flow that sends nothing for this long is forgotten (servers and proxies close idle
# kept-alive connections well before: nginx 75 s, Squid 2 min, tinyproxy 10 min of any idle time).
FOLLOW_IDLE = 600.0
# The window in which a followed flow is reassembled: a request head (wire.http.MAX_HEAD) and the
# segments a client has in flight behind a missing one (a local client's reach the queue in order).
MAX_FOLLOW_WINDOW = 65536
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
    names: tuple[tuple[str, str, int], ...] = ()  # allowed so far: host, source, port (the last MAX_JUDGED)


@dataclass(slots=True)
class _Following:
    """A flow read past its first decision: a kept-alive HTTP connection, or a TLS flow after a
    HelloRetryRequest. `stream` starts where `reader` stands (both advance as it reads)."""

    key: FlowKey
    stream: Stream
    reader: classify.Reader
    ttl: int | None
    last: float
    names: tuple[tuple[str, str, int], ...]
    fresh: bool = False  # nothing read yet: the first bytes must start at the stream's base


@dataclass(slots=True)
class _Remembered:
    allowed: bool
    host: str | None
    source: str
    port: int
    event: Event | None = None  # a decision made without a packet (idle limit): told with the next one
    more: tuple[tuple[str, str, int], ...] = ()  # names judged before `host` (a CONNECT target)
    tls_next: int | None = None  # after an allowed ClientHello: where its next record begins (seq)
    tls_leftover: bytes = b""  # the handshake bytes after the hello in its last record
    ttl: int | None = None
    follows: bool = False  # the kernel marks this flow "follow": its state must be in _following


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
        self.names = NameTable()
        self.stats = Stats()
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._decided: OrderedDict[FlowKey, _Remembered] = OrderedDict()
        self._dns_tcp: OrderedDict[FlowKey, _DnsStream] = OrderedDict()
        self._following: OrderedDict[FlowKey, _Following] = OrderedDict()
        # Flows forgotten while idle before any client byte: where their bytes start.
        self._bases: OrderedDict[FlowKey, int] = OrderedDict()
        self.max_flows = MAX_FLOWS
        # Decisions of self._decisions_policy (a reload, or any new policy, starts afresh).
        self._decisions: OrderedDict[tuple[str, int | None], Decision | None] = OrderedDict()
        self._decisions_policy = policy

    # -- entry points -------------------------------------------------------------------------

    def handle(self, data: bytes, now: float, from_client: bool | None = None, followed: bool = False) -> Verdict:
        """Judge one queued packet (raw IP bytes, possibly cut short by the queue's copy range).

        `from_client`: True for a packet the firewall queued as a client flow's (OUTPUT), False
        for a DNS answer (INPUT), None when the hook cannot tell (FORWARD, offline replay); then a
        packet from port 53 is a DNS answer unless it belongs to a client flow begun by a SYN.
        `followed`: the kernel queued it because its flow is marked "follow" (an allowed plain HTTP
        connection, or a TLS flow whose server sent a HelloRetryRequest)."""
        self.stats.packets += 1
        fitted = _fit_lengths(data)
        try:
            packet = parse_packet(fitted)
        except ParseError as exc:
            return self._fail_unkeyed(f"unreadable packet: {exc}")
        if packet.is_fragment or packet.l4 is None:
            return self._fail_unkeyed("IP fragment or no transport header")
        l4 = packet.l4
        key = FlowKey(packet.proto, packet.src, l4.sport, packet.dst, l4.dport)
        try:
            if l4.sport == 53 and from_client is not True and not self._client_flow(key, l4):
                return self._dns(packet, key, now)
            if isinstance(l4, TcpSegment):
                if followed or key in self._following:
                    following = self._follow_state(packet, l4, key, now, followed,
                                                   0 if fitted is data else _claimed(data) - len(data))
                    if following is not None:
                        return following
                return self._tcp(packet, l4, key, now)
            return self._udp(l4, key, now)
        except ParseError as exc:
            # Unreadable input on a flow (the TLS, HTTP or SOCKS parsers, a DNS answer): the fail verdict.
            self._flows.pop(key, None)
            self._following.pop(key, None)
            answer = l4.sport == 53 and from_client is not True and not self._client_flow(key, l4)
            return self._fail(key, now, f"unreadable {_what(l4)}: {exc}", dns_answer=answer)

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
            for host, was, port in (*r.more, (r.host, r.source, r.port)):
                d: Decision | None
                if host is not None and was not in ("dns-table", "address"):
                    d, source = self._decide_found(classify.Found(host, was, port), key, now)
                else:
                    d, source = self._decide_address(key, now)
                if d is not None and not d.allowed:
                    r.allowed = False
                    self._following.pop(key, None)
                    cut.append(_event(now, key, d, source))
                    break
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
        while self._following:
            key, following = next(iter(self._following.items()))
            if now - following.last < FOLLOW_IDLE:
                break
            del self._following[key]
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

    @property
    def followed(self) -> int:
        """Flows read past their first decision (kept-alive plain HTTP, a second hello after an HRR)."""
        return len(self._following)

    # -- TCP client flows ---------------------------------------------------------------------

    def _tcp(self, packet: Packet, seg: TcpSegment, key: FlowKey, now: float) -> Verdict:
        known = self._decided.get(key)
        if known is not None and not seg.flags & SYN:
            if known.follows and known.allowed:  # a followed flow whose state went (the table was full)
                following = self._follow_state(packet, seg, key, now, True, 0)
                if following is not None:
                    return following
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
        return self._read(flow, stream, flow.reader, packet, seg, now)

    # -- reading a stream's names ---------------------------------------------------------------

    def _read(self, flow: _Flow | _Following, stream: Stream, reader: classify.Reader, packet: Packet,
              seg: TcpSegment, now: float) -> Verdict:
        """Judge every name the reader finds in the stream's prefix; the verdict for this packet."""
        key = flow.key
        found = reader.feed(bytes(stream.prefix))
        if found is None:
            return self._following_verdict(flow, stream, reader, now, None) if reader.following else ACCEPT
        d: Decision | None = None
        source = ""
        while found is not DONE:
            if found.name is None:
                d, source = self._decide_address(key, now)
            else:
                d, source = self._decide_found(found, key, now)
            if d is None or not d.allowed or reader.finished:
                # Blocked or unreadable, or the last name this stream carries (an ordinary TLS flow).
                resume = reader.tls_resume
                tls_next = None if resume is None else ((stream.base + resume[0]) & 0xFFFFFFFF, resume[1])
                return self._finish(flow, now, d, source, packet, seg, tls_next)
            flow.names = (*flow.names[1 - MAX_JUDGED:], (d.host, source, d.port or key.dport))
            found = reader.feed(bytes(stream.prefix))
            if found is None:
                event = _event(now, key, d, source)
                if reader.following:
                    return self._following_verdict(flow, stream, reader, now, event)
                return Verdict(Action.ACCEPT, event=event)  # more to read: the flow stays undecided
        # Nothing more to read (a tunnel's bytes are no protocol with names): what was judged stands.
        if d is None and flow.names:
            host, source, port = flow.names[-1]
            if source not in ("dns-table", "address"):
                d = self._decide_name(host, port)
        if d is None:
            d, source = self._decide_address(key, now)
        if flow.names and flow.names[-1][:2] == (d.host, source):
            flow.names = flow.names[:-1]
        resume = reader.tls_resume
        tls_next = None if resume is None else ((stream.base + resume[0]) & 0xFFFFFFFF, resume[1])
        return self._finish(flow, now, d, source, packet, seg, tls_next)

    def _following_verdict(self, flow: _Flow | _Following, stream: Stream, reader: classify.Reader, now: float,
                           event: Event | None) -> Verdict:
        """A plain HTTP flow read so far and allowed: it is followed (state moved, window advanced)."""
        stream.advance(reader.rebase())
        if isinstance(flow, _Following):
            return Verdict(Action.FOLLOW, event=event) if event is not None else ACCEPT
        self._flows.pop(flow.key, None)
        stream.limit = MAX_FOLLOW_WINDOW
        self._follow_add(_Following(flow.key, stream, reader, flow.ttl, now, flow.names))
        host, source, port = flow.names[-1] if flow.names else (None, "address", flow.key.dport)
        self._remember(flow.key, True, host, source, port, more=flow.names[:-1], follows=True,
                       ttl=flow.ttl)
        self.stats.allowed += 1
        return Verdict(Action.FOLLOW, event=event)

    def _follow_add(self, state: _Following) -> None:
        self._following[state.key] = state
        self._following.move_to_end(state.key)
        while len(self._following) > MAX_FOLLOWED:
            self._following.popitem(last=False)
            self.stats.by_limit["followed"] = self.stats.by_limit.get("followed", 0) + 1

    def _follow_state(self, packet: Packet, seg: TcpSegment, key: FlowKey, now: float, followed: bool,
                      unseen: int) -> Verdict | None:
        """The verdict for a packet of a followed flow; None when the flow is not followed. `unseen`:
        payload bytes the queue did not copy (a segment larger than its copy range, on loopback)."""
        if seg.flags & SYN and not seg.flags & ACK:
            self._following.pop(key, None)
            return None
        state = self._following.get(key)
        if state is None:
            if key in self._flows:  # still undecided: the normal path reads it
                return None
            known = self._decided.get(key)
            if known is not None and not known.allowed:
                return None
            if not followed and (known is None or not known.follows):
                return None
            if known is not None and not known.follows:
                if known.tls_next is None:
                    # Nothing to read after what was judged (a tunnel's target and ClientHello, a
                    # flow judged by address): the flow stays allowed.
                    event, known.event = known.event, None
                    return Verdict(Action.ALLOW, event=event)
                # The server sent a HelloRetryRequest: read the second ClientHello.
                seq, leftover = known.tls_next, known.tls_leftover
                names = (*known.more, *([(known.host, known.source, known.port)] if known.host else []))
                state = _Following(key, Stream(seq, MAX_FLOW_BYTES), classify.Reader(after_hello=(leftover, 0)),
                                   known.ttl, now, names, fresh=True)
            else:
                # A followed flow whose state is gone (netguard restarted, or the table was full):
                # read on from this segment, where only a request may begin.
                state = _Following(key, Stream(seg.seq, MAX_FOLLOW_WINDOW), classify.Reader(mid_stream=True),
                                   packet.ttl, now, ())
            self._follow_add(state)
        state.last = now
        self._following.move_to_end(key)
        if seg.flags & RST or not seg.payload:
            return ACCEPT
        if state.ttl is not None and packet.ttl != state.ttl:
            return self._fail(key, now, f"TTL {packet.ttl} where the SYN had {state.ttl}", evasion="ttl",
                              packet=packet, seg=seg)
        result = state.stream.add(seg.seq, seg.payload)
        if result is Result.CONFLICT:
            return self._fail(key, now, "overlapping TCP segments carry different bytes", evasion="overlap",
                              packet=packet, seg=seg)
        if result is Result.LIMIT:
            return self._fail(key, now, f"a followed flow beyond its {state.stream.limit}-byte window",
                              limit="bytes", packet=packet, seg=seg)
        if not state.stream.prefix:
            if state.fresh and state.stream.has_data():
                # Bytes between the first ClientHello and this segment left before the kernel
                # followed the flow again: a second hello among them went by unread.
                return self._fail(key, now, "bytes after the first ClientHello went by unread", packet=packet,
                                  seg=seg)
            return ACCEPT
        state.fresh = False
        verdict = self._read(state, state.stream, state.reader, packet, seg, now)
        if unseen and key in self._following:
            # The rest of the segment was not copied: fine inside a body being skipped, else unreadable.
            if state.stream.prefix or not state.reader.skip_unseen(unseen):
                return self._fail(key, now, f"{unseen} bytes of a segment not copied where a request may begin",
                                  packet=packet, seg=seg)
            state.stream.skip(unseen)
        return verdict

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
        d: Decision | None
        address = classify.literal_address(name) if name[:1] in _LITERAL_FIRST or ":" in name else None
        if address is not None:
            # A name field that holds an address, in any form a proxy's resolver reads as one: judge
            # the address the client named, by the names DNS gave for it.
            d, source = self._decide_address(key, now, address, port)
            if source == "dns-table":
                return d, source
            source = found.source
        else:
            d, source = self._decide_name(name, port), found.source
        if d is not None and d.allowed and d.registry is None:
            # Allowed only because the name is unknown: if the address was learned for a blocked
            # registry (a CNAME alias, an answer cached before the policy changed), that wins.
            learned = self._decide_learned(key.dst, key.dport, now)
            if learned is not None and not learned.allowed and learned.registry is not None:
                return learned, "dns-table"
        return d, source

    def _decide_address(self, key: FlowKey, now: float, address: bytes | None = None,
                        port: int | None = None) -> tuple[Decision, str]:
        address = key.dst if address is None else address
        port = key.dport if port is None else port
        learned = self._decide_learned(address, port, now)
        if learned is not None:
            return learned, "dns-table"
        text = str(ipaddress.ip_address(address))
        unknown = self.policy.unknown_hosts
        return Decision(unknown == "allow", text, port, None, None, f"unknown_hosts = {unknown}",
                        f"{text} has no name netguard saw (no SNI, Host or DNS answer); "
                        f"{self.policy.label} has unknown_hosts = {unknown}"), "address"

    def _decide_learned(self, address: bytes, port: int, now: float) -> Decision | None:
        """The decision by the names DNS answers gave for address (a blocking one first); None if none."""
        decisions = [d for d in (self._decide_name(n, port) for n in self.names.names(address, now)) if d]
        if not decisions:
            return None
        return next((d for d in decisions if not d.allowed), decisions[0])

    def _finish(self, flow: _Flow | _Following, now: float, d: Decision | None, source: str,
                packet: Packet | None = None, seg: TcpSegment | None = None,
                tls_next: tuple[int, bytes] | None = None) -> Verdict:
        """The verdict for a flow decided by d; `tls_next`: where the records after its ClientHello
        begin (sequence number) and the handshake bytes left after it, from which a second hello after
        a HelloRetryRequest is read."""
        if d is None:
            return self._fail(flow.key, now, f"invalid name from {source}", packet=packet, seg=seg)
        self._flows.pop(flow.key, None)
        if self._following:
            self._following.pop(flow.key, None)
        self._remember(flow.key, d.allowed, d.host, source, d.port, flow.names, tls_next, flow.ttl)
        event = _event(now, flow.key, d, source)
        if d.allowed:
            self.stats.allowed += 1
            return Verdict(Action.ALLOW, event=event)
        self.stats.blocked += 1
        return Verdict(Action.BLOCK, inject=self._alert(packet, seg), event=event)

    def _remember(self, key: FlowKey, allowed: bool, host: str | None, source: str, port: int | None,
                  more: tuple[tuple[str, str, int], ...] = (), tls_next: tuple[int, bytes] | None = None,
                  ttl: int | None = None, follows: bool = False) -> None:
        if tls_next is None:
            self._decided[key] = _Remembered(allowed, host, source, port or key.dport, None, more, None, b"", ttl,
                                             follows)
        else:
            self._decided[key] = _Remembered(allowed, host, source, port or key.dport, None, more, tls_next[0],
                                             tls_next[1], ttl, follows)
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
        self._following.pop(key, None)
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
        seen: dict[str, None] = {}  # every name once, lower case, in order: question, then answers
        for q in msg.questions:
            seen[q.name.lower()] = None
        addresses: list[bytes] = []
        ttl: int | None = None
        for rr in msg.answers:
            seen[rr.name.lower()] = None
            if isinstance(rr.data, str):
                seen[rr.data.lower()] = None
            elif isinstance(rr.data, bytes):
                addresses.append(rr.data)
                ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
        seen.pop("", None)
        names = list(seen)
        decisions: list[Decision] = []
        blocked: Decision | None = None
        for n in names:
            d = self._decide_name(n, None)
            if d is not None:
                decisions.append(d)
                if blocked is None and not d.allowed:
                    blocked = d
        if not decisions:
            return None, None
        client_key = key.reply()
        judged = tuple(d.host for d in decisions)
        learned = not addresses or self.names.learn(addresses, judged, ttl or 0, now)
        if not learned:
            self.stats.by_limit["names"] = self.stats.by_limit.get("names", 0) + 1
            self.stats.fail_verdicts += 1
            if self.policy.fail_mode == "closed":
                why = "the table of names learned from DNS is full"
                reply = _blocked_reply(data, (f"{EDE_PREFIX}: {why}", EDE_PREFIX, ""),
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
        return _blocked_reply(data, texts, len(data) if same_length else None), event


def _event(now: float, key: FlowKey, d: Decision, source: str, allowed: bool | None = None,
           names: tuple[str, ...] = ()) -> Event:
    return Event(now, key, d.allowed if allowed is None else allowed, d.host, source, d.registry,
                 d.registry_name, d.rule, d.reason, names)


def _blocked_reply(message: bytes, texts: tuple[str, ...], length: int | None) -> bytes | None:
    """NXDOMAIN with an EDE text; with `length`, exactly that many bytes (a DNS-over-TCP answer
    cannot change size): the longest text that fits, padded with spaces (or, without EDNS, with
    trailing bytes, which DNS parsers skip). None if even the shortest reply is too long."""
    for text in texts:
        reply = dns.build_blocked_reply(message, rcode="NXDOMAIN", info_code=dns.EDE_BLOCKED, text=text)
        if length is None or len(reply) == length:
            return reply
        if len(reply) > length:
            continue
        padded = dns.build_blocked_reply(message, rcode="NXDOMAIN", info_code=dns.EDE_BLOCKED,
                                         text=text + " " * (length - len(reply)))
        if len(padded) > length:
            continue
        return padded + bytes(length - len(padded))
    return None


# An address literal starts with a digit (inet_aton forms) or holds ':' (IPv6): names that start with
# a letter skip the parse (an IPv6 literal starting with a letter holds ':').
_LITERAL_FIRST = frozenset("0123456789[")


def _what(l4: TcpSegment | UdpDatagram) -> str:
    if l4.sport == 53:
        return "DNS answer"
    return "client bytes" if isinstance(l4, TcpSegment) else "QUIC datagram"


def _claimed(data: bytes) -> int:
    """The packet length its IP header claims (before _fit_lengths)."""
    if data[0] >> 4 == 4:
        return int.from_bytes(data[2:4], "big")
    return 40 + int.from_bytes(data[4:6], "big")


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
