"""Engine.handle(packet bytes, now) -> Verdict: the per-packet decision, with no I/O.

Strategy: five kinds of packets arrive (the firewall rules send nothing else):
- DNS answers (from port 53, UDP or TCP; replies with a DNS response header from any other port).
  Every name of the answer (question, CNAME and SVCB/HTTPS targets, owners, and the additional
  records that belong to them) is judged; the addresses (A, AAAA, SVCB hints) are learned for all
  of them as one chain (NameTable; a chain with a blocked name is evidence that no flood of other
  names can evict). If one is blocked and dns_block is on, the answer is replaced by NXDOMAIN
  carrying an Extended DNS Error. DNS answers only ever get ACCEPT, REWRITE or DROP: a repeat would
  queue them again.
- Client packets of undecided TCP flows. TCP payload is reassembled by sequence number
  (Stream) from the SYN on; the contiguous prefix, as the server's application will read it, is
  read as TLS (ClientHello -> SNI), HTTP (Host, CONNECT target), SOCKS (target) or neither. The
  name decides through the policy, unless it is allowed and DNS gave the destination address only
  in answers naming a blocked host and never for this name (an address conflict: a hosts-file remap,
  TLS without verification, domain fronting); without a name, the destination address decides
  through the names learned from DNS.
  A block is final at once. An allow read from client bytes is final only when the server's TCP
  shows it took those bytes (`awaits_server`, set by the daemon): the deciding packet passes without
  the allowed mark, the flow stays undecided in the kernel (its client segments still queued, each
  compared with the judged bytes: different bytes over them are the overlap evasion), and the first
  server segment whose ACK covers them makes the allow final and carries its event. So a segment the
  server drops, for a reason netguard models (below) or one it cannot see (a timestamp made old by a
  data-less ACK that stayed in the kernel), never decides an allow. Bytes past the judged ones are
  not read and cost no budget. (Plain HTTP followed flows, below, are still allowed at once.)
  Where the kernel can do it (`kernel_confirms`), a ClientHello read from the stream's start is
  allowed with Action.UNCONFIRMED and its event at once: the kernel keeps queueing the flow's client
  data (compared here with the judged bytes as above, from a table of its own, _unconfirmed) and
  makes the flow allowed at the server's first TLS record, which a TLS server sends only once it has
  read the whole hello. A client segment queued for that mark whose state is gone gets the fail verdict.
  A decided flow is remembered (bounded) so packets already queued behind the deciding one get the
  same verdict, and so a policy reload can find open flows that became blocked.
- QUIC long-header datagrams, on any UDP port, of undecided flows and of flows already allowed
  (QUIC multiplexes connections over one socket: each new connection on a 5-tuple is judged). Every
  Initial packet of a datagram is read (classify.QuicReader); a datagram that feeds a connection
  whose ClientHello is not whole yet is held in the kernel's queue (HOLD) and let go only once that
  connection is judged and allowed, so a server never sees part of a connection netguard has not
  judged (and cannot be steered to read the rest under another connection ID). A long header of a
  version netguard cannot read, or one cut short by the queue's copy, gets the fail verdict for
  that datagram alone (DROP when closed), so a client may retry with v1 or v2 on the same socket.
- Server packets of undecided TCP flows: the SYN-ACK (which SYN the server took, its sequence
  numbers, whether it signs), data-less segments (the ACK that confirms a pending allow) and
  payload. Payload from the server (of a flow with no pending allow) means it speaks first (SSH,
  SMTP): the name will never come from the client, so the flow is judged by address, unless the reader is
  in the middle of a protocol that waits for the server (`Reader.waits_for_server`) or the payload is
  an HTTP/2 server's SETTINGS before the client's preface (an h2c server sends it as it accepts). Data-less
  client segments never decide anything.
- Client packets of followed flows (`followed`: the kernel queued them for a flow marked "follow").
  A plain HTTP connection is read request by request for its whole life (bodies skipped by their
  framing), so that every request is judged: its flow gets FOLLOW, not ALLOW, and its state moves
  to a bounded table of followed flows. A CONNECT or SOCKS request keeps its flow undecided until
  the tunnel's first bytes are read too (a ClientHello, requests or a nested proxy request).
  An allowed TLS flow is followed again when the kernel saw a HelloRetryRequest come back (its
  rule marks the flow "follow"): the records after the first ClientHello are read and the second
  ClientHello is judged (where the kernel confirms, it is unconfirmed like a first one, so its bytes
  are compared until the server's next record); bytes between the two that went by unread are the
  fail verdict. A followed flow's segments meet the same checks as an undecided flow's (below: what
  the server drops is dropped, urgent bytes are taken out), with what its SYN-ACK told where
  netguard saw it.

The bytes judged are the bytes the server's TCP stack delivers: a client segment the server will
drop (no ACK flag, a bad checksum, a signature it does not expect, a timestamp PAWS rejects, an
acknowledgment of bytes before its first, data before its SYN-ACK) is dropped here too, so neither
side reads it, and so is one that carries IPv4 options or IPv6 extension headers (whether the
server's IP layer delivers it depends on rules netguard does not mirror); urgent (out-of-band)
bytes are taken out as Linux takes them out (Stream.urgent).
What the server would do cannot always be known (several urgent pointers, a signing server): then
the fail verdict. Every limit (undecided flows, bytes per flow, packet bytes per flow including
retransmitted copies, out-of-order pieces, names, idle time) and every unreadable input gets the
policy's fail verdict: block when fail_mode = "closed", allow when "open". Known evasion techniques
are blocked in either mode: overlapping segments whose bytes differ, and a data packet whose TTL
differs from its SYN's (a decoy meant to expire before the server). The single place where
ParseError becomes a verdict is `handle`.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from netguard.engine import classify
from netguard.engine.classify import DONE
from netguard.engine.names import MAX_CHAIN_NAMES, Chain, NameTable, chain_names, chain_of
from netguard.engine.packets import (
    ipv4_header_ok,
    replace_tcp_payload,
    replace_udp_payload,
    tcp_checksum_ok,
    tcp_packet,
    without_tcp_options,
)
from netguard.engine.stream import Result, Stream
from netguard.engine.verdict import ACCEPT, Action, Event, FlowKey, Verdict, decided, event_of, flow_key
from netguard.policy import Decision, HostError, Policy, decide
from netguard.wire import dns, h2, quic, tls
from netguard.wire.errors import ParseError, UnsupportedVersion
from netguard.wire.ip import (
    ACK,
    NO_OPTIONS,
    PROTO_TCP,
    PROTO_UDP,
    RST,
    SYN,
    URG,
    Packet,
    TcpSegment,
    UdpDatagram,
    parse_packet,
    tcp_options,
)

# Undecided flows tracked at once. A flow is undecided for one round trip (SYN to first data), so
# this is the number of connections opened within that time; past it, new flows get the fail verdict.
MAX_FLOWS = 4096
# Client bytes buffered per flow: the largest ClientHello (16 KiB, wire.tls.MAX_CLIENT_HELLO) in
# records of at most 16 KiB, each with its 5-byte header, and any HTTP request head fits.
# Worst case for the whole table: MAX_FLOWS x MAX_FLOW_BYTES, about 70 MB.
MAX_FLOW_BYTES = 16384 + 4 + 5 * 4 + 1024
# Client packet bytes (IP length: headers and every retransmitted copy count, as the kernel's
# connbytes counts them) an undecided TCP flow may send before the fail verdict. The firewall queues
# a flow's client packets only up to its first firewall.TCP_WINDOW_BYTES (128 KiB) and the engine
# must decide before that, whatever arrives: the rest of the window leaves room for one more write
# counted whole (a GSO packet of up to 64 KiB). A 517-byte ClientHello in 1-byte IPv6 segments with
# timestamps is 517 * 73 bytes, 38 KB.
MAX_FLOW_WIRE_BYTES = 60 * 1024
# An undecided flow that has sent nothing for this long is forgotten (its SYN may have been lost);
# where its bytes start is kept, so it is still read from its start.
FLOW_IDLE = 60.0
# An undecided TCP flow that sent some bytes and then nothing for this long gets the fail verdict
# (what it sent reached the server unjudged, and bytes from the middle of a stream cannot be judged
# right). A client may send its first bytes slowly, a ClientHello in pieces over minutes: netguard's
# own timer must not cut it sooner than servers give up on such a client (nginx, Apache, HAProxy
# after 20-60 s; Go's net/http without ReadHeaderTimeout never). Before this, only table pressure
# ends such a flow: when MAX_FLOWS are undecided, those idle for FLOW_IDLE go first.
FLOW_IDLE_DATA = 3600.0
# Distinct initial sequence numbers one flow's SYNs may carry: a client retries with the same one;
# more is someone shuffling SYNs to move where netguard reads from.
MAX_SYNS = 4
# Decided flows remembered: for packets queued behind the deciding one, and to cut open flows on
# reload (about 300 bytes each). Evicting the oldest only loses the ability to cut that flow.
MAX_DECIDED = 32768
# TLS flows allowed by their ClientHello that the kernel makes final (kernel_confirms), kept for the
# client segments it still queues until then: the judged bytes are compared with them. The server's
# first TLS record ends that within a round trip, so an entry is needed for milliseconds. One evicted
# moves to the decided flows (for a reload to cut); if the kernel still queues its client segments
# (no answer from the server yet), the next one is the fail verdict, never a free pass.
MAX_UNCONFIRMED = 4096
# Server bytes a client segment of an unconfirmed flow may acknowledge: the server has sent no TLS
# record yet (that would have confirmed it), at most an alert or a record that crossed with the
# segment. One acknowledging far more answers another connection on the same ports (after a reset
# the conntrack entry, and its mark, may carry a new SYN that never reached the queue).
MAX_UNCONFIRMED_ACKED = 65536
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
# QUIC flows followed at once: their connections' CRYPTO streams (judged ones kept, so that later
# Initials of a connection are checked against what was judged) and the datagrams held in the
# kernel's queue until a connection is judged. The least recently active flow is forgotten first:
# its held datagrams are dropped (the client sends them again) and its connections are read anew.
MAX_QUIC_FLOWS = 2048
# The byte budget of one QUIC flow: datagrams held plus CRYPTO streams kept. The largest ClientHello
# tls.py reads (16 KiB) fills about 18 KiB of 1200-byte Initials and is kept once more after being
# judged. Past it, judged connections are forgotten first, then the flow gets the fail verdict.
# Worst case for the whole table: MAX_QUIC_FLOWS x MAX_QUIC_FLOW_BYTES, about 80 MB (the held part
# in the kernel).
MAX_QUIC_FLOW_BYTES = 40960
# Datagrams held at once. They count against the queue's length (nfqueue.QUEUE_MAXLEN, 4096) and
# cost kernel memory; a legitimate client holds one or two per new connection for a round trip of
# its own sending. Past it, a flow that would hold one more gets the fail verdict.
MAX_HELD_DATAGRAMS = 1024
# QUIC's port: a long header of a version netguard cannot read gets the fail verdict here (and on
# flows already judged by their QUIC Initials). Elsewhere such a datagram is not QUIC to netguard:
# the firewall queues only v1 and v2 long headers there (see daemon/firewall.py).
QUIC_PORT = 443
# DNS-over-TCP answer bytes buffered per connection (a message is at most 65535 + 2 bytes).
MAX_DNS_TCP_BYTES = 65537
# DNS-over-TCP connections followed at once (resolvers keep few open; a stub opens one per query).
MAX_DNS_TCP_STREAMS = 1024
# (name, port) -> decision for the names used most recently: a VM talks to a few registries over and
# over, and deciding a name anew (normalising it, building the reason) is a good part of the work per
# new connection. Least recently used first out, so a flood of fresh names costs O(1) each. About
# 600 bytes an entry (the decision's strings), so at most about 0.6 MB.
MAX_CACHED_DECISIONS = 1024

# Server packets of an undecided TCP flow the firewall queues (firewall.REPLY_WINDOW_PACKETS, every
# packet counted, the SYN-ACK too): a pending allow whose server sent that many without acknowledging
# the judged bytes can no longer be confirmed (the next ones stay in the kernel), so the last one
# gets the fail verdict rather than the flow waiting for the kernel's byte window.
REPLY_WINDOW_PACKETS = 32

EDE_PREFIX = "netguard"
DROP = Verdict(Action.DROP)


@dataclass(slots=True)
class _Flow:
    key: FlowKey
    last: float
    stream: Stream | None = None
    syn_seen: bool = False
    reader: classify.Reader | None = None
    ttl: int | None = None  # the SYN's TTL / hop limit: every later packet of the flow has the same
    # What the server's TCP stack knows, for judging which client segments it takes (_refused): the
    # client's SYNs by ISN with their data (TCP Fast Open), the server's ISN and whether it signs
    # (from its SYN-ACK), the newest timestamp it accepted in order, and the client packet bytes seen.
    syns: dict[int, bytes] | None = None
    server_isn: int | None = None
    signs: bool = False
    ts_recent: int | None = None
    wire: int = 0
    names: tuple[tuple[str, str, int], ...] = ()  # allowed so far: host, source, port (the last MAX_JUDGED)
    pending: _Pending | None = None  # allowed by its bytes, until the server acknowledges them
    replies: int = 0  # server packets seen (the firewall queues the first REPLY_WINDOW_PACKETS)
    retried: bool = False  # unconfirmed by a second ClientHello (after a HelloRetryRequest)


@dataclass(slots=True)
class _Pending:
    """An allow decision waiting for the server's TCP to acknowledge the bytes it was read from."""

    end: int  # the sequence number just past the bytes read (the naming bytes and what came with them)
    decision: Decision
    source: str
    tls_next: tuple[int, bytes] | None
    policy: Policy  # the policy it was decided under (a reload decides again at confirmation)


@dataclass(slots=True)
class _Following:
    """A flow read past its first decision: a kept-alive HTTP connection, or a TLS flow after a
    HelloRetryRequest. `stream` starts where `reader` stands (both advance as it reads). What the
    server's TCP stack knows, as in _Flow, where it is known (not after a restart or a HelloRetryRequest;
    a flow that signs is never followed): the same checks of which segments the server takes."""

    key: FlowKey
    stream: Stream
    reader: classify.Reader
    ttl: int | None
    last: float
    names: tuple[tuple[str, str, int], ...]
    fresh: bool = False  # nothing read yet: the first bytes must start at the stream's base
    server_isn: int | None = None
    ts_recent: int | None = None
    syns: dict[int, bytes] | None = None  # always None: past the handshake (for _refused)
    signs: bool = False  # always False: a flow whose server signs is never allowed by a read


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


@dataclass(slots=True)
class _Held:
    token: int
    size: int
    waits: set[bytes]  # the connections that must be judged (and allowed) before it goes


@dataclass(slots=True)
class _QuicFlow:
    reader: classify.QuicReader
    last: float
    held: list[_Held] = field(default_factory=list)
    held_bytes: int = 0


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
    dropped: dict[str, int] = field(default_factory=dict)  # client segments the server would drop, by why
    multipath_syns: int = 0  # SYNs sent on without their Multipath TCP options


class Engine:
    """Per-flow state and verdicts for one policy (replaced atomically by `reload`)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.names = NameTable(still_protected=self._chain_blocked)
        self.stats = Stats()
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._decided: OrderedDict[FlowKey, _Remembered] = OrderedDict()
        self._dns_tcp: OrderedDict[FlowKey, _DnsStream] = OrderedDict()
        self._following: OrderedDict[FlowKey, _Following] = OrderedDict()
        # Flows forgotten while idle before any client byte: where their bytes start, the server's ISN.
        self._bases: OrderedDict[FlowKey, tuple[int, int | None]] = OrderedDict()
        # TLS flows allowed by their ClientHello until the server's first record (MAX_UNCONFIRMED).
        self._unconfirmed: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self.max_flows = MAX_FLOWS
        self.flow_idle = FLOW_IDLE
        self.flow_idle_data = FLOW_IDLE_DATA
        # The firewall queues the server's SYN-ACK of every undecided flow (the daemon's rules): then
        # client bytes before it cannot be bytes the server took. Off for callers that only have the
        # client's packets (tests, a capture of one direction).
        self.sees_replies = False
        # An allow read from a TCP flow's client bytes becomes final only when a server segment
        # acknowledges those bytes (_confirm): a segment the server's stack drops (for any reason)
        # must not decide an allow. Needs every server segment of undecided flows queued (the daemon's
        # rules, NETGUARD-REPLY); off for callers that only have the client's packets.
        self.awaits_server = False
        # ... and the kernel does that itself for a TLS flow named by its ClientHello (the daemon's
        # rules, NETGUARD-CONFIRM): the hello gets Action.UNCONFIRMED, the connection mark that keeps
        # the flow's client data queued (compared with the judged bytes) until the server's first TLS
        # record makes it allowed, without queueing that record. A TLS server sends nothing before it
        # has read the whole hello, so that record acknowledges it.
        self.kernel_confirms = False
        # Checksums are verified where a segment could decide (NFQUEUE hands over complete ones). Off
        # for a capture taken on the sending host, which shows checksums before the NIC fills them in.
        self.checks_checksums = True
        # Decisions of self._decisions_policy (a reload, or any new policy, starts afresh).
        self._decisions: OrderedDict[tuple[str, int | None], Decision | None] = OrderedDict()
        self._decisions_policy = policy
        self._quic: OrderedDict[FlowKey, _QuicFlow] = OrderedDict()
        self._held_count = 0
        self._next_token = 0
        # Held datagrams given up outside a verdict of their own flow (evicted flows): settled with
        # the next UDP verdict or by expire().
        self._settle: list[tuple[int, Action]] = []

    # -- entry points -------------------------------------------------------------------------

    def handle(self, data: bytes, now: float, from_client: bool | None = None, followed: bool = False,
               unconfirmed: bool = False) -> Verdict:
        """Judge one queued packet (raw IP bytes, possibly cut short by the queue's copy range).

        `from_client`: True for a packet the firewall queued as a client flow's (OUTPUT), False
        for a DNS answer (INPUT), None when the hook cannot tell (FORWARD, offline replay); then a
        packet from port 53 is a DNS answer unless it belongs to a client flow begun by a SYN.
        `followed`: the kernel queued it because its flow is marked "follow" (an allowed plain HTTP
        connection, or a TLS flow whose server sent a HelloRetryRequest). `unconfirmed`: queued for
        its flow's "unconfirmed" mark (kernel_confirms)."""
        self.stats.packets += 1
        fitted = _fit_lengths(data)
        try:
            packet = parse_packet(fitted)
        except ParseError as exc:
            return self._fail_unkeyed(f"unreadable packet: {exc}")
        if packet.is_fragment or packet.l4 is None:
            return self._fail_unkeyed("IP fragment or no transport header")
        l4 = packet.l4
        key = flow_key(packet.proto, packet.src, l4.sport, packet.dst, l4.dport)
        answer = not followed and from_client is not True and self._is_dns_answer(key, l4, from_client)
        try:
            if answer:
                if isinstance(l4, TcpSegment) and l4.sport == 53:
                    if l4.flags & (SYN | ACK) == SYN | ACK:
                        self._dns_synack(packet, l4, key.reply(), now)
                    else:
                        self._dns_server_ack(packet, l4, key.reply(), now)
                return self._dns(packet, key, now)
            if isinstance(l4, TcpSegment):
                if followed or key in self._following:
                    # A followed flow's client packet (queued for its "follow" mark, or one already
                    # queued when the flow became followed).
                    unseen = 0 if fitted is data else _ip_length(data) - len(data)
                    following = self._follow_state(packet, l4, key, now, followed, unseen, data, fitted is data)
                    if following is not None:
                        return following
                elif from_client is not True and self._is_reply(key, l4, from_client):
                    return self._tcp_reply(packet, l4, key.reply(), now)
                return self._tcp(packet, l4, key, now, data, fitted is data, unconfirmed)
            return self._udp(l4, key, now, cut=fitted is not data)
        except ParseError as exc:
            # Unreadable input on a flow (the TLS, HTTP or SOCKS parsers, a DNS answer): the fail verdict.
            self._flows.pop(key, None)
            self._following.pop(key, None)
            return self._fail(key, now, f"unreadable {'DNS answer' if answer else _what(l4)}: {exc}",
                              dns_answer=answer)

    def _is_dns_answer(self, key: FlowKey, l4: TcpSegment | UdpDatagram, from_client: bool | None) -> bool:
        """A DNS answer: from port 53 (not a client flow begun by a SYN), or a reply the DNS rules
        queued from another port for its DNS response header (firewall.py). At INPUT (from_client
        False) the server packets of undecided TCP flows are queued too (NETGUARD-REPLY); at FORWARD
        (None) client flows as well: the header tells them apart (a QUIC long header has zeros where a
        response has its QR bit and question count; a TCP client flow begins with a SYN), and UDP to
        port 443 stays QUIC's."""
        if l4.sport == 53:
            return not self._client_flow(key, l4)
        if isinstance(l4, UdpDatagram):
            if from_client is False:
                return True
            return l4.dport != 443 and dns.looks_like_response(l4.payload) and not self._client_flow(key, l4)
        # TCP from another port: INPUT also queues the server packets of undecided flows
        # (NETGUARD-REPLY), a SYN-ACK and payload; those of a flow netguard reads are not answers.
        rkey = key.reply()
        if rkey in self._flows or rkey in self._bases or l4.flags & SYN:
            return False
        return dns.looks_like_response(l4.payload, 2) and not self._client_flow(key, l4)

    def _client_flow(self, key: FlowKey, l4: TcpSegment | UdpDatagram) -> bool:
        if key in self._flows or key in self._decided or key in self._unconfirmed:
            return True
        return isinstance(l4, TcpSegment) and bool(l4.flags & SYN) and not l4.flags & ACK

    def _is_reply(self, key: FlowKey, seg: TcpSegment, from_client: bool | None) -> bool:
        """Whether a TCP packet goes from server to client: INPUT queues nothing else but DNS answers;
        elsewhere (FORWARD, a capture) the flows netguard follows tell, and a SYN-ACK is one."""
        if from_client is False:
            return True
        if key in self._flows or key in self._decided or key in self._unconfirmed:
            return False
        rkey = key.reply()
        if rkey in self._flows or rkey in self._decided or rkey in self._bases or rkey in self._unconfirmed:
            return True
        return seg.flags & (SYN | ACK) == SYN | ACK

    def reload(self, policy: Policy, now: float) -> list[Event]:
        """Put a new policy in force; return the remembered open flows it now blocks (to be cut)."""
        self.policy = policy
        cut: list[Event] = []
        for key, r in list(self._decided.items()):
            if not r.allowed:
                continue
            # Every name the flow was judged by: a tunnel's target and the names inside it, the last
            # hosts of a kept-alive HTTP connection.
            d, source = self._judge_again(key, (*r.more, (r.host, r.source, r.port)), now)
            if (d is None or d.allowed) and key in self._quic:
                # Every QUIC connection this flow opened, not only the first.
                for found in self._quic[key].reader.found():
                    d, source = self._decide_found(found, key, now) if found.name else self._decide_address(key, now)
                    if d is not None and not d.allowed:
                        break
            if d is not None and not d.allowed:
                r.allowed = False
                self._following.pop(key, None)
                cut.append(_event(now, key, d, source))
        for key, flow in list(self._unconfirmed.items()):
            p = flow.pending
            if p is None:
                continue
            d, source = self._judge_again(key, (*flow.names, (p.decision.host, p.source,
                                                               p.decision.port or key.dport)), now)
            if d is not None and not d.allowed:
                del self._unconfirmed[key]
                self._remember(key, False, d.host, source, d.port)
                cut.append(_event(now, key, d, source))
        return cut

    def expire(self, now: float) -> list[tuple[int, Action]]:
        """Forget idle undecided flows and DNS-over-TCP buffers, and expired names. Returns the held
        datagrams given up (token, ALLOW or DROP) for the shell to settle.

        A TCP flow idle for `flow_idle` that sent nothing is forgotten, but where its bytes start is
        kept, so its first bytes are still read as the start. One that sent bytes waits
        `flow_idle_data` (a slow client is no reason to cut a connection), then gets the fail verdict:
        those bytes reached the server unjudged, and bytes read later from the middle of the stream
        could not be judged right (a ClientHello's second half alone names nothing). A QUIC flow
        still waiting for the rest of a ClientHello after FLOW_IDLE gets the fail verdict too (its held
        datagrams go or are dropped with it); one whose connections are all judged is forgotten. A
        followed flow idle for FOLLOW_IDLE is forgotten (its next packet is read as a request's start)."""
        self._expire_flows(now, self.flow_idle_data)
        while self._unconfirmed:
            # Remembered as decided, for a reload to cut (the kernel made it final long ago, or its
            # next segment queued as unconfirmed gets the fail verdict: _tcp).
            key, flow = next(iter(self._unconfirmed.items()))
            if now - flow.last < self.flow_idle:
                break
            self._settle_unconfirmed(key)
        while self._dns_tcp:
            key, st = next(iter(self._dns_tcp.items()))
            if now - st.last < self.flow_idle:
                break
            del self._dns_tcp[key]
        while self._following:
            key, following = next(iter(self._following.items()))
            if now - following.last < FOLLOW_IDLE:
                break
            del self._following[key]
        while self._quic:
            key, qf = next(iter(self._quic.items()))
            if now - qf.last < FLOW_IDLE:
                break
            if qf.held or qf.reader.unjudged:
                verdict = self._quic_fail(key, now, f"no whole ClientHello after {FLOW_IDLE:.0f} s idle", limit="idle")
                self._settle.extend(verdict.held)
                remembered = self._decided.get(key)
                if remembered is not None:
                    remembered.event = verdict.event
            else:
                del self._quic[key]
        self.names.purge(now)
        settled, self._settle = self._settle, []
        return settled

    def _expire_flows(self, now: float, data_idle: float) -> None:
        # Least recently active first: stop at the first flow active within flow_idle.
        gone: list[_Flow] = []
        for flow in self._flows.values():
            idle = now - flow.last
            if idle < self.flow_idle:
                break
            stream_data = flow.stream is not None and flow.stream.has_data()
            if stream_data and idle < data_idle:
                continue
            gone.append(flow)
        for flow in gone:
            key = flow.key
            del self._flows[key]
            if flow.stream is not None and flow.stream.has_data():
                why = (f"no name after {now - flow.last:.0f} s idle" if flow.pending is None else
                       f"the server did not acknowledge the bytes that named {flow.pending.decision.host} "
                       f"after {now - flow.last:.0f} s idle")
                verdict = self._fail(key, now, why, limit="idle")
                remembered = self._decided.get(key)
                if remembered is not None:
                    remembered.event = verdict.event
            elif flow.stream is not None:
                self._bases[key] = (flow.stream.base, flow.server_isn)
                while len(self._bases) > MAX_DECIDED:
                    self._bases.popitem(last=False)

    def _room(self, now: float) -> bool:
        """Whether one more undecided TCP flow fits: after expiry, and then (table pressure) after
        giving up on flows idle for flow_idle even if they sent bytes. (Not self.expire: the QUIC
        datagrams it gives up must reach the shell, which only expire's caller can do.)"""
        if len(self._flows) < self.max_flows:
            return True
        self._expire_flows(now, self.flow_idle_data)
        if len(self._flows) < self.max_flows:
            return True
        self._expire_flows(now, self.flow_idle)
        return len(self._flows) < self.max_flows

    @property
    def undecided(self) -> int:
        """Flows currently being read."""
        return len(self._flows)

    @property
    def unconfirmed(self) -> int:
        """TLS flows allowed by their ClientHello whose judged bytes are kept (kernel_confirms)."""
        return len(self._unconfirmed)

    @property
    def followed(self) -> int:
        """Flows read past their first decision (kept-alive plain HTTP, a second hello after an HRR)."""
        return len(self._following)

    # -- TCP client flows ---------------------------------------------------------------------

    def _tcp(self, packet: Packet, seg: TcpSegment, key: FlowKey, now: float, raw: bytes, whole: bool,
             unconfirmed: bool = False) -> Verdict:
        known = self._decided.get(key)
        if (unconfirmed or self._unconfirmed) and not seg.flags & SYN:
            waiting = self._unconfirmed.get(key)
            if waiting is not None:
                return self._unconfirmed_segment(packet, seg, waiting, now, raw, whole)
            if unconfirmed and (known is None or known.allowed):
                # Its judged bytes are gone (evicted, expired, or netguard restarted): this may carry
                # other bytes over them, which the server would read instead.
                return self._fail(key, now, "a segment of a TLS flow whose server has not answered its "
                                  "ClientHello, and netguard no longer holds the bytes judged", limit="unconfirmed",
                                  packet=packet, seg=seg)
        if known is not None and not seg.flags & SYN:
            if known.follows and known.allowed:  # a followed flow whose state went (the table was full)
                unseen = 0 if whole else _ip_length(raw) - len(raw)
                following = self._follow_state(packet, seg, key, now, True, unseen, raw, whole)
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
        if seg.flags & SYN:
            if seg.flags & ACK:
                return ACCEPT  # a SYN-ACK from the client's side (simultaneous open): nothing to read
            return self._syn(packet, seg, key, flow, now, raw)
        if flow is None:
            # No SYN seen (netguard started after the flow, or the flow was forgotten): read from here.
            if not self._room(now):
                return self._fail(key, now, f"more than {self.max_flows} undecided flows", limit="flows")
            restored = self._bases.pop(key, None)
            base, server_isn = restored if restored is not None else (seg.seq, None)
            flow = _Flow(key, now, Stream(base, MAX_FLOW_BYTES), syn_seen=restored is not None,
                         server_isn=server_isn)
            self._flows[key] = flow
        flow.last = now
        self._flows.move_to_end(key)
        flow.wire += _ip_length(raw)
        if flow.wire > MAX_FLOW_WIRE_BYTES and flow.pending is None:
            return self._fail(key, now, f"no name in the first {MAX_FLOW_WIRE_BYTES} bytes of packets "
                              "(retransmitted copies count)", limit="bytes", packet=packet, seg=seg)
        if not seg.payload and not seg.flags & URG:
            return ACCEPT  # data-less: nothing for the server's application, never a decision
        return self._tcp_data(packet, seg, flow, now, raw, whole)

    def _syn(self, packet: Packet, seg: TcpSegment, key: FlowKey, flow: _Flow | None, now: float,
             raw: bytes) -> Verdict:
        self._decided.pop(key, None)
        self._unconfirmed.pop(key, None)
        self._bases.pop(key, None)
        isn = seg.seq
        base = (isn + 1) & 0xFFFFFFFF
        answered = flow is not None and flow.server_isn is not None
        if flow is None or flow.stream is None or (flow.stream.base != base and not answered):
            # A new flow, or a SYN with another ISN before the server answered any: read from it.
            # (Once the server has answered one, it ignores other SYNs while that connection lives,
            # RFC 5961, and its next SYN-ACK tells if it took a new one: _synack.)
            if flow is None and not self._room(now):
                return self._fail(key, now, f"more than {self.max_flows} undecided flows", limit="flows")
            syns = flow.syns if flow is not None and flow.syns is not None else {}
            wire = flow.wire if flow is not None else 0
            flow = _Flow(key, now, Stream(base, MAX_FLOW_BYTES), syn_seen=True, ttl=packet.ttl, syns=syns, wire=wire)
            self._flows[key] = flow
        flow.last = now
        self._flows.move_to_end(key)
        flow.wire += _ip_length(raw)
        syns = flow.syns if flow.syns is not None else {}
        flow.syns = syns
        data = seg.payload  # TCP Fast Open: judged once the server's SYN-ACK says it took it
        if data and len(raw) < _ip_length(raw):
            return self._fail(key, now, "Fast Open data in a SYN longer than the queue copies", packet=packet,
                              seg=seg)
        held = syns.get(isn)
        if held is None:
            if len(syns) >= MAX_SYNS:
                return self._fail(key, now, f"SYNs with more than {MAX_SYNS} initial sequence numbers",
                                  evasion="syn", packet=packet, seg=seg)
            syns[isn] = data
        elif not (held.startswith(data) or data.startswith(held)):
            return self._fail(key, now, "SYNs with the same sequence number carry different bytes",
                              evasion="overlap", packet=packet, seg=seg)
        elif len(data) > len(held):
            syns[isn] = data
        opts = tcp_options(seg.options) if seg.options else NO_OPTIONS
        if opts.tsval is not None and not answered:
            flow.ts_recent = opts.tsval  # the server's PAWS starts from the SYN's timestamp
        if opts.multipath:
            # Multipath TCP (RFC 8684): the server's stack would put together what it reads from
            # mappings over several subflows, in any order, not from this connection's stream. With
            # the option gone the server answers as plain TCP and the client falls back (§3.7).
            rewritten = without_tcp_options(raw, packet, opts.multipath)
            if rewritten is None:
                return self._fail(key, now, "a Multipath TCP SYN longer than the queue copies", packet=packet,
                                  seg=seg)
            self.stats.multipath_syns += 1
            return Verdict(Action.REWRITE, payload=rewritten)
        return ACCEPT

    def _tcp_data(self, packet: Packet, seg: TcpSegment, flow: _Flow, now: float, raw: bytes,
                  whole: bool) -> Verdict:
        stream = flow.stream
        if stream is None:  # pragma: no cover - every TCP flow has a stream
            return ACCEPT
        if flow.ttl is not None and packet.ttl != flow.ttl:
            # A client's stack sends every packet of a connection with one TTL. A different one is
            # the decoy trick: a packet made to expire (or be dropped) before the server, carrying
            # bytes the filter should judge instead of the real ones.
            return self._fail(flow.key, now, f"TTL {packet.ttl} where the SYN had {flow.ttl}", evasion="ttl",
                              packet=packet, seg=seg)
        why, tsval = self._refused(packet, seg, flow, raw, whole)
        if why is not None:
            # The server drops it: so does netguard (then neither reads it), and it decides nothing.
            self.stats.dropped[why] = self.stats.dropped.get(why, 0) + 1
            return DROP
        if flow.signs:
            return self._fail(flow.key, now, "the server signs its segments (TCP MD5 or AO): netguard cannot "
                              "tell which ones it accepts", packet=packet, seg=seg)
        if flow.syns and flow.server_isn is None:
            # Data in the SYN and no SYN-ACK seen (a capture of one direction): take it as sent.
            isn = (stream.base - 1) & 0xFFFFFFFF
            data = flow.syns.get(isn, b"")
            if data:
                flow.syns[isn] = b""
                if stream.add(stream.base, data) is not Result.OK:
                    return self._fail(flow.key, now, "the SYN's bytes do not fit the stream", evasion="overlap",
                                      packet=packet, seg=seg)
        if seg.flags & URG and stream.urgent(seg.seq, seg.urgent) is Result.AMBIGUOUS:
            return self._fail(flow.key, now, "urgent (out-of-band) data the server may or may not take out of "
                              "the stream", packet=packet, seg=seg)
        if not seg.payload:
            return ACCEPT
        if flow.pending is not None:
            return self._pending_data(flow, flow.pending, stream, seg, now, packet, whole)
        in_order = (seg.seq - stream.base) & 0xFFFFFFFF <= len(stream.prefix)
        result = stream.add(seg.seq, seg.payload)
        if result is Result.CONFLICT:
            return self._fail(flow.key, now, "overlapping TCP segments carry different bytes", evasion="overlap",
                              packet=packet, seg=seg)
        if result is Result.LIMIT:
            return self._fail(flow.key, now, f"no name in the first {MAX_FLOW_BYTES} bytes", limit="bytes",
                              packet=packet, seg=seg)
        if in_order and tsval is not None and (flow.ts_recent is None or not _before(tsval, flow.ts_recent)):
            flow.ts_recent = tsval  # Linux keeps the newest timestamp of in-order segments
        verdict = self._read(flow, now, packet, seg)
        return verdict if whole else self._cut_short(flow.key, now, _ip_length(raw) - len(raw), packet, seg, verdict)

    def _unconfirmed_segment(self, packet: Packet, seg: TcpSegment, flow: _Flow, now: float, raw: bytes,
                             whole: bool) -> Verdict:
        """A client segment of a TLS flow the kernel has not made final yet: checked and compared as
        one of a pending flow's (_pending_data)."""
        flow.last = now
        self._unconfirmed.move_to_end(flow.key)
        if seg.flags & RST or not (seg.payload or seg.flags & URG):
            return ACCEPT
        if flow.server_isn is not None and (seg.ack - flow.server_isn - 1) & 0xFFFFFFFF > MAX_UNCONFIRMED_ACKED:
            return self._fail(flow.key, now, "a segment on the ports of a TLS flow whose server has not answered "
                              "its ClientHello acknowledges server bytes that flow never had (another connection "
                              "whose SYN did not reach netguard)", packet=packet, seg=seg)
        return self._tcp_data(packet, seg, flow, now, raw, whole)

    def _settle_unconfirmed(self, key: FlowKey) -> _Remembered | None:
        """An unconfirmed flow moved to the decided ones: the kernel made it allowed (a packet says
        so), or it leaves the table (evicted, idle)."""
        flow = self._unconfirmed.pop(key, None)
        if flow is None or flow.pending is None:
            return None
        p = flow.pending
        return self._remember(key, True, p.decision.host, p.source, p.decision.port, flow.names, p.tls_next, flow.ttl)

    def _pending_data(self, flow: _Flow, pending: _Pending, stream: Stream, seg: TcpSegment, now: float,
                      packet: Packet, whole: bool) -> Verdict:
        """A client segment of a flow allowed by bytes the server has not acknowledged yet: the part
        that covers those bytes must carry the same bytes (else the server may take other bytes than
        the ones judged: a decoy it dropped, then the real ones); what lies beyond is not read (the
        name is known; TLS early data, the rest of a request) and costs no budget."""
        upto = (pending.end - seg.seq) & 0xFFFFFFFF
        if upto == 0 or upto >= 0x80000000:
            return ACCEPT  # wholly past the judged bytes
        if not whole and len(seg.payload) < upto:
            return self._fail(flow.key, now, "a segment over the judged bytes longer than the queue copies",
                              packet=packet, seg=seg)
        if stream.add(seg.seq, seg.payload[:upto]) is not Result.OK:
            return self._fail(flow.key, now, "overlapping TCP segments carry different bytes", evasion="overlap",
                              packet=packet, seg=seg)
        return ACCEPT

    def _cut_short(self, key: FlowKey, now: float, unseen: int, packet: Packet, seg: TcpSegment,
                   verdict: Verdict) -> Verdict:
        """After reading a segment the queue copied only in part (its last `unseen` payload bytes are
        missing: a segment over ~4 KB, on loopback or a jumbo-frame link): a flow still undecided
        cannot be read on (the name may lie in those bytes, and the server's answer to them would
        make it judged by address), so it gets the fail verdict; a flow that became followed goes on
        only if they fall inside a body being skipped."""
        flow = self._flows.get(key)
        if flow is not None and flow.pending is None:  # (pending: the bytes not copied lie past the judged ones)
            return self._fail(key, now, f"{unseen} bytes of a segment not copied before a name was found",
                              packet=packet, seg=seg)
        state = self._following.get(key)
        if state is not None:
            if state.stream.prefix or not state.reader.skip_unseen(unseen):
                return self._fail(key, now, f"{unseen} bytes of a segment not copied where a request may begin",
                                  packet=packet, seg=seg)
            state.stream.skip(unseen)
        return verdict

    def _refused(self, packet: Packet, seg: TcpSegment, flow: _Flow | _Following, raw: bytes,
                 whole: bool) -> tuple[str | None, int | None]:
        """Why the server's TCP stack drops this client segment (None if it takes it), and the
        segment's timestamp. The checks Linux makes before it reads a segment's text (tcp_v4_rcv,
        tcp_validate_incoming, tcp_ack), those netguard can make from what it saw."""
        if self.sees_replies and flow.syns is not None and flow.server_isn is None:
            return "data before the server's SYN-ACK", None
        if not seg.flags & ACK:
            return "no ACK flag", None  # discarded once past the SYN (RFC 9293 3.10.7.4, fifth)
        if packet.ip_options or (packet.version == 6 and raw[6] != PROTO_TCP):
            # Whether the server's IP layer delivers it depends on rules netguard does not mirror (a
            # malformed option, a source route, an unknown option whose type says "discard", padding
            # over 7 bytes, the host's sysctls); no client's stack puts them on its segments.
            return "IP options or IPv6 extension headers", None
        if self.checks_checksums:
            if packet.version == 4 and not ipv4_header_ok(raw):
                return "bad IPv4 header checksum", None
            # A packet cut short by the queue's copy range cannot be checked (loopback, jumbo frames).
            if whole and not tcp_checksum_ok(raw, packet):
                return "bad TCP checksum", None
        opts = tcp_options(seg.options) if seg.options else NO_OPTIONS
        if opts.signed and not flow.signs:
            return "a TCP MD5 or AO signature the server does not expect", None
        if flow.signs and not opts.signed:
            return "no signature where the server signs", None
        tsval = opts.tsval
        if tsval is not None and flow.ts_recent is not None and _before(tsval, (flow.ts_recent - 1) & 0xFFFFFFFF):
            return "a timestamp older than one the server has (PAWS)", None
        if flow.server_isn is not None and _before(seg.ack, (flow.server_isn + 1) & 0xFFFFFFFF):
            return "an acknowledgment of bytes before the server's first", None
        return None, tsval

    def _read(self, flow: _Flow, now: float, packet: Packet, seg: TcpSegment, reply: bool = False) -> Verdict:
        """Feed an undecided flow's reader the bytes the server's application reads; decide when it knows."""
        stream = flow.stream
        if stream is None:  # pragma: no cover - every TCP flow has a stream
            return ACCEPT
        if flow.reader is None:
            flow.reader = classify.Reader()
        return self._read_names(flow, stream, flow.reader, packet, seg, now, reply)

    # -- reading a stream's names ---------------------------------------------------------------

    def _read_names(self, flow: _Flow | _Following, stream: Stream, reader: classify.Reader, packet: Packet,
                    seg: TcpSegment, now: float, reply: bool = False) -> Verdict:
        """Judge every name the reader finds in the bytes the server's application reads (the
        stream's delivered prefix); the verdict for this packet."""
        key = flow.key
        data = stream.delivered()
        found = reader.feed(data)
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
                return self._finish(flow, now, d, source, packet, seg, _tls_next(stream, reader), reply=reply)
            flow.names = (*flow.names[1 - MAX_JUDGED:], (d.host, source, d.port or key.dport))
            found = reader.feed(data)
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
        return self._finish(flow, now, d, source, packet, seg, _tls_next(stream, reader), reply=reply)

    def _following_verdict(self, flow: _Flow | _Following, stream: Stream, reader: classify.Reader, now: float,
                           event: Event | None) -> Verdict:
        """A plain HTTP flow read so far and allowed: it is followed (state moved, window advanced)."""
        stream.advance(reader.rebase())
        if isinstance(flow, _Following):
            return Verdict(Action.FOLLOW, event=event) if event is not None else ACCEPT
        self._flows.pop(flow.key, None)
        stream.limit = MAX_FOLLOW_WINDOW
        self._follow_add(_Following(flow.key, stream, reader, flow.ttl, now, flow.names, server_isn=flow.server_isn,
                                    ts_recent=flow.ts_recent))
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
                      unseen: int, raw: bytes, whole: bool) -> Verdict | None:
        """The verdict for a packet of a followed flow; None when the flow is not followed. `unseen`:
        payload bytes the queue did not copy (a segment larger than its copy range, on loopback)."""
        if seg.flags & SYN and not seg.flags & ACK:
            self._following.pop(key, None)
            return None
        state = self._following.get(key)
        if state is None:
            if key in self._flows:  # still undecided: the normal path reads it
                return None
            waiting = self._unconfirmed.get(key) if followed else None
            if waiting is not None:
                if waiting.retried:
                    # Queued as followed before its second hello's verdict: compared with that hello (_tcp).
                    return None
                # The kernel made it allowed, then saw a HelloRetryRequest (only an allowed flow is
                # marked "follow"): read on after the first hello.
                self._settle_unconfirmed(key)
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
        if seg.flags & RST or not (seg.payload or seg.flags & URG):
            return ACCEPT
        if state.ttl is not None and packet.ttl != state.ttl:
            return self._fail(key, now, f"TTL {packet.ttl} where the SYN had {state.ttl}", evasion="ttl",
                              packet=packet, seg=seg)
        # The same fidelity as an undecided flow's: what the server drops is dropped, urgent bytes are
        # taken out of the stream the reader reads.
        why, tsval = self._refused(packet, seg, state, raw, whole)
        if why is not None:
            self.stats.dropped[why] = self.stats.dropped.get(why, 0) + 1
            return DROP
        stream = state.stream
        if seg.flags & URG and stream.urgent(seg.seq, seg.urgent) is Result.AMBIGUOUS:
            return self._fail(key, now, "urgent (out-of-band) data the server may or may not take out of "
                              "the stream", packet=packet, seg=seg)
        if not seg.payload:
            return ACCEPT
        in_order = (seg.seq - stream.base) & 0xFFFFFFFF <= len(stream.prefix)
        result = stream.add(seg.seq, seg.payload)
        if result is Result.CONFLICT:
            return self._fail(key, now, "overlapping TCP segments carry different bytes", evasion="overlap",
                              packet=packet, seg=seg)
        if result is Result.LIMIT:
            return self._fail(key, now, f"a followed flow beyond its {stream.limit}-byte window",
                              limit="bytes", packet=packet, seg=seg)
        if in_order and tsval is not None and (state.ts_recent is None or not _before(tsval, state.ts_recent)):
            state.ts_recent = tsval
        if not stream.prefix:
            if state.fresh and stream.has_data():
                # Bytes between the first ClientHello and this segment left before the kernel
                # followed the flow again: a second hello among them went by unread.
                return self._fail(key, now, "bytes after the first ClientHello went by unread", packet=packet,
                                  seg=seg)
            return ACCEPT
        state.fresh = False
        verdict = self._read_names(state, stream, state.reader, packet, seg, now)
        # The rest of the segment was not copied: fine inside a body being skipped, else unreadable.
        return self._cut_short(key, now, unseen, packet, seg, verdict) if unseen else verdict

    # -- TCP server packets -------------------------------------------------------------------

    def _tcp_reply(self, packet: Packet, seg: TcpSegment, ckey: FlowKey, now: float) -> Verdict:
        """A packet from the server of the client flow `ckey`."""
        known = self._decided.get(ckey)
        if known is not None:
            event, known.event = known.event, None
            if known.allowed and known.follows:
                # Queued while the flow was undecided: its verdict mark must not replace "follow".
                return Verdict(Action.FOLLOW, event=event)
            return Verdict(Action.ALLOW if known.allowed else Action.BLOCK, event=event)
        if self._unconfirmed and ckey in self._unconfirmed:
            # Queued before its hello's verdict (the kernel queues no server packet of such a flow):
            # one that acknowledges the judged bytes makes it final here, the rest pass.
            waiting = self._unconfirmed[ckey]
            pending = waiting.pending
            if pending is None or seg.flags & (SYN | RST) or not seg.flags & ACK or _before(seg.ack, pending.end):
                return ACCEPT
            self._settle_unconfirmed(ckey)
            return Verdict(Action.ALLOW)
        flow = self._flows.get(ckey)
        if flow is not None:
            flow.replies += 1
        if seg.flags & SYN:
            if flow is None or not seg.flags & ACK:
                return ACCEPT
            try:
                return self._synack(packet, seg, flow, now)
            except ParseError as exc:
                return self._fail(ckey, now, f"unreadable client bytes: {exc}", packet=packet, seg=seg, reply=True)
        if flow is not None and flow.pending is not None:
            return self._confirm(packet, seg, flow, flow.pending, now)
        if not seg.payload or seg.flags & RST:
            return ACCEPT
        if flow is not None and flow.reader is not None and flow.reader.waits_for_server:
            # A protocol in mid-exchange (a SOCKS negotiation, a proxy's answer before a tunnel's
            # first bytes): its reader goes on.
            flow.last = now
            return ACCEPT
        if h2.is_server_preface(seg.payload) and (flow is None or flow.stream is None
                                                  or h2.PREFACE.startswith(flow.stream.delivered())):
            # An HTTP/2 server's SETTINGS, sent as it accepts (h2c with prior knowledge), before the
            # client's preface: no server-first protocol; the client's requests name the host.
            if flow is not None:
                flow.last = now
            return ACCEPT
        # The server speaks first: the name will not come from the client. What was judged stands (a
        # tunnel's target: the server speaks first inside it), else the address decides.
        if flow is None:
            self._bases.pop(ckey, None)
            flow = _Flow(ckey, now)
        d: Decision | None = None
        source = ""
        if flow.names:
            host, source, port = flow.names[-1]
            d, source = self._decide_found(classify.Found(host, source, port), ckey, now)
            flow.names = flow.names[:-1]
        if d is None:
            d, source = self._decide_address(ckey, now)
        return self._finish(flow, now, d, source, packet=packet, seg=seg, reply=True)

    def _confirm(self, packet: Packet, seg: TcpSegment, flow: _Flow, pending: _Pending, now: float) -> Verdict:
        """A server segment of a flow allowed by client bytes not yet acknowledged: one that acknowledges
        them (its TCP took them, and every client segment that carried them was queued and compared)
        makes the allow final, with its event; others pass and the flow keeps waiting."""
        flow.last = now
        # (Its checksum is not checked: a server packet that crossed a veth or loopback reaches the
        # queue with the partial sum the sender's stack left for a NIC to finish. One that arrives
        # on loopback from an address that is not local was made on this host and is never queued,
        # see firewall.py.)
        if seg.flags & RST:
            # No evidence either way (Linux answers a bad segment in SYN-RECEIVED with a reset and
            # keeps the connection; mostly it has none). The judged bytes are forgotten, not where
            # they start: whatever the client sends next is read from the stream's start again, so
            # a server that took nothing reads nothing unjudged (and a table of flows no server will
            # ever acknowledge does not fill).
            del self._flows[flow.key]
            if flow.stream is not None:
                self._bases[flow.key] = (flow.stream.base, flow.server_isn)
                while len(self._bases) > MAX_DECIDED:
                    self._bases.popitem(last=False)
            return ACCEPT
        if not seg.flags & ACK or _before(seg.ack, pending.end):
            if flow.replies >= REPLY_WINDOW_PACKETS:
                return self._fail(flow.key, now, f"the server sent {flow.replies} packets and none acknowledged "
                                  f"the bytes that named {pending.decision.host}", limit="replies", packet=packet,
                                  seg=seg, reply=True)
            return ACCEPT
        flow.pending = None
        d: Decision | None = pending.decision
        source = pending.source
        if pending.policy is not self.policy:  # reloaded meanwhile: every name of the flow again
            d, source = self._judge_again(flow.key, (*flow.names, (pending.decision.host, source,
                                                                    pending.decision.port or flow.key.dport)), now)
        return self._finish(flow, now, d, source, packet, seg, pending.tls_next, reply=True)

    def _judge_again(self, key: FlowKey, names: tuple[tuple[str | None, str, int], ...],
                     now: float) -> tuple[Decision | None, str]:
        """The names a flow was judged by, judged under the policy in force: the first block, else the last."""
        d: Decision | None = None
        source = ""
        for host, was, port in names:
            if host is not None and was not in ("dns-table", "address"):
                d, source = self._decide_found(classify.Found(host, was, port), key, now)
            else:
                d, source = self._decide_address(key, now)
            if d is not None and not d.allowed:
                break
        return d, source

    def _dns_server_ack(self, packet: Packet, seg: TcpSegment, ckey: FlowKey, now: float) -> None:
        # A DNS server's segment is also that of a client flow to port 53 (queries over TCP) with a
        # pending allow: it may confirm it. The answer keeps its own verdict (a DNS answer is never
        # repeated with a flow's mark), so the decision is told with the client's next packet.
        flow = self._flows.get(ckey)
        if flow is None or flow.pending is None:
            return
        flow.replies += 1
        verdict = self._confirm(packet, seg, flow, flow.pending, now)
        remembered = self._decided.get(ckey)
        if remembered is not None and verdict.event is not None:
            remembered.event = verdict.event

    def _dns_synack(self, packet: Packet, seg: TcpSegment, ckey: FlowKey, now: float) -> None:
        # A DNS server's SYN-ACK is also that of the client flow netguard reads (a query over TCP).
        flow = self._flows.get(ckey)
        if flow is not None:
            self._synack(packet, seg, flow, now)

    def _synack(self, packet: Packet, seg: TcpSegment, flow: _Flow, now: float) -> Verdict:
        flow.last = now
        opts = tcp_options(seg.options) if seg.options else NO_OPTIONS
        if opts.multipath:
            # Its SYN went out without the option (_syn): a server that answers with Multipath TCP
            # anyway is not one whose reading netguard can follow.
            return self._fail(flow.key, now, "the server answers with Multipath TCP to a SYN without it",
                              evasion="multipath", packet=packet, seg=seg, reply=True)
        flow.server_isn = seg.seq
        flow.signs = opts.signed
        syns = flow.syns or {}
        # The SYN it answers: it acknowledges that SYN and as much of its data as it took.
        isn: int | None = (seg.ack - 1) & 0xFFFFFFFF
        if isn not in syns:
            isn = next((i for i, data in syns.items() if (seg.ack - 1 - i) & 0xFFFFFFFF <= len(data)), None)
        if isn is None:
            # A SYN netguard did not see: the server takes client bytes from its acknowledgment on.
            if flow.stream is None or not flow.stream.has_data():
                flow.stream, flow.reader, flow.pending = Stream(seg.ack, MAX_FLOW_BYTES), None, None
            return ACCEPT
        base = (isn + 1) & 0xFFFFFFFF
        if flow.stream is None or flow.stream.base != base:
            # It took another SYN than the one netguard reads from (the old connection is gone, and
            # an allow read from its bytes with it).
            flow.stream, flow.reader, flow.pending = Stream(base, MAX_FLOW_BYTES), None, None
        taken = syns[isn][:(seg.ack - base) & 0xFFFFFFFF]
        syns[isn] = b""
        if not taken:
            return ACCEPT
        result = flow.stream.add(base, taken)
        if result is not Result.OK:
            return self._fail(flow.key, now, "the SYN's bytes do not fit the stream", evasion="overlap",
                              packet=packet, seg=seg, reply=True)
        return self._read(flow, now, packet, seg, reply=True)

    # -- UDP (QUIC) --------------------------------------------------------------------------

    def _udp(self, dgram: UdpDatagram, key: FlowKey, now: float, *, cut: bool) -> Verdict:
        payload = dgram.payload
        known = self._decided.get(key)
        if known is not None and not known.allowed:
            return self._settled(self._repeat(known))
        if not self._quic_relevant(payload, key, known):
            # Not a QUIC long header (a short header runs to the end of its datagram and opens
            # nothing): a big datagram the firewall queues in case it is a GSO batch, or replay.
            return self._settled(self._repeat(known) if known is not None else ACCEPT)
        if cut:
            return self._settled(self._quic_unreadable(key, now, "a QUIC datagram longer than the queue copies"))
        qf = self._quic.get(key)
        reader = qf.reader if qf is not None else classify.QuicReader()
        try:
            read = reader.feed(payload)
        except UnsupportedVersion as exc:
            return self._settled(self._quic_unreadable(key, now, f"QUIC long header of {exc}"))
        except quic.CryptoConflict as exc:
            return self._settled(self._quic_fail(key, now, str(exc), evasion="overlap"))
        except ParseError as exc:
            return self._settled(self._quic_fail(key, now, f"unreadable QUIC Initial: {exc}"))
        if qf is not None:
            qf.last = now
            self._quic.move_to_end(key)
        if read is classify.NOTHING:
            return self._settled(self._repeat(known) if known is not None else ACCEPT)
        if qf is None:
            qf = self._track(key, reader, now)
        allowed: Event | None = None
        for cid, found in read.complete:
            d: Decision | None
            if found.name is None:
                d, source = self._decide_address(key, now)
            else:
                d, source = self._decide_found(found, key, now)
            if d is None:
                return self._settled(self._quic_fail(key, now, f"invalid name from {source}"))
            event = _event(now, key, d, source)
            if not d.allowed:
                discard = self._drop_quic(key, Action.DROP)
                self._remember(key, False, d.host, source, d.port)
                self.stats.blocked += 1
                return self._settled(Verdict(Action.BLOCK, event=event, held=discard))
            reader.allow(cid)
            self.stats.allowed += 1
            allowed = allowed or event
            if known is None:
                known = self._remember(key, True, d.host, source, d.port)
        released = self._release(qf, {cid for cid, _ in read.complete})
        if read.pending:
            size = len(payload)
            while qf.held_bytes + size + reader.size > MAX_QUIC_FLOW_BYTES and reader.forget_judged():
                pass
            if qf.held_bytes + size + reader.size > MAX_QUIC_FLOW_BYTES:
                return self._settled(self._quic_fail(key, now, f"no whole ClientHello in {MAX_QUIC_FLOW_BYTES} "
                                                     "bytes of QUIC datagrams", limit="bytes", released=released))
            if self._held_count >= MAX_HELD_DATAGRAMS:
                return self._settled(self._quic_fail(key, now, f"more than {MAX_HELD_DATAGRAMS} QUIC datagrams "
                                                     "held", limit="held", released=released))
            token = self._next_token = self._next_token + 1
            qf.held.append(_Held(token, size, set(read.pending)))
            qf.held_bytes += size
            self._held_count += 1
            return self._settled(Verdict(Action.HOLD, event=allowed, token=token, held=released))
        if allowed is not None:
            return self._settled(Verdict(Action.ALLOW, event=allowed, held=released))
        return self._settled(self._repeat(known) if known is not None else Verdict(Action.ACCEPT, held=released))

    def _quic_relevant(self, payload: bytes, key: FlowKey, known: _Remembered | None) -> bool:
        """What the firewall queues as QUIC: a long header of v1 or v2 (any port), of any version on
        QUIC's port, and any long header of a flow already judged by its QUIC Initials."""
        if not quic.is_long_header(payload):
            return False
        return known is not None or key.dport == QUIC_PORT or quic.version_of(payload) in quic.VERSIONS

    def _repeat(self, known: _Remembered) -> Verdict:
        # The flow's verdict again (packets queued behind the deciding one), with an event decided
        # without a packet (idle limit) if one waits to be told.
        event, known.event = known.event, None
        return Verdict(Action.ALLOW if known.allowed else Action.BLOCK, event=event)

    def _track(self, key: FlowKey, reader: classify.QuicReader, now: float) -> _QuicFlow:
        qf = self._quic[key] = _QuicFlow(reader, now)
        while len(self._quic) > MAX_QUIC_FLOWS:
            old = next(iter(self._quic))
            self._settle.extend(self._drop_quic(old, Action.DROP))
        return qf

    def _drop_quic(self, key: FlowKey, action: Action) -> tuple[tuple[int, Action], ...]:
        """Forget a QUIC flow; its held datagrams get `action`."""
        qf = self._quic.pop(key, None)
        if qf is None or not qf.held:
            return ()
        self._held_count -= len(qf.held)
        return tuple((h.token, action) for h in qf.held)

    def _release(self, qf: _QuicFlow, allowed: set[bytes]) -> tuple[tuple[int, Action], ...]:
        """The held datagrams that wait for nothing more once the connections `allowed` are judged."""
        if not allowed or not qf.held:
            return ()
        out: list[tuple[int, Action]] = []
        kept: list[_Held] = []
        for h in qf.held:
            h.waits -= allowed
            if h.waits:
                kept.append(h)
            else:
                # ALLOW, not ACCEPT: the first datagram of a flow, held, has the only conntrack entry
                # the kernel keeps (the next one's clashes with it), so it must carry the mark.
                out.append((h.token, Action.ALLOW))
                qf.held_bytes -= h.size
        qf.held = kept
        self._held_count -= len(out)
        return tuple(out)

    def _settled(self, verdict: Verdict) -> Verdict:
        """Add the datagrams given up meanwhile (evicted flows) to a verdict."""
        if not self._settle:
            return verdict
        settle, self._settle = self._settle, []
        return verdict._replace(held=(*settle, *verdict.held))

    def _quic_fail(self, key: FlowKey, now: float, why: str, *, limit: str | None = None, evasion: str | None = None,
                   released: tuple[tuple[int, Action], ...] = ()) -> Verdict:
        """The fail verdict for a QUIC flow; its held datagrams go with it (open) or are dropped."""
        verdict = self._fail(key, now, why, limit=limit, evasion=evasion)
        held = self._drop_quic(key, Action.ALLOW if verdict.action is Action.ALLOW else Action.DROP)
        return verdict._replace(held=(*released, *held))

    def _quic_unreadable(self, key: FlowKey, now: float, why: str) -> Verdict:
        """The fail verdict for one datagram netguard cannot read, the flow left as it was: DROP when
        closed, ACCEPT when open."""
        self.stats.fail_verdicts += 1
        allowed = self.policy.fail_mode == "open"
        rule = f"fail_mode = {self.policy.fail_mode}"
        event = Event(now, key, allowed, None, "none", None, None, rule, f"{why}; {self.policy.label} has {rule}")
        return Verdict(Action.ACCEPT if allowed else Action.DROP, event=event)

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
        if not (name[:1] in _LITERAL_FIRST or ":" in name):
            return self._decide_host(name, port, found.source, key, now)
        address = classify.literal_address(name)
        if address is None:
            return self._decide_host(name, port, found.source, key, now)
        # A name field that holds an address, in any form a proxy's resolver reads as one: judge the
        # address the client named, by the names DNS gave for it.
        d, source = self._decide_address(key, now, address, port)
        if source == "dns-table":
            return d, source
        if d.allowed:
            # Allowed only because the address is unknown: if the destination was learned for a
            # blocked registry, that wins.
            learned = self._decide_learned(key.dst, key.dport, now)
            if learned is not None and not learned.allowed and learned.registry is not None:
                return learned, "dns-table"
        return d, found.source

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
                tls_next: tuple[int, bytes] | None = None, *, reply: bool = False) -> Verdict:
        """The verdict for a flow decided by d; `tls_next`: where the records after its ClientHello
        begin (sequence number) and the handshake bytes left after it, from which a second hello after
        a HelloRetryRequest is read. `reply`: a server packet decided it."""
        if d is None:
            return self._fail(flow.key, now, f"invalid name from {source}", packet=packet, seg=seg, reply=reply)
        if d.allowed and not reply and self.awaits_server and isinstance(flow, _Flow) and flow.stream is not None:
            # Final once the server acknowledges the bytes read (_confirm); till then the flow stays
            # undecided in the kernel, so every client segment that could cover them is still compared.
            end = (flow.stream.base + len(flow.stream.prefix)) & 0xFFFFFFFF
            flow.pending = _Pending(end, d, source, tls_next, self.policy)
            if not self.kernel_confirms or source != "sni" or flow.names or flow.key.dport == 53:
                return ACCEPT
            # A ClientHello from the stream's start, no proxy before it: the server's answer is a TLS
            # record only once it has read the whole hello, and the kernel tests that (firewall.py).
            # (Not a tunnel: a proxy speaks between its request and the tunnel's bytes.)
            del self._flows[flow.key]
            return self._unconfirm(flow, now, d, source)
        if (d.allowed and not reply and self.kernel_confirms and source == "sni" and isinstance(flow, _Following)
                and flow.stream is not None):
            # The second ClientHello after a HelloRetryRequest: made final as the first was, at the
            # server's next TLS record (its ServerHello), its bytes compared until then.
            end = (flow.stream.base + len(flow.stream.prefix)) & 0xFFFFFFFF
            waiting = _Flow(flow.key, now, flow.stream, syn_seen=True, ttl=flow.ttl, server_isn=flow.server_isn,
                            ts_recent=flow.ts_recent, names=flow.names, retried=True)
            waiting.pending = _Pending(end, d, source, tls_next, self.policy)
            self._following.pop(flow.key, None)
            self._decided.pop(flow.key, None)  # the first hello's decision: this one replaces it
            return self._unconfirm(waiting, now, d, source)
        self._flows.pop(flow.key, None)
        if self._following:
            self._following.pop(flow.key, None)
        self._remember(flow.key, d.allowed, d.host, source, d.port, flow.names, tls_next, flow.ttl)
        event = _event(now, flow.key, d, source)
        if d.allowed:
            self.stats.allowed += 1
            return decided(Action.ALLOW, event)
        self.stats.blocked += 1
        return self._block(packet, seg, reply, event)

    def _unconfirm(self, flow: _Flow, now: float, d: Decision, source: str) -> Verdict:
        """A TLS flow allowed by a ClientHello (flow.pending), to be made final by the kernel."""
        self._unconfirmed[flow.key] = flow
        while len(self._unconfirmed) > MAX_UNCONFIRMED:
            self._settle_unconfirmed(next(iter(self._unconfirmed)))
        self.stats.allowed += 1
        return Verdict(Action.UNCONFIRMED, event=_event(now, flow.key, d, source))

    def _block(self, packet: Packet | None, seg: TcpSegment | None, reply: bool, event: Event) -> Verdict:
        if reply and packet is not None and seg is not None:
            # A server packet decided it: it reaches the client as a reset instead (the client may
            # only be reading, so no packet of its own would meet the kernel's REJECT).
            return Verdict(Action.BLOCK, payload=_reset_toward_client(packet, seg), event=event)
        return Verdict(Action.BLOCK, inject=self._alert(packet, seg), event=event)

    def _remember(self, key: FlowKey, allowed: bool, host: str | None, source: str, port: int | None,
                  more: tuple[tuple[str, str, int], ...] = (), tls_next: tuple[int, bytes] | None = None,
                  ttl: int | None = None, follows: bool = False) -> _Remembered:
        if tls_next is None:
            r = _Remembered(allowed, host, source, port or key.dport, None, more, None, b"", ttl, follows)
        else:
            r = _Remembered(allowed, host, source, port or key.dport, None, more, tls_next[0], tls_next[1], ttl,
                            follows)
        self._decided[key] = r
        self._decided.move_to_end(key)
        while len(self._decided) > MAX_DECIDED:
            self._decided.popitem(last=False)
        return r

    def _alert(self, packet: Packet | None, seg: TcpSegment | None) -> tuple[bytes, ...]:
        if self.policy.block_action != "tls-alert" or packet is None or seg is None or not seg.flags & ACK:
            return ()
        # From the server to the client, at the sequence numbers the client expects next.
        alert = tcp_packet(packet.version, packet.dst, packet.src, seg.dport, seg.sport, seg.ack,
                           seg.seq + len(seg.payload), ACK | 0x08, tls.access_denied_alert(), window=seg.window)
        return (alert,)

    def _fail(self, key: FlowKey, now: float, why: str, *, limit: str | None = None, evasion: str | None = None,
              dns_answer: bool = False, packet: Packet | None = None, seg: TcpSegment | None = None,
              reply: bool = False) -> Verdict:
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
        if self._unconfirmed:
            self._unconfirmed.pop(key, None)
        if dns_answer:
            return Verdict(Action.ACCEPT if allowed else Action.DROP, event=event)
        self._remember(key, allowed, None, "none", key.dport)
        if allowed:
            return Verdict(Action.ALLOW, event=event)
        self.stats.blocked += 1
        return self._block(packet, seg, reply, event)

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
                return decided(Action.ACCEPT, event)
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
    return event_of(now, key, d.allowed if allowed is None else allowed, d.host, source, d.registry,
                    d.registry_name, d.rule, d.reason, names)


def _before(a: int, b: int) -> bool:
    """Sequence-number order (RFC 1982): a comes before b."""
    return (a - b) & 0xFFFFFFFF >= 0x80000000


def _ip_length(raw: bytes) -> int:
    """A packet's length as its IP header gives it (the queue may have copied fewer bytes)."""
    if raw[0] >> 4 == 4:
        return int.from_bytes(raw[2:4], "big")
    return 40 + int.from_bytes(raw[4:6], "big")


def _reset_toward_client(packet: Packet, seg: TcpSegment) -> bytes:
    """A server packet turned into a reset (with its addresses, ports and numbers): its sequence
    number is the one the client expects next, so the client takes the reset."""
    return tcp_packet(packet.version, packet.src, packet.dst, seg.sport, seg.dport, seg.seq, seg.ack, RST | ACK,
                      b"", window=0, ttl=packet.ttl)


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


# An address literal starts with a digit (inet_aton forms) or holds ':' (IPv6): names that start with
# a letter skip the parse (an IPv6 literal starting with a letter holds ':').
_LITERAL_FIRST = frozenset("0123456789[")


def _what(l4: TcpSegment | UdpDatagram) -> str:
    if l4.sport == 53:
        return "DNS answer"
    return "client bytes" if isinstance(l4, TcpSegment) else "QUIC datagram"


def _tls_next(stream: Stream, reader: classify.Reader) -> tuple[int, bytes] | None:
    """After a ClientHello: the sequence number where its next record begins and the handshake bytes
    left after it (to read a second hello after a HelloRetryRequest)."""
    resume = reader.tls_resume
    return None if resume is None else (stream.seq_of(resume[0]), resume[1])


def _fit_lengths(data: bytes) -> bytes:
    """NFQUEUE copies at most ~4 KB of a packet: shrink the IP length field (and a UDP header's
    length) to the bytes at hand, so the headers parse and the payload is the part that was copied
    (the kernel keeps the packet). Returns `data` itself when nothing was cut."""
    if len(data) < 40 and not (data and data[0] >> 4 == 4 and len(data) >= 20):
        return data
    version = data[0] >> 4
    if version == 4:
        total = int.from_bytes(data[2:4], "big")
        if total > len(data):
            return _fit_udp(data[:2] + len(data).to_bytes(2, "big") + data[4:], (data[0] & 0x0F) * 4, data[9])
    elif version == 6:
        payload = int.from_bytes(data[4:6], "big")
        if payload and 40 + payload > len(data):
            return _fit_udp(data[:4] + (len(data) - 40).to_bytes(2, "big") + data[6:], 40, data[6])
    return data


def _fit_udp(data: bytes, offset: int, proto: int) -> bytes:
    # A UDP header right after the IP header (no IPv6 extension headers) gets the length at hand.
    if proto != PROTO_UDP or len(data) < offset + 8:
        return data
    return data[: offset + 4] + (len(data) - offset).to_bytes(2, "big") + data[offset + 6 :]


__all__ = ["PROTO_TCP", "PROTO_UDP", "Engine", "Stats"]
