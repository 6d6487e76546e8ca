"""Strategy: IPv4 / IPv6 packets with their TCP or UDP header, as frozen values.

`parse_packet` takes the raw bytes NFQUEUE hands over (starting at the IP header) and returns a
`Packet`. Headers are read with one precompiled struct each through the shared `Reader`, so a
TCP packet costs a handful of C calls. The IPv4 total length / IPv6 payload length bound the
packet: trailing bytes past it are ignored, a packet shorter than it is `Truncated`. The IPv6
extension-header chain (hop-by-hop, routing, fragment, destination options, AH) is walked up to a
named limit. A fragment (IPv4 MF or offset, IPv6 fragment header with M or offset) is reported as
such with `l4 = None`: its transport header is either absent or incomplete, so it is never parsed
as if it were whole. Checksums are not verified: the kernel has already checked incoming packets,
and outgoing ones carry offloaded (partial) checksums.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from netguard.wire.errors import Malformed, Truncated
from netguard.wire.reader import Reader

# TCP flag bits (RFC 9293 §3.1).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

PROTO_TCP = 6
PROTO_UDP = 17

# IPv6 extension headers this parser walks (RFC 8200 §4, AH from RFC 4302).
_HOP_BY_HOP = 0
_ROUTING = 43
_FRAGMENT = 44
_AH = 51
_DEST_OPTS = 60
_NO_NEXT = 59
# Real traffic carries at most two or three extension headers; a longer chain is an attempt to push
# the transport header out of view, and the walk must stay bounded.
MAX_IPV6_EXT_HEADERS = 8

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_EXT = struct.Struct("!BB")
_FRAG6 = struct.Struct("!BBHI")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """A TCP header and its payload. `flags` holds the low 8 flag bits (see FIN, SYN, ... )."""

    FIN: ClassVar[int] = FIN
    SYN: ClassVar[int] = SYN
    RST: ClassVar[int] = RST
    PSH: ClassVar[int] = PSH
    ACK: ClassVar[int] = ACK

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A UDP header and its payload."""

    sport: int
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Packet:
    """One IP packet.

    `src`/`dst` are the raw 4- or 16-byte addresses. `proto` is the upper-layer protocol (for IPv6
    the last next-header of the extension chain). `fragment_offset` is in bytes. `l4` is None for a
    fragment or for protocols other than TCP and UDP.
    """

    version: int
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    is_fragment: bool
    more_fragments: bool
    fragment_offset: int
    fragment_id: int
    ip_options: bytes
    l4: TcpSegment | UdpDatagram | None


def parse_packet(data: bytes) -> Packet:
    """Parse an IPv4 or IPv6 packet (raw bytes from the IP header on). Raises ParseError."""
    if not data:
        raise Truncated("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise Malformed(f"IP version {version}")


def _parse_ipv4(data: bytes) -> Packet:
    r = Reader(data)
    ver_ihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = r.unpack(_IPV4)
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < 20:
        raise Malformed(f"IPv4 header length {header_len}")
    if total < header_len:
        raise Malformed(f"IPv4 total length {total} < header length {header_len}")
    if total > len(data):
        raise Truncated(f"IPv4 total length {total}, have {len(data)}")
    _fence_payload(r, total)
    options = r.take(header_len - 20) if header_len > 20 else b""
    more = bool(frag & 0x2000)
    offset = (frag & 0x1FFF) * 8
    if more or offset:
        return Packet(4, src, dst, proto, ttl, True, more, offset, ident, options, None)
    return Packet(4, src, dst, proto, ttl, False, False, 0, ident, options, _parse_l4(r, proto))


def _parse_ipv6(data: bytes) -> Packet:
    r = Reader(data)
    _vtf, payload_len, next_header, hop_limit, src, dst = r.unpack(_IPV6)
    if 40 + payload_len > len(data):
        # A jumbogram (payload length 0 + hop-by-hop option) cannot come through NFQUEUE's copy.
        raise Truncated(f"IPv6 payload length {payload_len}, have {len(data) - 40}")
    _fence_payload(r, 40 + payload_len)
    more = False
    offset = 0
    ident = 0
    fragmented = False
    for _ in range(MAX_IPV6_EXT_HEADERS + 1):
        if next_header in (_HOP_BY_HOP, _ROUTING, _DEST_OPTS):
            next_header, ext_len = r.unpack(_EXT)
            r.skip(ext_len * 8 + 6)
        elif next_header == _AH:
            next_header, ext_len = r.unpack(_EXT)
            r.skip(ext_len * 4 + 6)
        elif next_header == _FRAGMENT:
            next_header, _reserved, frag, ident = r.unpack(_FRAG6)
            offset = frag & 0xFFF8
            more = bool(frag & 1)
            # An atomic fragment (offset 0, M clear) is a whole packet (RFC 6946).
            fragmented = fragmented or more or offset != 0
        else:
            break
    else:
        raise Malformed(f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers")
    if fragmented:
        return Packet(6, src, dst, next_header, hop_limit, True, more, offset, ident, b"", None)
    l4 = None if next_header == _NO_NEXT else _parse_l4(r, next_header)
    return Packet(6, src, dst, next_header, hop_limit, False, False, 0, ident, b"", l4)


def _fence_payload(r: Reader, end: int) -> None:
    # The IP length field is satisfied, so a header that overruns it is Malformed, not Truncated.
    r.end = end
    r.fences = 1


def _parse_l4(r: Reader, proto: int) -> TcpSegment | UdpDatagram | None:
    if proto == PROTO_TCP:
        sport, dport, seq, ack, off, flags, window, _csum, _urg = r.unpack(_TCP)
        header_len = (off >> 4) * 4
        if header_len < 20:
            raise Malformed(f"TCP data offset {header_len}")
        options = r.take(header_len - 20) if header_len > 20 else b""
        return TcpSegment(sport, dport, seq, ack, flags, window, options, r.rest())
    if proto == PROTO_UDP:
        sport, dport, length, _csum = r.unpack(_UDP)
        if length < 8:
            raise Malformed(f"UDP length {length}")
        return UdpDatagram(sport, dport, r.take(length - 8))
    return None
