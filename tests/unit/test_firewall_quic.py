"""The UDP/QUIC rules, pure: which datagrams the u32 tests send to the queue, checked against real
datagrams (aioquic's client for v1 and v2, DNS queries, short headers, IP options, IPv6 extension
headers) with an evaluator of xt_u32's semantics; the chain layout; the fallback without u32. The
same rules meet the real kernel in tests/integration/test_quic.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import DNS, DNSQR, IP, UDP, IPv6, IPv6ExtHdrDestOpt, raw  # type: ignore[attr-defined]
from scapy.layers.inet import IPOption_NOP

from netguard.daemon import firewall
from netguard.daemon.firewall import Options, build_rules


def u32(expression: str, packet: bytes) -> bool:
    """xt_u32's evaluation (net/netfilter/xt_u32.c): tests joined by &&; a location is a number
    followed by & masks, << and >> shifts and @ (move the base by the value so far, read the word
    at base + number); a read past the end fails the test; a value or lo:hi range, several by ","."""
    for test in expression.split("&&"):
        location, values = test.split("=")
        first, *rest = re.findall(r"(&|<<|>>|@)?(0x[0-9A-Fa-f]+|\d+)", location)
        at, pos = 0, int(first[1], 0)
        if pos + 4 > len(packet):
            return False
        val = int.from_bytes(packet[pos : pos + 4], "big")
        for op, number in rest:
            n = int(number, 0)
            if op == "&":
                val &= n
            elif op == "<<":
                val = (val << n) & 0xFFFFFFFF
            elif op == ">>":
                val >>= n
            else:
                at += val
                if at + n + 4 > len(packet):
                    return False
                val = int.from_bytes(packet[at + n : at + n + 4], "big")
        ranges = [v.partition(":") for v in values.split(",")]
        if not any(int(lo, 0) <= val <= int(hi or lo, 0) for lo, _, hi in ranges):
            return False
    return True


def chains(family: firewall.Family, **kw: object) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in build_rules(family, Options(**kw)).splitlines():  # type: ignore[arg-type]
        if line.startswith("-A "):
            chain, rule = line[3:].split(" ", 1)
            out.setdefault(chain, []).append(rule)
    return out


def queued(family: firewall.Family, packet: bytes, allowed: bool = False, dport: int | None = None) -> bool:
    """Whether NETGUARD-UDP (and the NETGUARD-QUIC it goes to) queues a datagram of a flow that is
    undecided or (allowed) already allowed, following the rules as built."""
    rules = chains(family)

    def match(rule: str) -> bool:
        tests = re.findall(r"(!)? ?--u32 (\S+)", rule)
        for invert, expression in tests:
            if u32(expression, packet) == bool(invert):
                return False
        m = re.search(r"--length (\d+):(\d+)", rule)
        if m and not int(m[1]) <= len(packet) <= int(m[2]):
            return False
        if "--dport" in rule and dport != int(rule.split("--dport ")[1].split()[0]):
            return False
        return not ("-m connmark ! --mark 0x0/" in rule and not allowed)

    chain = "NETGUARD-UDP"
    while True:
        for rule in rules[chain]:
            if match(rule):
                if "NFQUEUE" in rule:
                    return True
                chain = rule.split("-g ")[1]
                break
        else:
            return False


def aioquic_datagrams(version: int, big: bool = False) -> list[bytes]:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, server_name="ghcr.io", original_version=version,
                               quantum_readiness_test=big)
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.2", 443), now=0.0)
    return [d for d, _ in conn.datagrams_to_send(now=0.0)]


def ip(family: int, payload: bytes, dport: int = 4433, options: bool = False, ext: bool = False) -> bytes:
    if family == 4:
        head = IP(dst="192.0.2.2", options=[IPOption_NOP()] * 8) if options else IP(dst="192.0.2.2")
        return bytes(raw(head / UDP(sport=40000, dport=dport) / payload))
    six = IPv6(dst="2001:db8::2")
    return bytes(raw((six / IPv6ExtHdrDestOpt() if ext else six) / UDP(sport=40000, dport=dport) / payload))


@pytest.mark.parametrize("family", firewall.FAMILIES)
@pytest.mark.parametrize("version", firewall.QUIC_VERSIONS)
def test_v1_and_v2_initials_are_queued_on_any_port(family: firewall.Family, version: int) -> None:
    for datagram in aioquic_datagrams(version, big=True):
        for dport in (443, 4433, 8443, 53):
            assert queued(family, ip(family, datagram, dport), dport=dport)
    if family == 4:
        assert queued(4, ip(4, aioquic_datagrams(version)[0], options=True))  # IPv4 options move the payload


@pytest.mark.parametrize("family", firewall.FAMILIES)
def test_any_long_header_packet_type_of_v1_and_v2_is_queued(family: firewall.Family) -> None:
    # An Initial may follow a 0-RTT or Handshake packet in the same datagram.
    for version in firewall.QUIC_VERSIONS:
        for first in range(0x80, 0x100, 0x10):
            payload = bytes((first,)) + version.to_bytes(4, "big") + bytes(60)
            assert queued(family, ip(family, payload), dport=4433)


@pytest.mark.parametrize("family", firewall.FAMILIES)
def test_other_versions_are_queued_on_443_and_on_allowed_flows_only(family: firewall.Family) -> None:
    draft = b"\xc3" + (0xFF00001D).to_bytes(4, "big") + bytes(1200)
    assert queued(family, ip(family, draft, 443), dport=443)
    assert not queued(family, ip(family, draft, 4433), dport=4433)
    assert queued(family, ip(family, draft, 4433), allowed=True, dport=4433)
    # ESP in UDP with strongSwan's SPI range (0xc0000000-0xcfffffff) looks like this: not queued.
    esp = (0xC1234567).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(1300)
    assert not queued(family, ip(family, esp, 4500), dport=4500)


@pytest.mark.parametrize("family", firewall.FAMILIES)
def test_ordinary_udp_is_not_queued(family: firewall.Family) -> None:
    # DNS IDs with and without the first bit (a query's flow is never decided: netguard judges the
    # answers, so the allowed-flow rule never meets it).
    for qid in (0x0001, 0x8001, 0xFFFF, 0x6B33):
        query = bytes(raw(DNS(id=qid, rd=1, qd=DNSQR(qname="ghcr.io"))))
        assert not queued(family, ip(family, query, 53), dport=53)
    short = b"\x41" + bytes(1300)  # QUIC short header (an allowed connection's data)
    assert not queued(family, ip(family, short, 443), allowed=True, dport=443)
    wireguard = b"\x04\x00\x00\x00" + bytes(1400)
    assert not queued(family, ip(family, wireguard, 51820), dport=51820)


@given(payload=st.binary(min_size=5, max_size=1400))
def test_random_payloads_are_queued_only_when_they_look_like_v1_or_v2(payload: bytes) -> None:
    expected = payload[0] & 0x80 == 0x80 and int.from_bytes(payload[1:5], "big") in firewall.QUIC_VERSIONS
    for family in firewall.FAMILIES:
        assert queued(family, ip(family, payload), dport=4433) is expected


@pytest.mark.parametrize("family", firewall.FAMILIES)
def test_a_send_that_may_be_a_gso_batch_is_queued_whole(family: firewall.Family) -> None:
    # Two 1200-byte datagrams in one send: u32 sees the first (a short header); the batch is queued.
    batch = b"\x41" + bytes(1199) + bytes(1200)
    assert queued(family, ip(family, batch), dport=4433)
    assert not queued(family, ip(family, batch[:2399]), dport=4433)
    assert len(ip(family, batch)) == firewall.GSO_GUARD_BYTES[family]


def test_ipv6_extension_headers_are_queued() -> None:
    # u32 cannot find the UDP payload behind them.
    assert queued(6, ip(6, b"\x00" * 40, ext=True), dport=4433)
    assert not queued(6, ip(6, b"\x00" * 40), dport=4433)


def test_chain_layout_and_fallback() -> None:
    for family in firewall.FAMILIES:
        rules = chains(family)
        assert rules["NETGUARD-UDP"][-1].endswith("-g NETGUARD-QUIC")
        assert rules["NETGUARD-QUIC"][0].startswith("-m connmark ! --mark 0x0/0x700000 -j NFQUEUE")
        assert rules["NETGUARD-QUIC"][-1] == "-p udp --dport 443 -j NFQUEUE --queue-num 7413"
        # Without u32: all of UDP 443, nothing else.
        fallback = chains(family, quic_u32=False)
        assert fallback["NETGUARD-UDP"] == ["-p udp --dport 443 -j NFQUEUE --queue-num 7413"]
        assert "NETGUARD-QUIC" not in fallback
        assert ":NETGUARD-QUIC - [0:0]" not in build_rules(family, Options(quic_u32=False))
