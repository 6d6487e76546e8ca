"""Building the few packets netguard writes: a DNS answer with a new payload, a TCP segment toward
the client (the TLS alert of block_action = "tls-alert", a reset); and checking the checksums of a
packet read, as its receiver will.

Strategy: fresh headers with correct lengths and checksums; IPv4 keeps the original header's
identification and TTL, IPv6 gets a plain 40-byte header (extension headers are not carried over).
A checksum is verified over the raw bytes: the TCP header and payload sit at the end of the packet
(as long as its IP length says), so their place follows from the parsed lengths.
"""

from __future__ import annotations

import struct

from netguard.wire.ip import PROTO_TCP, PROTO_UDP, Packet, TcpSegment

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
DEFAULT_TTL = 64


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    # The one's-complement sum of the 16-bit words, taken as one number mod 0xFFFF (2**16 = 1 mod
    # 0xFFFF), where a non-zero sum is 0xFFFF rather than 0: one C operation instead of a word loop.
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF or (0xFFFF if number else 0)
    return ~total & 0xFFFF


def _pseudo(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _ip(version: int, src: bytes, dst: bytes, proto: int, l4: bytes, ttl: int, ident: int) -> bytes:
    if version == 4:
        head = _IPV4.pack(0x45, 0, 20 + len(l4), ident & 0xFFFF, 0x4000, ttl, proto, 0, src, dst)
        head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
        return head + l4
    return _IPV6.pack(0x60000000, len(l4), proto, ttl, src, dst) + l4


def udp_packet(version: int, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes,
               ttl: int = DEFAULT_TTL, ident: int = 0) -> bytes:
    """An IPv4/IPv6 UDP packet with correct lengths and checksums."""
    length = 8 + len(payload)
    header = _UDP.pack(sport, dport, length, 0)
    csum = checksum(_pseudo(version, src, dst, PROTO_UDP, length) + header + payload) or 0xFFFF
    return _ip(version, src, dst, PROTO_UDP, _UDP.pack(sport, dport, length, csum) + payload, ttl, ident)


def tcp_packet(version: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
               flags: int, payload: bytes, window: int = 512, ttl: int = DEFAULT_TTL,
               options: bytes = b"") -> bytes:
    """An IPv4/IPv6 TCP segment with correct lengths and checksums (options padded to 4 bytes)."""
    options += b"\x00" * (-len(options) % 4)
    words = 5 + len(options) // 4
    header = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, words << 4, flags, window, 0, 0)
    header += options
    csum = checksum(_pseudo(version, src, dst, PROTO_TCP, len(header) + len(payload)) + header + payload)
    header = header[:16] + struct.pack("!H", csum) + header[18:]
    return _ip(version, src, dst, PROTO_TCP, header + payload, ttl, 0)


def ipv4_header_ok(data: bytes) -> bool:
    """Whether an IPv4 header's checksum is right (the one's-complement sum of its words is 0xFFFF)."""
    size = (data[0] & 0x0F) * 4
    if len(data) < size:
        return False
    # checksum(header) == 0, inlined (a header is whole words): the sum of its words is 0xFFFF.
    number = int.from_bytes(data[:size], "big")
    return number % 0xFFFF == 0 and number != 0


def _tcp_span(data: bytes, packet: Packet) -> tuple[int, int] | None:
    """Where a TCP packet's segment ends in data (by the IP length) and its size, or None if it is
    not TCP or the queue did not copy all of it."""
    seg = packet.l4
    if not isinstance(seg, TcpSegment):
        return None
    end = int.from_bytes(data[2:4], "big") if packet.version == 4 else 40 + int.from_bytes(data[4:6], "big")
    size = 20 + len(seg.options) + len(seg.payload)
    return None if end > len(data) or end < size else (end, size)


def tcp_checksum_ok(data: bytes, packet: Packet) -> bool:
    """Whether a whole TCP packet's checksum is right (the pseudo-header uses the packet's addresses:
    an IPv6 routing header that would change the final destination makes it fail, which is safe)."""
    span = _tcp_span(data, packet)
    if span is None:
        return False
    end, size = span
    # The sum of words is the number mod 0xFFFF (see checksum): summed in two parts, the segment not
    # copied. An odd-length segment is padded with a zero byte (one more factor of 256).
    pseudo = int.from_bytes(_pseudo(packet.version, packet.src, packet.dst, PROTO_TCP, size), "big")
    number = int.from_bytes(data[end - size:end], "big") * (256 if size % 2 else 1)  # a copy beats a view
    total = (pseudo + number) % 0xFFFF  # pseudo-header words come first, each 2**16 = 1 mod 0xFFFF
    return total == 0 and (pseudo or number) != 0


def without_tcp_options(data: bytes, packet: Packet, spans: tuple[tuple[int, int], ...]) -> bytes | None:
    """The same packet, byte for byte, with the TCP options at `spans` ((offset, length) in the
    options, as TcpOptions gives them) turned into NOPs and the TCP checksum made for the result
    (a queued packet of this host may carry only the pseudo-header's sum there: checksum offload).
    None if the queue did not copy the whole packet."""
    span = _tcp_span(data, packet)
    if span is None:
        return None
    end, size = span
    start = end - size
    out = bytearray(data[:end])
    for offset, length in spans:
        out[start + 20 + offset : start + 20 + offset + length] = b"\x01" * length
    out[start + 16 : start + 18] = b"\x00\x00"
    csum = checksum(_pseudo(packet.version, packet.src, packet.dst, PROTO_TCP, size) + bytes(out[start:]))
    out[start + 16 : start + 18] = csum.to_bytes(2, "big")
    return bytes(out)


def replace_udp_payload(packet: Packet, payload: bytes) -> bytes:
    """The same UDP packet (addresses, ports, TTL) carrying a new payload."""
    if packet.l4 is None or packet.proto != PROTO_UDP:
        raise ValueError("not a UDP packet")
    return udp_packet(packet.version, packet.src, packet.dst, packet.l4.sport, packet.l4.dport, payload,
                      ttl=packet.ttl, ident=packet.fragment_id)


def replace_tcp_payload(packet: Packet, payload: bytes) -> bytes:
    """The same TCP segment (ports, numbers, flags, window) carrying a new payload of the same length
    (a different length would shift every later sequence number of the stream)."""
    seg = packet.l4
    if not isinstance(seg, TcpSegment):
        raise ValueError("not a TCP packet")
    if len(payload) != len(seg.payload):
        raise ValueError("a TCP payload can only be replaced by one of the same length")
    return tcp_packet(packet.version, packet.src, packet.dst, seg.sport, seg.dport, seg.seq, seg.ack,
                      seg.flags, payload, window=seg.window, ttl=packet.ttl, options=seg.options)
