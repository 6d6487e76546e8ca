"""Strategy: IPv4 / IPv6 packets with their TCP or UDP header, as frozen values.

`parse_packet` takes the raw bytes NFQUEUE hands over (starting at the IP header) and returns a
`Packet`. Headers are read with one precompiled struct each, every read preceded by its bounds
check (the `Reader` discipline with the cursor in locals, see reader.py), so a TCP packet costs a
handful of C calls. The IPv4 total length / IPv6 payload length bound the
packet: trailing bytes past it are ignored, a packet shorter than it is `Truncated`. The IPv6
extension-header chain (hop-by-hop, routing, fragment, destination options, AH) is walked up to a
named limit. A fragment (IPv4 MF or offset, IPv6 fragment header with M or offset) is reported as
such with `l4 = None`: its transport header is either absent or incomplete, so it is never parsed
as if it were whole. Checksums are not verified here (most packets never need it); the engine
verifies them only on the segments that can decide a flow. `tcp_options` reads the few TCP options a
receiver's verdict depends on (timestamps, MD5 / AO signatures) the way Linux's tcp_parse_options
walks them: a malformed option ends the walk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple

from netguard.wire.errors import Malformed, Truncated

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

_EXTENSION_HEADERS = frozenset((_HOP_BY_HOP, _ROUTING, _FRAGMENT, _AH, _DEST_OPTS))

# Bound unpack_from methods: each read is preceded by its own bounds check.
_IPV4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_IPV6 = struct.Struct("!IHBB16s16s").unpack_from
_EXT = struct.Struct("!BB").unpack_from
_FRAG6 = struct.Struct("!BBHI").unpack_from
_TCP = struct.Struct("!HHIIBBHHH").unpack_from
_UDP = struct.Struct("!HHHH").unpack_from


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
    urgent: int = 0  # the urgent pointer field (meaningful with the URG flag)


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


# The generated __init__ of a frozen dataclass sets each field through object.__setattr__, which
# costs as much as the rest of the parse. The parser builds its values by setting the slots through
# their descriptors instead: the same objects (no __post_init__ to skip), in half the time. The
# setters come from fields(), so they follow the classes' field order as their constructors do.
_new_object = object.__new__
_TCP_SLOTS = tuple(TcpSegment.__dict__[f.name].__set__ for f in fields(TcpSegment))
_UDP_SLOTS = tuple(UdpDatagram.__dict__[f.name].__set__ for f in fields(UdpDatagram))
_PACKET_SLOTS = tuple(Packet.__dict__[f.name].__set__ for f in fields(Packet))


def _tcp_segment(
    sport: int, dport: int, seq: int, ack: int, flags: int, window: int, options: bytes, payload: bytes, urgent: int
) -> TcpSegment:
    """Same as TcpSegment(...) (see _TCP_SLOTS)."""
    segment: TcpSegment = _new_object(TcpSegment)
    s_sport, s_dport, s_seq, s_ack, s_flags, s_window, s_options, s_payload, s_urgent = _TCP_SLOTS
    s_sport(segment, sport)
    s_dport(segment, dport)
    s_seq(segment, seq)
    s_ack(segment, ack)
    s_flags(segment, flags)
    s_window(segment, window)
    s_options(segment, options)
    s_payload(segment, payload)
    s_urgent(segment, urgent)
    return segment


def _udp_datagram(sport: int, dport: int, payload: bytes) -> UdpDatagram:
    """Same as UdpDatagram(...) (see _TCP_SLOTS)."""
    datagram: UdpDatagram = _new_object(UdpDatagram)
    s_sport, s_dport, s_payload = _UDP_SLOTS
    s_sport(datagram, sport)
    s_dport(datagram, dport)
    s_payload(datagram, payload)
    return datagram


def _packet(
    version: int,
    src: bytes,
    dst: bytes,
    proto: int,
    ttl: int,
    is_fragment: bool,
    more_fragments: bool,
    fragment_offset: int,
    fragment_id: int,
    ip_options: bytes,
    l4: TcpSegment | UdpDatagram | None,
) -> Packet:
    """Same as Packet(...) (see _TCP_SLOTS)."""
    packet: Packet = _new_object(Packet)
    s_version, s_src, s_dst, s_proto, s_ttl, s_frag, s_more, s_offset, s_id, s_options, s_l4 = _PACKET_SLOTS
    s_version(packet, version)
    s_src(packet, src)
    s_dst(packet, dst)
    s_proto(packet, proto)
    s_ttl(packet, ttl)
    s_frag(packet, is_fragment)
    s_more(packet, more_fragments)
    s_offset(packet, fragment_offset)
    s_id(packet, fragment_id)
    s_options(packet, ip_options)
    s_l4(packet, l4)
    return packet


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
    size = len(data)
    if size < 20:
        raise Truncated(f"need 20 bytes at offset 0, have {size}")
    ver_ihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IPV4(data)
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < 20:
        raise Malformed(f"IPv4 header length {header_len}")
    if total < header_len:
        raise Malformed(f"IPv4 total length {total} < header length {header_len}")
    if total > size:
        raise Truncated(f"IPv4 total length {total}, have {size}")
    # From here on the payload is fenced by the total length (see _parse_l4).
    options = data[20:header_len] if header_len > 20 else b""
    more = bool(frag & 0x2000)
    offset = (frag & 0x1FFF) * 8
    if more or offset:
        return _packet(4, src, dst, proto, ttl, True, more, offset, ident, options, None)
    return _packet(4, src, dst, proto, ttl, False, False, 0, ident, options, _parse_l4(data, header_len, total, proto))


def _parse_ipv6(data: bytes) -> Packet:
    size = len(data)
    if size < 40:
        raise Truncated(f"need 40 bytes at offset 0, have {size}")
    _vtf, payload_len, next_header, hop_limit, src, dst = _IPV6(data)
    end = 40 + payload_len
    if end > size:
        # A jumbogram (payload length 0 + hop-by-hop option) cannot come through NFQUEUE's copy.
        raise Truncated(f"IPv6 payload length {payload_len}, have {size - 40}")
    pos = 40
    more = False
    offset = 0
    ident = 0
    fragmented = False
    if next_header in _EXTENSION_HEADERS:
        for _ in range(MAX_IPV6_EXT_HEADERS + 1):
            if next_header in (_HOP_BY_HOP, _ROUTING, _DEST_OPTS, _AH):
                if pos + 2 > end:
                    raise _overrun(2, pos)
                kind = next_header
                next_header, ext_len = _EXT(data, pos)
                skip = (ext_len * 4 if kind == _AH else ext_len * 8) + 6  # AH counts 4-byte units
                pos += 2
                if pos + skip > end:
                    raise _overrun(skip, pos)
                pos += skip
            elif next_header == _FRAGMENT:
                if pos + 8 > end:
                    raise _overrun(8, pos)
                next_header, _reserved, frag, ident = _FRAG6(data, pos)
                pos += 8
                offset = frag & 0xFFF8
                more = bool(frag & 1)
                # An atomic fragment (offset 0, M clear) is a whole packet (RFC 6946).
                fragmented = fragmented or more or offset != 0
            else:
                break
        else:
            raise Malformed(f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers")
    if fragmented:
        return _packet(6, src, dst, next_header, hop_limit, True, more, offset, ident, b"", None)
    l4 = None if next_header == _NO_NEXT else _parse_l4(data, pos, end, next_header)
    return _packet(6, src, dst, next_header, hop_limit, False, False, 0, ident, b"", l4)


def _overrun(need: int, pos: int) -> Malformed:
    # Past the IP header the length field is satisfied, so a header that overruns it is Malformed.
    return Malformed(f"field of {need} bytes overruns its block at offset {pos}")


def _parse_l4(data: bytes, pos: int, end: int, proto: int) -> TcpSegment | UdpDatagram | None:
    """The transport header at `pos`, fenced by the IP length (`end`)."""
    if proto == PROTO_TCP:
        if pos + 20 > end:
            raise _overrun(20, pos)
        sport, dport, seq, ack, off, flags, window, _csum, urgent = _TCP(data, pos)
        header_len = (off >> 4) * 4
        if header_len < 20:
            raise Malformed(f"TCP data offset {header_len}")
        if pos + header_len > end:
            raise _overrun(header_len - 20, pos + 20)
        options = data[pos + 20 : pos + header_len] if header_len > 20 else b""
        return _tcp_segment(sport, dport, seq, ack, flags, window, options, data[pos + header_len : end], urgent)
    if proto == PROTO_UDP:
        if pos + 8 > end:
            raise _overrun(8, pos)
        sport, dport, length, _csum = _UDP(data, pos)
        if length < 8:
            raise Malformed(f"UDP length {length}")
        if pos + length > end:
            raise _overrun(length - 8, pos + 8)
        return _udp_datagram(sport, dport, data[pos + 8 : pos + length])
    return None


# TCP option kinds (RFC 9293 §3.2, RFC 7323, RFC 2385, RFC 5925).
OPT_END = 0
OPT_NOP = 1
OPT_TIMESTAMP = 8
OPT_MD5 = 19
OPT_AO = 29
OPT_MPTCP = 30  # Multipath TCP, RFC 8684


class TcpOptions(NamedTuple):
    """What a receiver's verdict on a segment depends on: its timestamp value (None without a
    timestamp option), whether it carries a signature (MD5, RFC 2385, or TCP-AO, RFC 5925), and
    where its Multipath TCP options are, as (offset, length) in the options (with them the server's
    stack assembles what it reads from mappings and subflows, not from one stream's order).
    (A NamedTuple: one is read for most segments that can decide a flow.)"""

    tsval: int | None
    signed: bool
    multipath: tuple[tuple[int, int], ...] = ()


NO_OPTIONS = TcpOptions(None, False)
# The options of nearly every segment after the SYN: NOP, NOP, timestamp (RFC 7323 appendix A).
_ALIGNED_TIMESTAMP = b"\x01\x01\x08\x0a"
# The options of a Linux SYN and SYN-ACK (tcp_options_write): MSS (kind 2, 4 bytes), SACK permitted
# (4, 2 bytes), timestamp (8, 10 bytes), NOP, window scale (3, 3 bytes): 20 bytes.
_SYN_HEAD, _SYN_MIDDLE, _SYN_TAIL = b"\x02\x04", b"\x04\x02\x08\x0a", b"\x01\x03\x03"


def tcp_options(options: bytes) -> TcpOptions:
    """Walk the options as Linux's tcp_parse_options does: END stops, NOP is one byte, any other
    kind has a length byte; a length below 2 or past the end stops the walk (the rest is not read)."""
    size = len(options)
    if size == 12 and options.startswith(_ALIGNED_TIMESTAMP):
        return TcpOptions(int.from_bytes(options[4:8], "big"), False)
    if size == 20 and options[16:19] == _SYN_TAIL and options[4:8] == _SYN_MIDDLE and options[:2] == _SYN_HEAD:
        # The walk over this exact shape: MSS, SACK permitted, the timestamp, NOP, window scale.
        return TcpOptions(int.from_bytes(options[8:12], "big"), False)
    return _walk_options(options)


def _walk_options(options: bytes) -> TcpOptions:
    """tcp_options without its shortcuts for the common shapes."""
    if OPT_TIMESTAMP not in options and OPT_MD5 not in options and OPT_AO not in options and OPT_MPTCP not in options:
        return NO_OPTIONS  # none of the kinds that matter can be there
    tsval: int | None = None
    signed = False
    multipath: list[tuple[int, int]] = []
    pos, end = 0, len(options)
    while pos < end:
        kind = options[pos]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            pos += 1
            continue
        if pos + 2 > end:
            break
        size = options[pos + 1]
        if size < 2 or pos + size > end:
            break
        if kind == OPT_TIMESTAMP and size == 10:
            tsval = int.from_bytes(options[pos + 2 : pos + 6], "big")
        elif kind in (OPT_MD5, OPT_AO):
            signed = True
        elif kind == OPT_MPTCP:
            multipath.append((pos, size))
        pos += size
    return TcpOptions(tsval, signed, tuple(multipath))

