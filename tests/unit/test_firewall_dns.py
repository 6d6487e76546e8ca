"""The rules that queue DNS answers from ports other than 53: where they sit, and their u32 tests run
by a model of xt_u32 (net/netfilter/xt_u32.c, with its @ operator) on packets scapy builds: DNS
responses over UDP and TCP (IP options, TCP options, both families) match; queries, other opcodes,
several questions and the first packets of QUIC, TLS and HTTP do not; and the test agrees with the
engine's own (wire.dns.looks_like_response) on any payload."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, IPv6, IPv6ExtHdrDestOpt, raw  # type: ignore[attr-defined]

from netguard.daemon import firewall
from netguard.daemon.firewall import DNS_RESPONSE_SHAPE, Options, build_rules
from netguard.lab.lab import python_client_hello
from netguard.wire import dns

_TOKEN = re.compile(r"0x[0-9a-fA-F]+|\d+|&&|&|<<|>>|@|=|:|,")


def u32(expression: str, packet: bytes) -> bool:
    """xt_u32's match: tests joined by &&; a location is a number (offset) then &mask, <<n, >>n and
    @n (add the value so far to the base, read 4 bytes at base + n); any read past the end fails
    the match; the value is compared with numbers or ranges joined by ','."""
    for test in expression.split("&&"):
        location, values = test.split("=")
        tokens = _TOKEN.findall(location)
        at, pos = 0, int(tokens[0], 0)
        if len(packet) < 4 or pos > len(packet) - 4:
            return False
        val = int.from_bytes(packet[pos:pos + 4], "big")
        for op, number in zip(tokens[1::2], (int(t, 0) for t in tokens[2::2]), strict=True):
            if op == "&":
                val &= number
            elif op == "<<":
                val = (val << number) & 0xFFFFFFFF
            elif op == ">>":
                val >>= number
            else:  # "@"
                at += val
                if at + 4 > len(packet) or number > len(packet) - at - 4:
                    return False
                val = int.from_bytes(packet[at + number:at + number + 4], "big")
        ranges = [v.partition(":") for v in values.split(",")]
        if not any(int(lo, 0) <= val <= int(hi or lo, 0) for lo, _, hi in ranges):
            return False
    return True


def test_the_model_reads_tcp_payload_with_at() -> None:
    # The man page's example: TCP payload bytes 8..11 are 1, 2, 5 or 8.
    example = "6&0xFF=6&&0>>22&0x3C@12>>26&0x3C@8=1,2,5,8"
    hit = raw(IP(dst="192.0.2.2") / TCP(options=[("NOP", None)] * 8) / (bytes(8) + b"\x00\x00\x00\x05"))
    miss = raw(IP(dst="192.0.2.2") / TCP() / (bytes(8) + b"\x00\x00\x00\x06"))
    assert u32(example, hit) and not u32(example, miss)


def test_where_the_rules_sit() -> None:
    for family in firewall.FAMILIES:
        text = build_rules(family, Options())
        lines = [r for r in text.splitlines() if r.startswith("-A NETGUARD-DNS ")]
        # After the port 53 rules (which queue every answer from there) and the server packets of
        # undecided TCP flows (NETGUARD-REPLY): the first replies of a flow (connbytes first: a flow
        # past them fails there), reply direction, go to the tests. Last in the chain.
        port53 = [i for i, r in enumerate(lines) if "--sport 53" in r]
        reply = next(i for i, r in enumerate(lines) if r.endswith("-g NETGUARD-REPLY"))
        assert len(port53) == 2 and max(port53) < reply < len(lines) - 1
        assert lines[-1] == (f"-A NETGUARD-DNS -m connbytes --connbytes 0:{firewall.DNS_OTHER_PORT_REPLIES} "
                            "--connbytes-dir reply --connbytes-mode packets -m conntrack --ctdir REPLY "
                            "-g NETGUARD-DNS-ANY")
        tests = [r for r in text.splitlines() if r.startswith("-A NETGUARD-DNS-ANY")]
        assert tests == [f"-A NETGUARD-DNS-ANY -p {proto} -m u32 --u32 {DNS_RESPONSE_SHAPE[(proto, family)]} "
                         "-j NFQUEUE --queue-num 7413" for proto in ("udp", "tcp")]
        assert ":NETGUARD-DNS-ANY - [0:0]" in text
        without = build_rules(family, Options(dns_any_port=False))
        assert "NETGUARD-DNS-ANY" not in without
        assert not any("u32" in r for r in without.splitlines() if r.startswith("-A NETGUARD-DNS"))


def response(qr: int = 1, opcode: int = 0, questions: int = 1) -> bytes:
    qd = [DNSQR(qname=f"q{i}.example", qtype="A") for i in range(questions)]
    return raw(DNS(id=0x4242, qr=qr, opcode=opcode, rd=1, ra=1, rcode=0, qd=qd,
                   an=[DNSRR(rrname="q0.example", rdata="192.0.2.7")] if qr else []))


def packets(payload: bytes, proto: str, family: int, options: int = 0) -> bytes:
    if proto == "tcp":
        l4 = TCP(sport=5353, dport=40000, flags="PA", options=[("NOP", None)] * (4 * options))
        data = len(payload).to_bytes(2, "big") + payload
    else:
        l4, data = UDP(sport=5353, dport=40000), payload
    if family == 4:
        ip = IP(src="192.0.2.1", dst="192.0.2.2", options=[b"\x01" * (4 * options)] if options else [])
        return raw(ip / l4 / data)
    return raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / l4 / data)


@given(proto=st.sampled_from(["udp", "tcp"]), family=st.sampled_from([4, 6]), options=st.integers(0, 10))
def test_dns_responses_match(proto: str, family: int, options: int) -> None:
    expression = DNS_RESPONSE_SHAPE[(proto, family)]
    assert u32(expression, packets(response(), proto, family, options))
    for other in (response(qr=0), response(opcode=2), response(questions=2), response(questions=0)):
        assert not u32(expression, packets(other, proto, family, options))


def test_an_ipv6_extension_header_is_not_read_as_the_transport_header() -> None:
    packet = raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP(sport=5353) / response())
    assert not u32(DNS_RESPONSE_SHAPE[("udp", 6)], packet)


def test_first_packets_of_other_protocols_do_not_match() -> None:
    quic_initial = bytes([0xC3, 0, 0, 0, 1, 8]) + bytes(8) + bytes(1200)
    hello = python_client_hello("registry-1.docker.io")
    http = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    for family, ip in ((4, IP(src="192.0.2.1", dst="192.0.2.2")), (6, IPv6(src="2001:db8::1", dst="2001:db8::2"))):
        assert not u32(DNS_RESPONSE_SHAPE[("udp", family)], raw(ip / UDP(sport=443) / quic_initial))
        for payload in (hello, http, b"SSH-2.0-OpenSSH_9.2\r\n"):
            assert not u32(DNS_RESPONSE_SHAPE[("tcp", family)], raw(ip / TCP(sport=443, flags="PA") / payload))


@given(payload=st.binary(min_size=0, max_size=24), family=st.sampled_from([4, 6]))
def test_the_rule_and_the_engine_agree_on_the_header(payload: bytes, family: int) -> None:
    ip = IP(src="192.0.2.1", dst="192.0.2.2") if family == 4 else IPv6(src="2001:db8::1", dst="2001:db8::2")
    udp = raw(ip / UDP(sport=5353, dport=40000) / payload)
    tcp = raw(ip / TCP(sport=5353, dport=40000, flags="PA") / payload)
    # The engine also wants a whole header; the rule tests the 4 bytes it needs.
    assert u32(DNS_RESPONSE_SHAPE[("udp", family)], udp) == (len(payload) >= 6 and payload[2] & 0xF8 == 0x80
                                                             and payload[4:6] == b"\x00\x01")
    if len(payload) >= dns.HEADER_LEN:
        assert u32(DNS_RESPONSE_SHAPE[("udp", family)], udp) == dns.looks_like_response(payload)
    if len(payload) >= 2 + dns.HEADER_LEN:
        assert u32(DNS_RESPONSE_SHAPE[("tcp", family)], tcp) == dns.looks_like_response(payload, 2)
