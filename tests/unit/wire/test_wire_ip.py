"""IP/TCP/UDP: corpus packets cross-checked with scapy, options, IPv6 extension chains, fragments,
truncations, and hypothesis-built packets compared with scapy's reading."""

# scapy's fragment helpers carry no annotations.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet, Padding, Raw
from wirecorpus import corpus_files, read_pcap

from netguard.wire import ip
from netguard.wire.errors import Malformed, ParseError, Truncated

ALL_FILES = corpus_files("")


def check_against_scapy(raw: bytes) -> ip.Packet:
    packet = ip.parse_packet(raw)
    theirs = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    assert packet.version == theirs.version
    assert packet.src == ip_packed(theirs.src) and packet.dst == ip_packed(theirs.dst)
    l4 = theirs.getlayer(TCP) or theirs.getlayer(UDP)
    padding = theirs.getlayer(Padding)
    their_payload = bytes(l4.payload) if l4 is not None else b""
    if padding is not None:  # bytes past the IP length, which scapy keeps as Padding
        their_payload = their_payload[: len(their_payload) - len(padding.load)]
    if isinstance(packet.l4, ip.TcpSegment):
        assert isinstance(l4, TCP)
        assert (packet.l4.sport, packet.l4.dport, packet.l4.seq, packet.l4.ack) == (l4.sport, l4.dport, l4.seq, l4.ack)
        assert packet.l4.flags == int(l4.flags) & 0xFF and packet.l4.window == l4.window
        assert packet.l4.payload == their_payload
    elif isinstance(packet.l4, ip.UdpDatagram):
        assert isinstance(l4, UDP)
        assert (packet.l4.sport, packet.l4.dport, packet.l4.payload) == (l4.sport, l4.dport, their_payload)
    return packet


def ip_packed(text: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(text).packed


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_corpus_packets_match_scapy(path: Path) -> None:
    packets = read_pcap(path)
    assert packets
    for raw in packets:
        packet = check_against_scapy(raw)
        assert packet.l4 is not None and not packet.is_fragment


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_truncation_is_truncated(path: Path) -> None:
    for raw in read_pcap(path):
        for cut in range(len(raw)):
            with pytest.raises(Truncated):
                ip.parse_packet(raw[:cut])


def test_tcp_flags_and_options() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", options=[("MSS", 1460), ("WScale", 7)]))
    segment = ip.parse_packet(raw).l4
    assert isinstance(segment, ip.TcpSegment)
    assert segment.flags == ip.SYN == ip.TcpSegment.SYN
    assert segment.options[:4] == b"\x02\x04\x05\xb4"
    raw = bytes(IP() / TCP(flags="PA") / b"hello")
    segment = ip.parse_packet(raw).l4
    assert isinstance(segment, ip.TcpSegment)
    assert segment.flags == ip.PSH | ip.ACK and segment.payload == b"hello"


def test_ipv4_options_and_trailing_padding() -> None:
    raw = bytes(IP(options=[IPOption_RR(routers=["1.2.3.4"]), IPOption_NOP()]) / UDP(dport=53) / b"q")
    packet = check_against_scapy(raw + b"\x00" * 6)  # link-layer padding after total length is ignored
    assert packet.ip_options[:1] == b"\x07"
    assert isinstance(packet.l4, ip.UdpDatagram) and packet.l4.payload == b"q"


def test_ipv4_fragments_are_reported_not_parsed() -> None:
    whole = IP(src="10.0.0.1", dst="10.0.0.2", id=77) / UDP(sport=1, dport=53) / Raw(b"x" * 200)
    pieces = [ip.parse_packet(bytes(f)) for f in fragment(whole, fragsize=64)]
    assert len(pieces) > 2
    assert all(p.is_fragment and p.l4 is None and p.fragment_id == 77 for p in pieces)
    assert [p.more_fragments for p in pieces] == [True] * (len(pieces) - 1) + [False]
    assert pieces[0].fragment_offset == 0 and pieces[1].fragment_offset == 64


def test_ipv6_extension_chain() -> None:
    raw = bytes(
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["fd00::3"])
        / IPv6ExtHdrDestOpt()
        / TCP(sport=5000, dport=443, flags="S")
    )
    packet = check_against_scapy(raw)
    assert packet.proto == ip.PROTO_TCP and isinstance(packet.l4, ip.TcpSegment)


def test_ipv6_authentication_header_counts_4_byte_units() -> None:
    # AH's length is in 4-byte units (RFC 4302), the other extension headers' in 8-byte units.
    ah = AH(nh=6, payloadlen=4, spi=7, seq=1, icv=bytes(12))  # 12 fixed + 12 ICV bytes: 24 / 4 - 2
    raw = bytes(
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / ah / TCP(sport=5000, dport=443, flags="S")
    )
    packet = ip.parse_packet(raw)  # (scapy does not dissect past an IPv6 AH, so no cross-check)
    assert packet.proto == ip.PROTO_TCP and isinstance(packet.l4, ip.TcpSegment)
    assert (packet.l4.sport, packet.l4.dport, packet.l4.flags, packet.l4.payload) == (5000, 443, ip.SYN, b"")


def test_ipv6_fragments_are_reported_not_parsed() -> None:
    whole = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(id=9) / UDP(dport=53) / Raw(b"y" * 600)
    pieces = [ip.parse_packet(bytes(f)) for f in fragment6(whole, 300)]
    assert len(pieces) >= 3
    assert all(p.is_fragment and p.l4 is None and p.fragment_id == 9 and p.proto == 17 for p in pieces)
    assert pieces[0].fragment_offset == 0 and pieces[1].fragment_offset > 0
    atomic = bytes(IPv6() / IPv6ExtHdrFragment(m=0, offset=0) / UDP(dport=53) / b"z")
    packet = ip.parse_packet(atomic)  # RFC 6946: an atomic fragment is a whole packet
    assert not packet.is_fragment and isinstance(packet.l4, ip.UdpDatagram)


def test_parsed_values_are_what_the_constructors_make() -> None:
    # The parser sets the frozen dataclasses' slots directly; the values must not differ from
    # constructed ones in any field, in equality, hashing or frozenness.
    for raw in (
        bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=7) / TCP(sport=1, dport=2, options=[("MSS", 1460)]) / b"x"),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=53, dport=9) / b"answer"),
    ):
        packet = ip.parse_packet(raw)
        assert packet.l4 is not None
        l4 = type(packet.l4)(**{f.name: getattr(packet.l4, f.name) for f in dataclasses.fields(packet.l4)})
        fields = {f.name: getattr(packet, f.name) for f in dataclasses.fields(packet)}
        built = ip.Packet(**{**fields, "l4": l4})
        assert packet == built and hash(packet) == hash(built) and repr(packet) == repr(built)
        with pytest.raises(dataclasses.FrozenInstanceError):
            packet.ttl = 1  # type: ignore[misc]


def test_malformed_packets() -> None:
    tcp = bytes(IP() / TCP())
    cases = [
        b"\x50" + tcp[1:],  # version 5
        b"\x44" + tcp[1:],  # IHL 4
        tcp[:2] + b"\x00\x10" + tcp[4:],  # total length below the header
        tcp[:32] + b"\x40" + tcp[33:],  # TCP data offset 4
        bytes(IP() / UDP())[:24] + b"\x00\x04" + bytes(8)[:2],  # UDP length 4
        bytes(IP() / UDP(len=40)),  # UDP length past the IP packet
    ]
    chain = IPv6()
    for _ in range(ip.MAX_IPV6_EXT_HEADERS + 1):
        chain = chain / IPv6ExtHdrDestOpt()
    cases.append(bytes(chain / UDP()))
    for raw in cases:
        with pytest.raises(Malformed):
            ip.parse_packet(raw)


@st.composite
def scapy_packets(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    net: Packet
    l4: Packet
    if v6:
        net = IPv6(src=draw(st.ip_addresses(v=6)).compressed, dst=draw(st.ip_addresses(v=6)).compressed)
        if draw(st.booleans()):
            net = net / IPv6ExtHdrHopByHop()
    else:
        src, dst = (str(draw(st.ip_addresses(v=4))) for _ in range(2))
        net = IP(src=src, dst=dst, ttl=draw(st.integers(1, 255)))
    payload = draw(st.binary(max_size=200))
    sport, dport = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        l4 = TCP(
            seq=draw(st.integers(0, 2**32 - 1)),
            ack=draw(st.integers(0, 2**32 - 1)),
            flags=draw(st.integers(0, 0xFF)),
            window=draw(st.integers(0, 0xFFFF)),
            options=[("NOP", None)] * draw(st.integers(0, 8)),
            sport=sport,
            dport=dport,
        )
    else:
        l4 = UDP(sport=sport, dport=dport)
    return bytes(net / l4 / Raw(payload))


@given(scapy_packets())
def test_hypothesis_packets_match_scapy(raw: bytes) -> None:
    packet = check_against_scapy(raw)
    assert packet.l4 is not None


@given(st.binary(max_size=120))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    for prefix in (b"\x45", b"\x60"):
        with contextlib.suppress(ParseError):
            ip.parse_packet(prefix + data)


@given(urgent=st.integers(0, 0xFFFF), tsval=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       signature=st.sampled_from([None, 19, 29]), nops=st.integers(0, 3))
def test_urgent_pointer_and_the_options_a_receiver_reads(urgent: int, tsval: int | None, signature: int | None,
                                                          nops: int) -> None:
    options: list[tuple[object, object]] = [("NOP", None)] * nops
    if tsval is not None:
        options.append(("Timestamp", (tsval, 0)))
    if signature is not None:
        options.append((signature, b"\x00" * 16))
    raw = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / TCP(flags="PAU", urgptr=urgent, options=options) / b"x")
    seg = ip.parse_packet(raw).l4
    assert isinstance(seg, ip.TcpSegment) and seg.urgent == urgent
    assert ip.tcp_options(seg.options) == ip.TcpOptions(tsval, signature is not None)


def test_a_malformed_option_ends_the_walk_as_in_linux() -> None:
    ts = bytes([8, 10]) + (7).to_bytes(4, "big") + bytes(4)
    assert ip.tcp_options(ts).tsval == 7
    assert ip.tcp_options(bytes([1, 1]) + ts).tsval == 7  # NOPs
    assert ip.tcp_options(bytes([0]) + ts).tsval is None  # END
    assert ip.tcp_options(bytes([3, 1]) + ts).tsval is None  # a length below 2
    assert ip.tcp_options(bytes([3, 40]) + ts).tsval is None  # past the end
    assert ip.tcp_options(bytes([8, 9]) + ts[2:]) == ip.NO_OPTIONS  # a timestamp of the wrong size
    assert ip.tcp_options(bytes([19, 18]) + bytes(16)).signed


@given(mss=st.integers(0, 0xFFFF), tsval=st.integers(0, 2**32 - 1), tsecr=st.integers(0, 2**32 - 1),
       wscale=st.integers(0, 14))
def test_the_options_of_a_linux_syn(mss: int, tsval: int, tsecr: int, wscale: int) -> None:
    # The layout Linux writes on a SYN and a SYN-ACK (read by a shortcut), built by scapy.
    options = [("MSS", mss), ("SAckOK", b""), ("Timestamp", (tsval, tsecr)), ("NOP", None), ("WScale", wscale)]
    raw = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / TCP(flags="S", options=options))
    seg = ip.parse_packet(raw).l4
    assert isinstance(seg, ip.TcpSegment) and len(seg.options) == 20
    assert ip.tcp_options(seg.options) == ip.TcpOptions(tsval, False)


# Option bytes around the two shapes tcp_options reads by a shortcut (a NOP-NOP-timestamp block, a
# Linux SYN's options), one byte changed anywhere: the shortcuts must agree with the walk.
_SHAPES = (bytes([1, 1, 8, 10]) + bytes(range(1, 9)),
           bytes([2, 4, 5, 180, 4, 2, 8, 10]) + bytes(range(1, 9)) + bytes([1, 3, 3, 7]))


@given(shape=st.sampled_from(_SHAPES), at=st.integers(0, 19), value=st.integers(0, 255),
       cut=st.integers(0, 2))
def test_option_shortcuts_agree_with_the_walk(shape: bytes, at: int, value: int, cut: int) -> None:
    options = bytearray(shape)
    options[at % len(shape)] = value
    data = bytes(options[:len(options) - cut])
    assert ip.tcp_options(data) == ip._walk_options(data)
