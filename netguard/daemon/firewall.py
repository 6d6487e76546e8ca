"""The kernel rules that send netguard what can carry a name, and enforce what it decided.

Strategy: `build_rules` is pure: it returns the text that `iptables-restore --noflush` (and
`ip6tables-restore`) reads, for one address family. Netguard's rules live in its own chains, jumped
to from the built-in OUTPUT, INPUT and FORWARD chains by rules inserted at position 1; one restore
call per family installs all of it atomically. Removal reads `iptables-save` and deletes exactly the
jumps and chains that carry the netguard prefix, so stale rules of a crashed run go away too and
nobody else's rules are touched.

What is queued (DESIGN.md section 3): DNS answers (UDP and TCP from port 53, and from any other port
the first replies of a flow that begin with a DNS response header, see below), the SYN and the first
client bytes of every undecided outbound TCP flow (a byte window via connbytes: with GSO one write is one packet,
so a packet count would be wrong), and the UDP datagrams that may carry a QUIC Initial (below).
Once the daemon has decided, the verdict is saved in the connection mark and the rest of the flow
stays in the kernel.
Every verdict is given with NF_REPEAT and a packet mark, never a bare accept: a bare accept would
skip the rules after netguard's jump (Docker's FORWARD isolation, an operator's own OUTPUT rules),
so a queued packet would escape them.
A flow marked blocked is rejected by the kernel (TCP reset for TCP, ICMP port unreachable for UDP);
the kernel's own reset travels back through OUTPUT with the same connection mark, so a rule before
the REJECT lets resets out.

Data-less segments (skip_empty, needs the xt u32 match): a pure ACK or a FIN without data of an
undecided flow carries nothing to read and decides nothing (engine.core), so it leaves netguard's
rules in the kernel instead of costing a queue round trip (a new TLS connection then queues the SYN
and the ClientHello, not the handshake's ACK too). "No payload" is decided exactly from the headers:
u32 cannot compare two fields, so one rule per TCP data offset (5..15) tests IP length == IP header +
TCP header (IPv4 with a 20-byte header and no fragment bits; IPv6 with TCP as the first next header).
Packets with IP options or IPv6 extension headers stay queued. SYNs (ISN, TTL, TCP Fast Open data),
RSTs and segments with the URG flag (an urgent pointer changes which bytes the server's application
reads, even without data) are never skipped. One gate rule in NETGUARD-FLOW (no SYN, RST or URG, a
length a data-less segment can have) goes to NETGUARD-EMPTY, which holds the exact tests and then the
same queue rule; so a ClientHello passes one extra rule, not eleven. Skipping is a RETURN from the
goto'd chain (back to the hook's chain, like a RETURN from NETGUARD-FLOW), never ACCEPT, so the rules
after netguard's jump still apply. Only undecided flows reach these rules. Where the kernel has no u32,
`apply_preferred` falls back to the rules without them (every segment queued).

QUIC (quic_u32, needs xt u32 too): a client may open a QUIC connection to any UDP port, and
several over one socket (a new connection ID on a 5-tuple already allowed), so UDP is matched by
shape, not by port or flow state. Every original-direction UDP datagram of a flow not blocked, and
not yet given a verdict mark on this pass, goes to NETGUARD-UDP: a send of at least
GSO_GUARD_BYTES is queued whole (a UDP GSO batch: u32 sees only its first datagram, and the queue
hands netguard each datagram of it on its own); one whose payload starts with a long header (first
bit set) goes on to NETGUARD-QUIC, which queues it when the flow was already allowed (any version:
a new connection of any version must be read), when its version field is 1 or 0x6b3343cf (QUIC v1
and v2: any packet type, since an Initial may follow a 0-RTT or Handshake packet in the same
datagram), or when it goes to port 443 (another version there gets the fail verdict; elsewhere a
long header of an unknown version is not taken for QUIC, because other protocols look the same:
ESP-in-UDP with strongSwan's SPI range starts with 0xc). IPv6 packets with extension headers, whose
UDP payload u32 cannot find, are queued. What a datagram costs that is none of these: the jump, one
length test and one u32 test of its first byte; half of random payloads (first bit set) add the
NETGUARD-QUIC tests (a connection mark, two u32 version tests and a port). DNS queries do not match
(their bytes 1-4 would spell QUIC v1 only with 256 questions or more), nor do QUIC short-header
packets (first bit clear). Where the
kernel has no u32, every datagram to UDP 443 of a flow not blocked is queued, and QUIC on other
ports is not read.

Server packets (NETGUARD-REPLY, from NETGUARD-DNS on INPUT and FORWARD): the reply direction of an
undecided TCP flow, its first REPLY_WINDOW_PACKETS packets: the SYN-ACK (which SYN the server took,
its sequence numbers, whether it signs: what the engine needs to know which client segments the
server accepts), payload (a server that speaks first, SSH or SMTP, makes the engine judge the flow
by address) and data-less segments: an allow read from the client's bytes becomes final only when a
server segment acknowledges those bytes (engine.core._confirm; until then the flow stays undecided and
its client segments queued, so a decoy the server dropped cannot decide it), and that segment carries
the allowed mark. A server packet arriving on the loopback device from an address that is not local
was made on this host (a raw socket posing as the server) and is never queued. A verdict on a server
packet is saved in the connection like any other; a block turns the packet into a reset toward the
client (the packet mark says so: it passes, any other packet of a blocked flow that was already
queued is dropped).

Unconfirmed TLS flows (confirm_tls, a fifth connection mark, needs xt u32): a flow allowed by a
ClientHello read from its stream's start gets the connection mark "unconfirmed" instead of waiting
in the queue for the server's ACK. Its client data is still queued (NETGUARD-UNCONFIRMED: data-less
segments leave as for followed flows, the rest is queued with the packet mark "unconfirmed" within the
byte window, and past it closed mode's reset), so the daemon compares it with the judged bytes. Its
server packets are not queued: NETGUARD-CONFIRM (from NETGUARD-DNS) sets the allowed mark on the
first whose payload begins with a TLS handshake record (one u32 test: content type 22, version 3). A
TLS server sends that only once it has read the whole hello, so it acknowledges the judged bytes, as
the ACK the queue would have waited for (engine.core, kernel_confirms); the loopback guard above
applies there too. An ordinary TLS connection so queues its SYN, the SYN-ACK and its hello. A proxy's
tunnel, a flow judged by address and plain HTTP keep the queue's confirmation (a proxy speaks between
its request and the tunnel's bytes, so its answer proves nothing).

Followed flows (a fourth connection mark, "follow"): a plain HTTP connection is allowed request by
request, so its client data stays queued for its whole life (NETGUARD-FOLLOW: the data-less segments
leave in the kernel with the same u32 tests, the rest is queued with the packet mark "follow", which
tells the daemon why it was queued). A packet the daemon gave back with "follow" has a non-zero packet
mark and does not meet that rule again. A TLS flow is followed again when its server answers with a
HelloRetryRequest (RFC 8446 §4.1.3): NETGUARD-HRR (INPUT and FORWARD, after NETGUARD-DNS) matches
the HRR's fixed random with xt u32 at its fixed place in the first reply packets of an allowed flow
(connbytes bounds it to the first few, so a download never meets the u32 test) and sets the
connection mark to "follow", so the client's second ClientHello is queued and judged too. An
ordinary TLS connection costs nothing more: no packet of it is queued past the server segment that
acknowledged its first hello. (This
is not NETGUARD-REPLY above, which queues the server packets of undecided flows: the HRR rule sees
only flows already allowed, and queues nothing.) Segments with the URG flag of a followed flow are
queued even without data (an urgent pointer changes which bytes the server reads).

The byte window ends queueing; in fail_mode = "closed" an undecided flow past it is rejected in the
kernel (the engine decides long before: engine.core.MAX_FLOW_WIRE_BYTES; only data-less segments,
which stay in the kernel but count, can carry a flow there undecided). In "open" it passes.

DNS answers from other ports (dns_any_port, also needs xt u32): a resolver on a high port (dig -p,
a forwarder configured with a port, a local resolver on 5353) answers from there. Of every flow's
first DNS_OTHER_PORT_REPLIES reply packets (connbytes, reply direction), those whose payload begins
with the header of a response to a standard query are queued: QR set and opcode QUERY, exactly one
question (RFC 9619), tested by u32 on the UDP payload or after the TCP header's length prefix
(IPv6: only when UDP/TCP is the first next header). One rule in NETGUARD-DNS (connbytes first, then
the direction) goes to NETGUARD-DNS-ANY, which holds the two u32 tests: a packet of a flow past
that many replies (a download, an ACK stream) pays one failed connbytes test, the first replies of
a flow the u32 tests too; nothing but a DNS response is queued.

Only the filter table is used: CONNMARK, connbytes, NFQUEUE, u32, length, addrtype and REJECT all work
there.

Checking what is installed (`layout`, `differences`, `shape_differences`, pure): the rules as
`iptables-save` prints them differ in form from what build_rules wrote (`-p tcp` gains `-m tcp`,
options move), so the exact expectation is what the kernel printed right after netguard's own
restore, and build_rules' text gives the shape every installed set must have: the chains, each
rule's target (with the queue number and --queue-bypass), and the jumps at the head of each hook
chain, in order. The daemon's self-healing (daemon.watch) and `netguard status` compare with both.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from netguard.daemon import netns
from netguard.policy import follow_mark, passed_mark, unconfirmed_mark
from netguard.wire import tls

CHAIN_PREFIX = "NETGUARD"
CHAIN_FLOW = "NETGUARD-FLOW"  # verdict enforcement + queueing of new client flows (OUTPUT, FORWARD)
CHAIN_DNS = "NETGUARD-DNS"  # DNS answers and server packets to the queue (INPUT, FORWARD)
CHAIN_RAW = "NETGUARD-RAW"  # raw table: injected TLS alerts leave conntrack alone (OUTPUT)
CHAIN_EMPTY = "NETGUARD-EMPTY"  # data-less segments leave, the rest is queued (goto from NETGUARD-FLOW)
CHAIN_UDP = "NETGUARD-UDP"  # UDP that may carry a QUIC Initial to the queue (goto from NETGUARD-FLOW)
CHAIN_QUIC = "NETGUARD-QUIC"  # long headers: which ones are QUIC netguard must read (goto from NETGUARD-UDP)
CHAIN_REPLY = "NETGUARD-REPLY"  # server packets of undecided TCP flows (goto from NETGUARD-DNS)
CHAIN_DNS_ANY = "NETGUARD-DNS-ANY"  # DNS answers from other ports, by their header (goto from NETGUARD-DNS)
CHAIN_FOLLOW = "NETGUARD-FOLLOW"  # client data of followed flows to the queue (goto from NETGUARD-FLOW)
CHAIN_HRR = "NETGUARD-HRR"  # a HelloRetryRequest makes an allowed TLS flow followed (INPUT, FORWARD)
CHAIN_UNCONFIRMED = "NETGUARD-UNCONFIRMED"  # client data of unconfirmed TLS flows (goto from NETGUARD-FLOW)
CHAIN_CONFIRM = "NETGUARD-CONFIRM"  # a server's TLS record makes an unconfirmed flow allowed (goto from NETGUARD-DNS)
CHAINS = (CHAIN_FLOW, CHAIN_DNS)
HOOKS: dict[str, tuple[str, ...]] = {"OUTPUT": (CHAIN_FLOW,), "INPUT": (CHAIN_DNS, CHAIN_HRR),
                                     "FORWARD": (CHAIN_DNS, CHAIN_HRR, CHAIN_FLOW)}

# The client bytes (headers included, as connbytes counts them) queued while a TCP flow is
# undecided. It must exceed the largest single write a client can make before the name is known:
# with GSO the kernel hands OUTPUT one skb of up to 64 KiB, which connbytes counts as one packet.
# The engine decides long before (its own byte limit is far smaller).
TCP_WINDOW_BYTES = 131072
# QUIC's port: long headers of any version are queued there (the fail verdict for versions netguard
# cannot read), and all of UDP 443 where the kernel lacks u32.
QUIC_PORT = 443
# QUIC versions netguard reads (wire.quic): v1 (RFC 9000) and v2 (RFC 9369).
QUIC_VERSIONS = (0x00000001, 0x6B3343CF)
# IP length from which a UDP send is queued whole: it may be a GSO batch hiding an Initial behind
# another datagram. A server accepts an Initial only in a datagram of 1200 bytes or more (RFC 9000
# §14.1), and every datagram of a batch but the last has the same size, so such a batch carries at
# least 2 x 1200 bytes of UDP payload. Single datagrams this long are rare (IP fragments them).
GSO_GUARD_BYTES = {4: 20 + 8 + 2 * 1200, 6: 40 + 8 + 2 * 1200}
# Every TCP data offset (header length in 32-bit words: 5 without options, 15 at most): one
# data-less-segment rule each, since u32 cannot compare the IP length with the TCP header length.
TCP_DATA_OFFSETS = range(5, 16)
# Server packets (all of them, ACKs included, as connbytes counts) queued while a TCP flow is
# undecided: the SYN-ACK, and the first payload a server that speaks first sends, or the few answers
# of a proxy's negotiation. Past it the flow is still read from the client's side.
REPLY_WINDOW_PACKETS = 32
# The one test that sends a segment to NETGUARD-EMPTY: a length some data-less segment can have
# (IPv4 with a 20-byte header: total 40..80; IPv6: payload 20..60). A ClientHello fails it in one
# rule instead of walking the eleven exact ones.
EMPTY_GATE = {4: "0&0xFF00FFFF=0x45000028:0x45000050", 6: "4>>16=20:60"}
# Reply packets per flow from ports other than 53 tested for a DNS response header: a resolver that
# reuses one socket sends several answers on it, but past this the test would run on every packet of
# bulk UDP (QUIC downloads) and every TCP ACK stream; later answers of such a flow are not read.
DNS_OTHER_PORT_REPLIES = 32
# A response to a standard query: the 32 bits at its flags field, QR=1 and opcode 0 (mask 0xF8 of
# the first flags byte), any other flag or rcode, QDCOUNT 1. UDP: the payload's bytes 2..5; TCP:
# 2 bytes further, after the length prefix (the header's data offset found with u32's @).
DNS_RESPONSE_MASK, DNS_RESPONSE_VALUE = 0xF800FFFF, 0x80000001
DNS_RESPONSE_WORD = f"0x{DNS_RESPONSE_MASK:X}=0x{DNS_RESPONSE_VALUE:X}"
DNS_RESPONSE_SHAPE: dict[tuple[str, int], str] = {
    ("udp", 4): f"0>>22&0x3C@10&{DNS_RESPONSE_WORD}",
    ("udp", 6): f"6>>24=17&&50&{DNS_RESPONSE_WORD}",
    ("tcp", 4): f"0>>22&0x3C@12>>26&0x3C@4&{DNS_RESPONSE_WORD}",
    ("tcp", 6): f"6>>24=6&&52>>26&0x3C@44&{DNS_RESPONSE_WORD}",
}
# Reply-direction packets of an allowed flow in which a HelloRetryRequest is looked for: the SYN-ACK,
# a bare ACK of the hello, SOCKS5's method, authentication and request answers or a CONNECT's 200
# before a tunnel's hello, then the HRR, and a retransmission.
HRR_REPLY_PACKETS = 8
# How u32 reaches the TCP payload: "@" adds the value so far (IPv4: its header length from IHL, then the
# TCP data offset; IPv6: the data offset) to the position, and the number after it is read from there.
# So the payload's byte N is at "<jump>N" for IPv4 and "<jump>40+N" (one number) for IPv6.
PAYLOAD_JUMP = {4: ("0>>22&0x3C@12>>26&0x3C@", 0), 6: ("52>>26&0x3C@", 40)}

Backend = Literal["nft", "iptables-nft", "iptables-legacy"]
# Best first, as doctor ranks them: the native nft set where the kernel has the nft `queue`
# statement (daemon.nft), else xt NFQUEUE through iptables-nft, else through iptables-legacy.
BACKENDS: tuple[Backend, ...] = ("nft", "iptables-nft", "iptables-legacy")
IPTABLES_BACKENDS: tuple[Backend, ...] = ("iptables-nft", "iptables-legacy")
Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)


@dataclass(frozen=True)
class Marks:
    """Connection-mark bits netguard owns (Docker, kube-proxy and Calico use other bits)."""

    mask: int = 0x00700000
    allowed: int = 0x00100000
    blocked: int = 0x00200000

    def __post_init__(self) -> None:
        for name in ("allowed", "blocked"):
            value = getattr(self, name)
            if value == 0 or value & ~self.mask:
                raise ValueError(f"mark {name}=0x{value:x} must be non-zero and inside mask 0x{self.mask:x}")
        if self.allowed == self.blocked:
            raise ValueError("the allowed and blocked marks must differ")

    @property
    def passed(self) -> int:
        """The packet mark for "seen, let this one packet go on" (policy.passed_mark)."""
        value = passed_mark(self.mask, self.allowed, self.blocked)
        if value is None:
            raise ValueError(f"mark mask 0x{self.mask:x} leaves no value besides allowed and blocked")
        return value

    @property
    def follow(self) -> int:
        """The connection mark for "allowed so far, keep queueing the client's data" (policy.follow_mark)."""
        value = follow_mark(self.mask, self.allowed, self.blocked)
        if value is None:
            raise ValueError(f"mark mask 0x{self.mask:x} leaves no fourth value for followed connections")
        return value

    @property
    def unconfirmed(self) -> int | None:
        """The connection mark for "allowed by its ClientHello until the server's first TLS record"
        (policy.unconfirmed_mark); None where the mask has no fifth value."""
        return unconfirmed_mark(self.mask, self.allowed, self.blocked)


@dataclass(frozen=True)
class Options:
    """What the rules depend on."""

    queue_num: int = 7413
    marks: Marks = Marks()
    fail_open: bool = False  # --queue-bypass: traffic flows while no daemon listens
    forward: bool = True  # also judge traffic routed through this host (containers behind a bridge)
    # block_action = "tls-alert": the injected alerts (marked "passed") skip connection tracking.
    # Toward a masqueraded container an alert matches no direction of the NATed connection's entry,
    # and the new entry it would make clashes with that one and is dropped.
    untracked_alerts: bool = False
    # Data-less TCP segments of undecided and followed flows stay in the kernel (needs the xt u32 match).
    skip_empty: bool = True
    # QUIC Initials are matched by shape on any UDP port (needs the xt u32 match); else UDP 443 whole.
    quic_u32: bool = True
    # DNS answers from ports other than 53 are queued by their header (needs the xt u32 match).
    dns_any_port: bool = True
    # A HelloRetryRequest makes an allowed TLS flow followed, to judge the second ClientHello (xt u32).
    reread_hrr: bool = True
    # A TLS flow allowed by its ClientHello is made final by the server's first TLS record in the
    # kernel, not in the queue (xt u32, and a fifth mark value).
    confirm_tls: bool = True
    # The address families that get rules: (4,) on a kernel that refuses the IPv6 set.
    families: tuple[Family, ...] = FAMILIES

    @property
    def confirms_tls(self) -> bool:
        """Whether the rules make TLS flows final in the kernel (confirm_tls, where the marks allow)."""
        return self.confirm_tls and self.marks.unconfirmed is not None


def with_u32(opts: Options, u32: bool) -> Options:
    """The options with every rule that needs the xt u32 match (or nft's payload expressions) on or off."""
    return replace(opts, skip_empty=u32, quic_u32=u32, dns_any_port=u32, reread_hrr=u32, confirm_tls=u32)


def _m(value: int, mask: int) -> str:
    return f"0x{value:x}/0x{mask:x}"


def _queue(opts: Options) -> list[str]:
    target = ["-j", "NFQUEUE", "--queue-num", str(opts.queue_num)]
    return [*target, "--queue-bypass"] if opts.fail_open else target


def empty_segment_tests(family: Family) -> list[str]:
    """The u32 expressions that together match exactly the TCP segments without payload (one per
    TCP data offset): IP length == IP header + TCP header. IPv4: version 4 with a 20-byte header
    (first byte 0x45, the TOS byte masked out), total length 20 + 4 * offset, no fragment bits, the
    offset nibble at byte 32. IPv6: payload length 4 * offset with TCP (6) as the next header, the
    offset nibble at byte 52."""
    if family == 4:
        return [f"0&0xFF00FFFF=0x{0x45000000 + 20 + 4 * d:08X}&&4&0x3FFF=0&&32>>28={d}" for d in TCP_DATA_OFFSETS]
    return [f"4&0xFFFFFF00=0x{(4 * d) << 16 | 6 << 8:08X}&&52>>28={d}" for d in TCP_DATA_OFFSETS]


def hrr_tests(family: Family) -> str:
    """The u32 expression that matches a TCP segment whose payload begins with a HelloRetryRequest:
    a handshake record, and the HRR random in eight words at payload offset 11 (IPv6: TCP the first
    next header). At most 11 tests of 7 locations each: within xt_u32's limits."""
    jump, first = PAYLOAD_JUMP[family]
    words = [tls.HRR_RANDOM[i:i + 4] for i in range(0, 32, 4)]
    tests = [f"{jump}{first}>>24=0x{tls.CONTENT_HANDSHAKE:X}"]
    tests += [f"{jump}{first + tls.HRR_RANDOM_OFFSET + 4 * i}=0x{w.hex().upper()}" for i, w in enumerate(words)]
    if family == 6:
        tests.insert(0, "4>>8&0xFF=6")  # TCP is the first next header
    return "&&".join(tests)


def tls_record_test(family: Family) -> str:
    """The u32 expression that matches a TCP segment whose payload begins with a TLS handshake record
    (content type 22, major version 3): a server's ServerHello or HelloRetryRequest. A data-less
    segment has no bytes there, and u32 fails a read past the packet's end. IPv6: TCP the first
    next header."""
    jump, first = PAYLOAD_JUMP[family]
    test = f"{jump}{first}>>16=0x{tls.CONTENT_HANDSHAKE:02X}03"
    return test if family == 4 else f"4>>8&0xFF=6&&{test}"


def quic_tests(family: Family) -> dict[str, str]:
    """The u32 expressions of the QUIC rules: "long" (the UDP payload starts with a long header),
    "v<N>" (its version field is N), and for IPv6 "udp" (UDP is the first next header, so the payload
    is at byte 48). IPv4: the payload starts IHL * 4 + 8 bytes in (`0>>22&0x3C@8`)."""
    if family == 4:
        tests = {"long": "0>>22&0x3C@8>>24&0x80=0x80"}
        tests.update({f"v{v}": f"0>>22&0x3C@9=0x{v:X}" for v in QUIC_VERSIONS})
        return tests
    tests = {"udp": "6>>24=0x11", "long": "6>>24=0x11&&48>>24&0x80=0x80"}
    tests.update({f"v{v}": f"49=0x{v:X}" for v in QUIC_VERSIONS})
    return tests


def _udp_rules(family: Family, opts: Options, queue: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """The rules of NETGUARD-UDP and NETGUARD-QUIC (empty without u32)."""
    if not opts.quic_u32:
        return [["-p", "udp", "--dport", str(QUIC_PORT), *queue]], []
    tests = quic_tests(family)
    udp: list[list[str]] = []
    if family == 6:
        udp.append(["-m", "u32", "!", "--u32", tests["udp"], *queue])
    udp += [
        ["-m", "length", "--length", f"{GSO_GUARD_BYTES[family]}:65535", *queue],
        ["-m", "u32", "--u32", tests["long"], "-g", CHAIN_QUIC],
    ]
    quic = [
        ["-m", "connmark", "!", "--mark", _m(0, opts.marks.mask), *queue],
        *(["-m", "u32", "--u32", tests[f"v{v}"], *queue] for v in QUIC_VERSIONS),
        ["-p", "udp", "--dport", str(QUIC_PORT), *queue],
    ]
    return udp, quic


def build_rules(family: Family, opts: Options) -> str:
    """The iptables-restore text that installs netguard's chains and jumps (filter table; raw too
    with untracked_alerts)."""
    mk = opts.marks
    undecided = ["-m", "connmark", "--mark", _m(0, mk.mask)]
    blocked = ["-m", "connmark", "--mark", _m(mk.blocked, mk.mask)]
    confirm_tls = opts.confirms_tls
    unconf = mk.unconfirmed or 0
    unreach = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
    original = ["-m", "conntrack", "--ctdir", "ORIGINAL"]
    unconfirmed_jump = [["-p", "tcp", "-m", "connmark", "--mark", _m(unconf, mk.mask), *original, "-m", "mark",
                         "--mark", _m(0, mk.mask), "-g", CHAIN_UNCONFIRMED]] if confirm_tls else []
    # The daemon gives every verdict with repeat(), so the packet runs through the rest of the
    # chain (and the rules of others after netguard's jump) instead of skipping them: "passed"
    # returns at once; a verdict mark becomes the connection's.
    passed = ["-m", "mark", "--mark", _m(mk.passed, mk.mask), "-j", "RETURN"]
    flow: list[list[str]] = [
        passed,
        ["-m", "mark", "!", "--mark", _m(0, mk.mask),
         "-j", "CONNMARK", "--save-mark", "--nfmask", hex(mk.mask), "--ctmask", hex(mk.mask)],
        ["-p", "tcp", "--tcp-flags", "RST", "RST", *blocked, "-j", "RETURN"],
        ["-p", "tcp", *blocked, "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-p", "udp", *blocked, "-j", "REJECT", "--reject-with", unreach],
        [*blocked, "-j", "DROP"],
        # A followed flow's client packets, fresh ones only (packet mark 0: a packet the daemon gave
        # back carries its verdict's mark and goes on).
        ["-p", "tcp", *original, "-m", "mark", "--mark", _m(0, mk.mask), "-m", "connmark", "--mark",
         _m(mk.follow, mk.mask), "-g", CHAIN_FOLLOW],
        *unconfirmed_jump,
        # UDP of flows not blocked, not yet marked on this pass (a verdict's repeat must not queue it
        # again): NETGUARD-UDP queues what may carry a QUIC Initial, even on an allowed flow.
        ["-p", "udp", "-m", "mark", "--mark", _m(0, mk.mask), *original, "-g", CHAIN_UDP],
        ["-m", "connmark", "!", "--mark", _m(0, mk.mask), "-j", "RETURN"],
    ]
    data_less: list[list[str]] = []
    if opts.skip_empty:
        # Data-less segments leave, but not those with URG: an urgent pointer may name a byte to come.
        data_less = [["-p", "tcp", "--tcp-flags", "URG", "NONE", "-m", "u32", "--u32", test, "-j", "RETURN"]
                     for test in empty_segment_tests(family)]
    follow = [*data_less, ["-j", "MARK", "--set-xmark", _m(mk.follow, mk.mask)], _queue(opts)]
    unconfirmed: list[list[str]] = []
    confirm: list[list[str]] = []
    if confirm_tls:
        # Client data of a TLS flow allowed by its hello, until the server's first TLS record: queued
        # (marked so, the daemon compares it with the judged bytes) within the byte window, like an
        # undecided flow's. Data-less segments leave, as for followed flows.
        unconfirmed = [*data_less,
                       ["-m", "connbytes", "--connbytes", f"0:{TCP_WINDOW_BYTES}", "--connbytes-dir", "original",
                        "--connbytes-mode", "bytes", "-j", "MARK", "--set-xmark", _m(unconf, mk.mask)],
                       ["-m", "mark", "--mark", _m(unconf, mk.mask), *_queue(opts)]]
        if not opts.fail_open:
            unconfirmed.append(["-p", "tcp", "!", "--tcp-flags", "RST", "RST", "-j", "REJECT", "--reject-with",
                                "tcp-reset"])
        # The server's first TLS record: it has read the whole hello (engine.core, kernel_confirms).
        # Not one made on this host posing as the server (the loopback guard of NETGUARD-REPLY).
        confirm = [["-i", "lo", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "RETURN"],
                   ["-m", "u32", "--u32", tls_record_test(family), "-j", "CONNMARK", "--set-xmark",
                    _m(mk.allowed, mk.mask)]]
    hrr: list[list[str]] = []
    if opts.reread_hrr:
        hrr = [["-p", "tcp", "-m", "conntrack", "--ctdir", "REPLY", "-m", "connmark", "--mark",
                _m(mk.allowed, mk.mask), "-m", "connbytes", "--connbytes", f"0:{HRR_REPLY_PACKETS}",
                "--connbytes-dir", "reply", "--connbytes-mode", "packets", "-m", "u32", "--u32",
                hrr_tests(family), "-j", "CONNMARK", "--set-xmark", _m(mk.follow, mk.mask)]]
    queue_tcp = ["-p", "tcp", *original, *undecided, "-m", "connbytes", "--connbytes", f"0:{TCP_WINDOW_BYTES}",
                 "--connbytes-dir", "original", "--connbytes-mode", "bytes", *_queue(opts)]
    # Past the window, closed mode: the fail verdict in the kernel (resets pass, as ever).
    past = [] if opts.fail_open else [
        ["-p", "tcp", "!", "--tcp-flags", "RST", "RST", *original, *undecided, "-m", "connbytes", "--connbytes",
         str(TCP_WINDOW_BYTES + 1), "--connbytes-dir", "original", "--connbytes-mode", "bytes",
         "-j", "REJECT", "--reject-with", "tcp-reset"]]
    empty: list[list[str]] = []
    if opts.skip_empty:
        # Undecided from here on. A goto: RETURN in NETGUARD-EMPTY leaves netguard's rules (as a
        # RETURN here would), and what is not data-less meets the same queue rule there.
        flow.append(["-p", "tcp", "--tcp-flags", "SYN,RST,URG", "NONE", "-m", "u32", "--u32", EMPTY_GATE[family],
                     "-g", CHAIN_EMPTY])
        empty = [["-m", "u32", "--u32", test, "-j", "RETURN"] for test in empty_segment_tests(family)]
        empty += [queue_tcp, *past]
    flow += [queue_tcp, *past]
    udp, quic = _udp_rules(family, opts, _queue(opts))
    # Answers only: the reply direction of a flow to port 53. A client flow *from* port 53 (a root
    # process may bind it) is original direction and must meet the flow rules instead.
    reply = ["-m", "conntrack", "--ctdir", "REPLY"]
    marked_blocked = ["-m", "mark", "--mark", _m(mk.blocked, mk.mask)]
    dns = [
        passed,
        # A verdict the daemon gave a server packet: kept in the connection; of a blocked flow only
        # the reset netguard made of it goes on.
        ["-m", "mark", "!", "--mark", _m(0, mk.mask),
         "-j", "CONNMARK", "--save-mark", "--nfmask", hex(mk.mask), "--ctmask", hex(mk.mask)],
        ["-p", "tcp", "--tcp-flags", "RST", "RST", *marked_blocked, "-j", "RETURN"],
        ["-p", "tcp", *marked_blocked, "-j", "DROP"],
        *([["-p", "tcp", "-m", "connmark", "--mark", _m(unconf, mk.mask), *reply, "-g", CHAIN_CONFIRM]]
          if confirm else []),
        ["-p", "udp", "--sport", "53", *reply, *_queue(opts)],
        ["-p", "tcp", "--sport", "53", *reply, *_queue(opts)],
        ["-p", "tcp", *reply, *undecided, "-m", "connbytes", "--connbytes", f"0:{REPLY_WINDOW_PACKETS}",
         "--connbytes-dir", "reply", "--connbytes-mode", "packets", "-g", CHAIN_REPLY],
    ]
    # Every server segment, data-less ones too: the ACK that covers the bytes an allow was read from
    # is what makes that allow final (engine.core._confirm), and a server that never sends payload
    # (a client that only uploads) sends nothing else.
    server: list[list[str]] = [
        ["-i", "lo", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "RETURN"],
        _queue(opts),
    ]
    dns_any: list[list[str]] = []
    if opts.dns_any_port:
        # Port 53 went to the queue above; this sees every other port. A goto: what the tests there
        # do not queue leaves netguard's rules, as it would at the end of this chain.
        dns.append(["-m", "connbytes", "--connbytes", f"0:{DNS_OTHER_PORT_REPLIES}", "--connbytes-dir", "reply",
                    "--connbytes-mode", "packets", *reply, "-g", CHAIN_DNS_ANY])
        dns_any = [["-p", proto, "-m", "u32", "--u32", DNS_RESPONSE_SHAPE[(proto, family)], *_queue(opts)]
                   for proto in ("udp", "tcp")]
    lines = ["*filter", f":{CHAIN_FLOW} - [0:0]", f":{CHAIN_DNS} - [0:0]", f":{CHAIN_UDP} - [0:0]",
             f":{CHAIN_REPLY} - [0:0]", f":{CHAIN_FOLLOW} - [0:0]"]
    lines += [f":{CHAIN_EMPTY} - [0:0]"] if empty else []
    lines += [f":{CHAIN_QUIC} - [0:0]"] if quic else []
    lines += [f":{CHAIN_DNS_ANY} - [0:0]"] if dns_any else []
    lines += [f":{CHAIN_HRR} - [0:0]"] if hrr else []
    lines += [f":{CHAIN_UNCONFIRMED} - [0:0]", f":{CHAIN_CONFIRM} - [0:0]"] if confirm else []
    lines += [" ".join(["-A", CHAIN_FLOW, *r]) for r in flow]
    lines += [" ".join(["-A", CHAIN_EMPTY, *r]) for r in empty]
    lines += [" ".join(["-A", CHAIN_FOLLOW, *r]) for r in follow]
    lines += [" ".join(["-A", CHAIN_UDP, *r]) for r in udp]
    lines += [" ".join(["-A", CHAIN_QUIC, *r]) for r in quic]
    lines += [" ".join(["-A", CHAIN_DNS, *r]) for r in dns]
    lines += [" ".join(["-A", CHAIN_REPLY, *r]) for r in server]
    lines += [" ".join(["-A", CHAIN_DNS_ANY, *r]) for r in dns_any]
    lines += [" ".join(["-A", CHAIN_HRR, *r]) for r in hrr]
    lines += [" ".join(["-A", CHAIN_UNCONFIRMED, *r]) for r in unconfirmed]
    lines += [" ".join(["-A", CHAIN_CONFIRM, *r]) for r in confirm]
    for hook, chains in HOOKS.items():
        if hook == "FORWARD" and not opts.forward:
            continue
        # Inserted in reverse so that the first chain listed runs first.
        lines += [f"-I {hook} 1 -j {chain}" for chain in reversed(chains) if chain != CHAIN_HRR or hrr]
    lines.append("COMMIT")
    if opts.untracked_alerts:
        lines += ["*raw", f":{CHAIN_RAW} - [0:0]",
                  f"-A {CHAIN_RAW} -m mark --mark {_m(mk.passed, mk.mask)} -j CT --notrack",
                  f"-I OUTPUT 1 -j {CHAIN_RAW}", "COMMIT"]
    return "\n".join(lines) + "\n"


def _ours(saved: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """From `iptables-save` output: per table, the deletions of jumps into netguard chains, and the
    netguard chains themselves."""
    table = ""
    jumps: dict[str, list[str]] = {}
    chains: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":" + CHAIN_PREFIX):
            chains.setdefault(table, []).append(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = line.split()
            if not parts[1].startswith(CHAIN_PREFIX) and _jumps_to_ours(parts):
                jumps.setdefault(table, []).append("-D " + line[3:])
    return jumps, chains


def build_removal(saved: str) -> str | None:
    """From `iptables-save` output, the restore text that deletes every netguard jump and chain
    (None when there is nothing to remove)."""
    return build_replacement(saved, None)


def build_replacement(saved: str, new: str | None) -> str | None:
    """One restore text that takes out the netguard rules in `saved` and puts in `new` (the output
    of build_rules; None: put nothing in), one COMMIT per table. Each table changes in a single
    transaction, so a restart or a reload never leaves a moment without rules. (None when there is
    nothing to do.)"""
    jumps, chains = _ours(saved)
    added: dict[str, list[str]] = {}
    table = ""
    for line in (new or "").splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line != "COMMIT":
            added.setdefault(table, []).append(line)
    out: list[str] = []
    for t in sorted(set(jumps) | set(chains) | set(added)):
        declared = [line for line in added.get(t, []) if line.startswith(":")]
        kept = {line[1:].split()[0] for line in declared}
        gone = [c for c in chains.get(t, []) if c not in kept]
        # Declaring a chain that exists flushes it; old jumps go before new ones come in.
        out += [f"*{t}", *declared, *jumps.get(t, []), *(f"-F {c}" for c in gone), *(f"-X {c}" for c in gone)]
        out += [line for line in added.get(t, []) if not line.startswith(":")]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else None


def _jumps_to_ours(parts: Sequence[str]) -> bool:
    return any(w in ("-j", "-g") and parts[i + 1].startswith(CHAIN_PREFIX) for i, w in enumerate(parts[:-1]))


# -- what is installed, compared with what should be ------------------------------------------------


Key = tuple[str, str]  # (table, chain)


@dataclass(frozen=True)
class Layout:
    """Netguard's part of one family's tables: the tables present, each netguard chain's rules in
    order (the text after `-A CHAIN `), and for every other chain the jumps into netguard chains
    with their rule number (from 1)."""

    tables: frozenset[str] = frozenset()
    chains: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)
    jumps: Mapping[Key, tuple[tuple[int, str], ...]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The layout as text lines (for the status document); `parse_lines` reads them back."""
        out = [f"*{t}" for t in sorted(self.tables)]
        out += [f":{t} {c}" for t, c in self.chains]
        out += [f"-A {t} {c} {r}" for (t, c), rules in self.chains.items() for r in rules]
        out += [f"@{t} {c} {n} {r}" for (t, c), jumps in self.jumps.items() for n, r in jumps]
        return out

    @staticmethod
    def parse_lines(lines: Sequence[str]) -> Layout:
        tables: set[str] = set()
        chains: dict[Key, list[str]] = {}
        jumps: dict[Key, list[tuple[int, str]]] = {}
        for line in lines:
            if line.startswith("*"):
                tables.add(line[1:])
            elif line.startswith(":"):
                t, c = line[1:].split(" ", 1)
                chains.setdefault((t, c), [])
            elif line.startswith("-A "):
                t, c, r = line[3:].split(" ", 2)
                chains.setdefault((t, c), []).append(r)
            elif line.startswith("@"):
                t, c, n, r = line[1:].split(" ", 3)
                jumps.setdefault((t, c), []).append((int(n), r))
        return Layout(frozenset(tables), {k: tuple(v) for k, v in chains.items()},
                      {k: tuple(v) for k, v in jumps.items()})


def layout(saved: str, tables: Sequence[str] | None = None) -> Layout:
    """Netguard's part of `iptables-save` output (only `tables`, when given)."""
    table = ""
    present: set[str] = set()
    chains: dict[Key, list[str]] = {}
    jumps: dict[Key, list[tuple[int, str]]] = {}
    position: dict[Key, int] = {}
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            if tables is None or table in tables:
                present.add(table)
        elif table not in present:
            continue
        elif line.startswith(":" + CHAIN_PREFIX):
            chains.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            key = (table, chain)
            position[key] = position.get(key, 0) + 1
            if chain.startswith(CHAIN_PREFIX):
                chains.setdefault(key, []).append(rule)
            elif _jumps_to_ours(line.split()):
                jumps.setdefault(key, []).append((position[key], rule))
    return Layout(frozenset(present), {k: tuple(v) for k, v in chains.items()},
                  {k: tuple(v) for k, v in jumps.items()})


def tables_of(rules: str) -> tuple[str, ...]:
    """The tables a build_rules text uses."""
    return tuple(line[1:] for line in rules.splitlines() if line.startswith("*"))


@dataclass(frozen=True)
class Shape:
    """What every installed set must look like, from build_rules' text: per netguard chain the
    target of each rule in order (with the queue number and whether it bypasses), and per hook
    chain the netguard chains its first rules jump to, in order."""

    chains: Mapping[Key, tuple[str, ...]]
    heads: Mapping[Key, tuple[str, ...]]


def _target(rule: str) -> str:
    """A rule's target, in the words that matter for reaching the queue: `NFQUEUE 7413 bypass`,
    `goto NETGUARD-EMPTY`, `RETURN`... (the rest of its options iptables-save prints its own way)."""
    try:
        words = shlex.split(rule)
    except ValueError:
        return "?"
    at = max((i for i, w in enumerate(words) if w in ("-j", "-g")), default=-1)
    if at < 0 or at + 1 >= len(words):
        return "none"
    name = words[at + 1]
    if words[at] == "-g":
        return f"goto {name}"
    if name == "NFQUEUE":
        num = words[words.index("--queue-num") + 1] if "--queue-num" in words[at:-1] else "0"
        return f"NFQUEUE {num}" + (" bypass" if "--queue-bypass" in words[at:] else "")
    return name


def shape(rules: str) -> Shape:
    """The shape of a build_rules text. Its `-I HOOK 1 -j CHAIN` lines insert in reverse, so the
    chain listed last runs first."""
    table = ""
    chains: dict[Key, list[str]] = {}
    heads: dict[Key, list[str]] = {}
    for line in rules.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            chains.setdefault((table, chain), []).append(_target(rule))
        elif line.startswith("-I "):
            words = line.split()
            heads.setdefault((table, words[1]), []).insert(0, words[-1])
    return Shape({k: tuple(v) for k, v in chains.items()}, {k: tuple(v) for k, v in heads.items()})


def _jump_target(rule: str) -> str:
    words = rule.split()
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")), "?")


def differences(expected: Layout, current: Layout, family: Family) -> list[str]:
    """What keeps traffic from reaching netguard's chains or queue as they were installed, in words
    (empty: everything is in place). Netguard chains nobody jumps to and other people's rules
    after netguard's jumps are not problems."""
    where = f"IPv{family}"
    out = [f"{where}: table {t} is gone" for t in sorted(expected.tables - current.tables)]
    for (t, c), rules in expected.chains.items():
        if t not in current.tables:
            continue
        now = current.chains.get((t, c))
        if now is None:
            out.append(f"{where} {t}: chain {c} is gone")
        elif not now and rules:
            out.append(f"{where} {t}: chain {c} is empty (flushed)")
        elif now != rules:
            kept = sum(1 for r in rules if r in now)
            out.append(f"{where} {t}: chain {c} was altered ({kept} of its {len(rules)} rules as installed, "
                       f"{len(now)} rules now)")
    for (t, c), jumps in expected.jumps.items():
        if t not in current.tables:
            continue
        out += _jump_problems(f"{where} {t}", c, [_jump_target(r) for _, r in jumps], current.jumps.get((t, c), ()))
    return out


def _jump_problems(where: str, hook: str, want: list[str], now: tuple[tuple[int, str], ...]) -> list[str]:
    """The jumps from `hook` into netguard chains must be its first rules, in the order `want`."""
    have = [(n, _jump_target(r)) for n, r in now]
    if [target for _, target in have] == want and all(n == i + 1 for i, (n, _) in enumerate(have)):
        return []
    out = []
    for i, target in enumerate(want):
        found = [n for n, t in have if t == target]
        if not found:
            out.append(f"{where}: the jump from {hook} to {target} is gone")
        elif found[0] != i + 1:
            out.append(f"{where}: the jump from {hook} to {target} is rule {found[0]}, not {i + 1} "
                       "(other rules run before it)")
        elif len(found) > 1:
            out.append(f"{where}: {hook} jumps to {target} {len(found)} times")
    extra = sorted({t for _, t in have} - set(want))
    out += [f"{where}: {hook} jumps to {t}, which netguard did not install there" for t in extra]
    return out or [f"{where}: the jumps from {hook} into netguard's chains are out of order"]


def shape_differences(expected: Shape, current: Layout, family: Family) -> list[str]:
    """How `current` departs from the shape of build_rules' text, in words (empty: it has it)."""
    where = f"IPv{family}"
    out = [f"{where}: table {t} is gone" for t in sorted({t for t, _ in expected.chains} - current.tables)]
    for (t, c), targets in expected.chains.items():
        if t not in current.tables:
            continue
        now = current.chains.get((t, c))
        if now is None:
            out.append(f"{where} {t}: chain {c} is gone")
            continue
        got = tuple(_target(r) for r in now)
        if got != targets:
            queues = [x for x in targets if x.startswith("NFQUEUE")]
            out.append(f"{where} {t}: chain {c} does not have the rules netguard installs ("
                       f"targets {', '.join(got) or 'none'}; expected {', '.join(targets)}"
                       + (f"; queue rules should read {queues[0]!r}" if queues else "") + ")")
    for (t, hook), want in expected.heads.items():
        if t in current.tables:
            out += _jump_problems(f"{where} {t}", hook, list(want), current.jumps.get((t, hook), ()))
    return out


def tool(backend: Backend, family: Family, action: Literal["save", "restore"]) -> str:
    """The binary for one backend, family and action, e.g. ip6tables-legacy-restore."""
    base = "iptables" if family == 4 else "ip6tables"
    suffix = "nft" if backend == "iptables-nft" else "legacy"
    return f"{base}-{suffix}-{action}"


class FirewallError(RuntimeError):
    """A rule set could not be installed or removed (family: the address family whose rules the
    kernel refused, when known)."""

    def __init__(self, message: str, family: Family | None = None) -> None:
        super().__init__(message)
        self.family = family


class FirewallLocked(FirewallError):
    """Another program held the xtables lock past the wait: nothing about the kernel, so no fallback
    (no u32, IPv4 only) may be drawn from it."""


# iptables' words when the lock stays held (exit status 4, RESOURCE_PROBLEM; the wording changed
# between 1.8 releases).
_LOCK_WORDS = ("xtables lock", "Can't lock /run/xtables.lock")


def _argv(ns: str | None, argv: list[str]) -> list[str]:
    return netns.exec_argv(ns, argv) if ns else argv


def _call(ns: str | None, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(ns, argv), input=stdin, capture_output=True, text=True, timeout=30)


def save(backend: Backend, family: Family, ns: str | None = None, tables: Sequence[str] = ("filter", "raw")) -> str:
    """The filter and raw tables (or `tables`) as `iptables-save` prints them, without its timestamped
    comment lines so two saves of the same tables compare equal ('' if the tool is missing or fails);
    for nft, netguard's table as `nft list table` prints it."""
    if backend == "nft":
        return native.save(family, ns)
    out = ""
    for table in tables:
        try:
            r = _call(ns, [tool(backend, family, "save"), "-t", table])
        except FileNotFoundError:
            return ""
        if r.returncode == 0:
            out += "".join(line for line in r.stdout.splitlines(keepends=True) if not line.startswith("#"))
    return out


def installed(backend: Backend, family: Family, ns: str | None = None) -> list[str]:
    """The netguard lines currently in the filter table, or netguard's nft table (for `rules show`
    and tests)."""
    if backend == "nft":
        return [line for line in save(backend, family, ns).splitlines() if line.strip()]
    return [line for line in save(backend, family, ns).splitlines() if CHAIN_PREFIX in line]


# Seconds a start, a stop or `netguard rules remove` waits for the xtables lock (iptables-legacy):
# outside the packet loop, and at boot dockerd may hold the lock for seconds while it writes its own
# rules; a bound, so that a lock held for ever ends in an error that names it, not a silent hang.
START_LOCK_WAIT = 10


def remove(ns: str | None = None, keep: Backend | None = None) -> list[str]:
    """Remove every netguard chain and jump (and netguard's nft tables), in both families and every
    backend (stale rules of a crashed run may sit in any), except those of backend `keep`. Returns
    what was removed, one line per family."""
    done: list[str] = []
    for backend in BACKENDS:
        if backend == keep:
            continue
        if backend == "nft":
            done += native.remove(ns)
            continue
        for family in FAMILIES:
            if _restore(backend, family, build_removal(save(backend, family, ns)), ns, START_LOCK_WAIT):
                done.append(f"{backend} IPv{family}")
    return done


def apply(backend: Backend, opts: Options, ns: str | None = None, wait: int = START_LOCK_WAIT) -> None:
    """Put netguard's rules for its families (both, unless opts.families says otherwise) in place,
    replacing any netguard rules already there in the same restore (one transaction per table); if
    the second family fails, netguard's rules are removed from the first again. Waits up to `wait`
    seconds for the xtables lock."""
    for i, family in enumerate(opts.families):
        try:
            _install(backend, family, opts, ns, wait)
        except FirewallError:
            if i:
                remove(ns)
            raise


# Seconds a restore of the running daemon waits for the xtables lock (iptables-legacy; iptables
# 1.8 otherwise waits for ever, and the daemon's loop with it). Integer seconds: `--wait 0` means
# "for ever" too.
LOCK_WAIT = 1


def switch(backend: Backend, old: Options, new: Options, ns: str | None = None, wait: int = LOCK_WAIT) -> None:
    """The running daemon's reload: each family's rules go from `old` to `new` in one transaction
    (never a moment without rules, unlike apply's removal after a failed second family). If a family
    fails (the xtables lock held past `wait`, the kernel refuses), the families already switched get
    `old` back, as far as the lock allows (the daemon's watch puts back what is still missing), and
    FirewallError is raised."""
    done: list[Family] = []
    for family in new.families:
        try:
            _install(backend, family, new, ns, wait)
        except FirewallError:
            for back in done:
                with contextlib.suppress(FirewallError):
                    _install(backend, back, old, ns, wait)
            raise
        done.append(family)


def _install(backend: Backend, family: Family, opts: Options, ns: str | None, wait: int | None = None) -> None:
    if backend == "nft":
        native.install(family, opts, ns)
    else:
        _restore(backend, family, build_replacement(save(backend, family, ns), build_rules(family, opts)), ns, wait)


def restore_family(backend: Backend, family: Family, opts: Options, ns: str | None = None) -> None:
    """Put one family's netguard rules back as build_rules has them, replacing whatever netguard
    rules are left, in one restore (one transaction per table); nobody else's rules are touched.
    FirewallError if the lock stays held for LOCK_WAIT or the kernel refuses."""
    _install(backend, family, opts, ns, wait=LOCK_WAIT)


def apply_preferred(backend: Backend, opts: Options, ns: str | None = None) -> tuple[Options, str | None]:
    """apply(); if the kernel refuses the rules that need the xt u32 match (data-less segments kept
    out of the queue, QUIC matched by shape, DNS answers from other ports; for nft the payload
    expressions that stand in for it) but takes the set without them, that set. Returns the options
    in force and, after a fallback, why. Trying in place needs no scratch namespace (a sandboxed
    service cannot make one), and a refused restore changes nothing."""
    try:
        apply(backend, opts, ns)
        return opts, None
    except FirewallLocked:
        raise
    except FirewallError as exc:
        if opts == with_u32(opts, False):
            raise
        fallback = with_u32(opts, False)
        apply(backend, fallback, ns)
        return fallback, str(exc).splitlines()[0]


def _restore(backend: Backend, family: Family, text: str | None, ns: str | None, wait: int | None = None) -> bool:
    if text is None:
        return False
    r = _call(ns, [tool(backend, family, "restore"), "--noflush", *([] if wait is None else ["--wait", str(wait)])],
              text)
    if r.returncode != 0:
        locked = r.returncode == 4 and any(words in r.stderr for words in _LOCK_WORDS)
        raise (FirewallLocked if locked else FirewallError)(f"{tool(backend, family, 'restore')}: {r.stderr.strip()}",
                                                            family)
    return True


# -- one backend or the other: what the daemon, its watch and `netguard status` call --------------


def rule_text(backend: Backend, family: Family, opts: Options) -> str:
    """The rule set's text for one family: iptables-restore input, or `nft -f` input."""
    return native.build_rules(family, opts) if backend == "nft" else build_rules(family, opts)


def tables_for(backend: Backend, opts: Options) -> tuple[str, ...]:
    """The tables netguard's rules use with these options (what to save and watch)."""
    return (native.TABLE,) if backend == "nft" else tables_of(build_rules(4, opts))


def read_layout(backend: Backend, saved: str, tables: Sequence[str] | None = None) -> Layout:
    """Netguard's part of what `save` returned."""
    return native.layout(saved) if backend == "nft" else layout(saved, tables)


def problems(backend: Backend, expected: Layout, current: Layout, family: Family) -> list[str]:
    """`differences` for this backend: what departs from what netguard installed, in words."""
    if backend == "nft":
        return native.differences(expected, current, family)
    return differences(expected, current, family)


def shape_problems(backend: Backend, family: Family, opts: Options, current: Layout) -> list[str]:
    """`shape_differences` for this backend: how `current` departs from the rule set for opts."""
    if backend == "nft":
        return native.shape_differences(native.shape(native.build_rules(family, opts)), current, family)
    return shape_differences(shape(build_rules(family, opts)), current, family)


def queue_bypass(backend: Backend, current: Layout) -> set[bool]:
    """Whether the installed queue rules bypass the queue when no daemon listens (one value per kind)."""
    if backend == "nft":
        return native.queue_bypass(current)
    return {"--queue-bypass" in r for rs in current.chains.values() for r in rs if "-j NFQUEUE" in r}


# The native nft backend builds on this module's constants and helpers (it imports them): imported
# last, so that either module may be imported first.
from netguard.daemon import nft as native  # noqa: E402
