"""`netguard replay`: the engine run offline over a capture, one line per flow.

Strategy: a small pcap / pcapng reader (Ethernet, Linux cooked v1/v2, raw IP and BSD loopback link
types) yields IP packets with their timestamps; a connection-tracking stand-in hands the engine
only what the firewall rules would queue: DNS answers (from port 53), the client direction of TCP
flows until the engine has decided them or for as long as it follows them (plain HTTP connections;
an allowed TLS flow again once its server sent a HelloRetryRequest, as the kernel rule sees it), the
server's packets of undecided TCP flows, and the client direction of every UDP flow (the engine
reads QUIC long headers on any port, also after a decision: each new QUIC connection is judged).
Each flow is one line (or one JSON object) with its last decision (for a UDP flow the block if one
came, else the first decision); TCP flows still undecided at the end of the capture are listed as
such.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from netguard.engine import Action, Engine, Event, FlowKey
from netguard.policy import Policy
from netguard.wire import tls
from netguard.wire.errors import ParseError
from netguard.wire.ip import ACK, SYN, TcpSegment, UdpDatagram, parse_packet

# Link types (tcpdump.org/linktypes.html) and where the IP packet starts.
LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_RAW_BSD, LINK_IPV4, LINK_IPV6 = 0, 1, 101, 12, 228, 229
LINK_SLL, LINK_SLL2 = 113, 276
# A capture record larger than this is not a packet (pcap's own default snaplen is 262144).
MAX_RECORD = 262144


class CaptureError(ValueError):
    """The file is not a pcap or pcapng capture this reader understands."""


def _ip_from_link(link: int, frame: bytes) -> bytes | None:
    if link in (LINK_RAW, LINK_RAW_BSD, LINK_IPV4, LINK_IPV6):
        return frame
    if link == LINK_ETHERNET:
        offset, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:
            ethertype = int.from_bytes(frame[offset + 2:offset + 4], "big")
            offset += 4
        return frame[offset:] if ethertype in (0x0800, 0x86DD) else None
    if link == LINK_SLL:
        return frame[16:] if int.from_bytes(frame[14:16], "big") in (0x0800, 0x86DD) else None
    if link == LINK_SLL2:
        return frame[20:] if int.from_bytes(frame[0:2], "big") in (0x0800, 0x86DD) else None
    if link == LINK_NULL:
        return frame[4:]
    return None


def read_capture(path: Path) -> Iterator[tuple[float, bytes]]:
    """(timestamp, IP packet bytes) for every IP packet in a pcap or pcapng file."""
    data = path.read_bytes()
    if len(data) < 24:
        raise CaptureError(f"{path}: too short for a capture")
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng(data, path)
        return
    formats = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
    if magic not in formats:
        raise CaptureError(f"{path}: not a pcap or pcapng file")
    endian, unit = formats[magic]
    link = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        pos += 16
        if incl > MAX_RECORD or pos + incl > len(data):
            raise CaptureError(f"{path}: record at byte {pos - 16} runs past the end")
        ip = _ip_from_link(link, data[pos:pos + incl])
        pos += incl
        if ip:
            yield sec + frac * unit, ip


def _pcapng(data: bytes, path: Path) -> Iterator[tuple[float, bytes]]:
    endian = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    links: list[int] = []
    pos = 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from(endian + "II", data, pos)
        if blen < 12 or pos + blen > len(data):
            raise CaptureError(f"{path}: block at byte {pos} runs past the end")
        body = data[pos + 8:pos + blen - 4]
        if btype == 0x0A0D0D0A:
            links = []
        elif btype == 1:
            links.append(struct.unpack_from(endian + "H", body, 0)[0])
        elif btype == 6 and len(body) >= 20:
            iface, high, low, cap, _orig = struct.unpack_from(endian + "IIIII", body, 0)
            if iface < len(links):
                ip = _ip_from_link(links[iface], body[20:20 + cap])
                if ip:
                    yield ((high << 32) | low) * 1e-6, ip
        elif btype == 3 and links and len(body) >= 4:
            ip = _ip_from_link(links[0], body[4:])
            if ip:
                yield 0.0, ip
        pos += blen


@dataclass
class FlowLine:
    """One flow (or DNS answer) of the capture and what netguard decided for it."""

    key: FlowKey
    event: Event | None


def replay(path: Path, policy: Policy) -> list[FlowLine]:
    """Run the engine over the capture; one FlowLine per flow, in order of first packet."""
    engine = Engine(policy)
    engine.checks_checksums = False  # a capture on the client shows checksums its NIC filled in later
    lines: dict[FlowKey, FlowLine] = {}
    dns_lines: list[FlowLine] = []
    order: list[FlowKey | int] = []
    client: set[FlowKey] = set()  # keys whose direction is the client's (first SYN or first packet)
    decided: set[FlowKey] = set()
    allowed: set[FlowKey] = set()  # decided and allowed: a HelloRetryRequest makes them followed again
    followed: set[FlowKey] = set()
    for ts, ip in read_capture(path):
        try:
            packet = parse_packet(ip)
        except ParseError:
            continue
        l4 = packet.l4
        if not isinstance(l4, TcpSegment | UdpDatagram):
            continue
        key = FlowKey(packet.proto, packet.src, l4.sport, packet.dst, l4.dport)
        syn = isinstance(l4, TcpSegment) and bool(l4.flags & SYN) and not l4.flags & ACK
        if l4.sport == 53 and key not in client and not syn:
            # The reply direction of a flow to port 53 (or of one whose start the capture missed).
            verdict = engine.handle(ip, ts, from_client=False)
            if verdict.event is not None:
                order.append(len(dns_lines))
                dns_lines.append(FlowLine(key.reply(), verdict.event))
            continue
        if isinstance(l4, UdpDatagram):
            if key.reply() in client:
                continue  # the server's side
            client.add(key)  # a DNS query's answers come back the other way
            verdict = engine.handle(ip, ts, from_client=True)
            if verdict.event is not None:
                if key not in lines:
                    lines[key] = FlowLine(key, None)
                    order.append(key)
                if lines[key].event is None or not verdict.event.allowed:
                    lines[key].event = verdict.event
            continue
        rkey = key.reply()
        if isinstance(l4, TcpSegment) and l4.flags & SYN and l4.flags & ACK and key not in client:
            client.add(rkey)
        if rkey in client:
            if rkey in allowed and tls.is_hello_retry_request(l4.payload):
                allowed.discard(rkey)
                decided.discard(rkey)
                followed.add(rkey)
            elif rkey not in decided and rkey not in followed:
                # The server's packets: its SYN-ACK, and its payload when it speaks first (as the daemon queues).
                verdict = engine.handle(ip, ts, from_client=False)
                if verdict.event is not None:
                    if rkey not in lines:
                        lines[rkey] = FlowLine(rkey, None)
                        order.append(rkey)
                    lines[rkey].event = verdict.event
                _note(rkey, verdict.action, decided, allowed, followed)
            continue
        if key in decided:
            continue
        if key not in client:
            client.add(key)
            lines[key] = FlowLine(key, None)
            order.append(key)
        verdict = engine.handle(ip, ts, from_client=True, followed=key in followed)
        if verdict.event is not None:
            lines[key].event = verdict.event
        _note(key, verdict.action, decided, allowed, followed)
    return [dns_lines[k] if isinstance(k, int) else lines[k] for k in order]


def _note(key: FlowKey, action: Action, decided: set[FlowKey], allowed: set[FlowKey], followed: set[FlowKey]) -> None:
    """What the connection mark of a TCP flow becomes after a verdict."""
    if action in (Action.ALLOW, Action.BLOCK):
        decided.add(key)
        followed.discard(key)
        if action is Action.ALLOW:
            allowed.add(key)
    elif action is Action.FOLLOW:
        followed.add(key)


def render(line: FlowLine) -> str:
    """One human line: 5-tuple, name and its source, decision."""
    t = line.key.text()
    where = f"{t['proto']} {_addr(t['src'])}:{t['sport']} -> {_addr(t['dst'])}:{t['dport']}"
    e = line.event
    if e is None:
        return f"{where}  (no name seen)  undecided"
    what = f"{e.host or '-'} ({e.source})"
    if e.source == "dns-answer":
        what = f"{' -> '.join(e.names or (e.host or '-',))} (dns-answer)"
    verdict = "allow" if e.allowed else "block"
    return f"{where}  {what}  {verdict}  [{e.rule}]"


def _addr(text: str) -> str:
    return f"[{text}]" if ":" in text else text
