"""DNS: corpus answers (UDP and TCP), name rules, truncations, blocked replies read back by scapy,
and hypothesis-built responses (random answer sets, compressed) cross-checked against scapy."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wirecorpus import CORPUS, corpus_files, corpus_table, read_pcap

from netguard.wire import dns, ip
from netguard.wire.errors import Malformed, ParseError, Truncated


def corpus_messages(path: Path) -> list[bytes]:
    """DNS messages of a corpus file: UDP payloads, or TCP streams split by their length prefix."""
    messages: list[bytes] = []
    streams: dict[tuple[int, int], bytes] = {}
    for raw in read_pcap(path):
        packet = ip.parse_packet(raw)
        if isinstance(packet.l4, ip.UdpDatagram):
            messages.append(packet.l4.payload)
        elif isinstance(packet.l4, ip.TcpSegment) and packet.l4.payload:
            key = (packet.l4.sport, packet.l4.dport)
            complete, rest = dns.split_tcp_messages(streams.get(key, b"") + packet.l4.payload)
            streams[key] = rest
            messages.extend(complete)
    assert all(rest == b"" for rest in streams.values())
    return messages


def readme_expectations() -> tuple[list[str], bytes, bytes]:
    """The CNAME chain and the server addresses the corpus README states."""
    text = (CORPUS / "README.md").read_text()
    v4, v6 = re.search(r"address (\S+) / (\S+)\)", text).groups()  # type: ignore[union-attr]
    notes = corpus_table()["dns-cname-udp.pcap"]["notes"]
    chain = re.findall(r"[a-z0-9.-]+\.test", notes)
    return chain, ipaddress.ip_address(v4).packed, ipaddress.ip_address(v6).packed


DNS_FILES = corpus_files("dns-")


@pytest.mark.parametrize("path", DNS_FILES, ids=lambda p: p.name)
def test_corpus_answers_match_readme(path: Path) -> None:
    chain, v4, v6 = readme_expectations()
    assert chain == ["dl.allowed.test", "edge.allowed.test", "registry.blocked.test"]
    query, response = (dns.parse_message(m) for m in corpus_messages(path))
    assert not query.is_response and response.is_response
    assert query.id == response.id
    assert response.questions == query.questions
    assert response.questions[0].name == chain[0]
    answers = response.answers
    assert [a.name for a in answers] == chain
    assert [a.data for a in answers[:-1]] == chain[1:]
    assert all(a.rtype == dns.TYPE_CNAME for a in answers[:-1])
    last = answers[-1]
    assert last.data == (v4 if last.rtype == dns.TYPE_A else v6)
    assert response.questions[0].qtype == last.rtype
    assert all(a.ttl == 60 for a in answers)
    assert response.has_edns and query.has_edns


@pytest.mark.parametrize("path", DNS_FILES, ids=lambda p: p.name)
def test_every_truncation_is_truncated(path: Path) -> None:
    for message in corpus_messages(path):
        for cut in range(len(message)):
            with pytest.raises(Truncated):
                dns.parse_message(message[:cut])


def test_tcp_framing_several_messages_and_a_partial_one() -> None:
    messages = corpus_messages(CORPUS / "dns-cname-tcp.pcap")
    stream = b"".join(dns.frame_tcp(m) for m in messages)
    for cut in range(len(stream) + 1):
        complete, rest = dns.split_tcp_messages(stream[:cut])
        assert b"".join(dns.frame_tcp(m) for m in complete) + rest == stream[:cut]
        assert complete == messages[: len(complete)]
    with pytest.raises(Malformed):
        dns.split_tcp_messages(b"\x00\x05hello")


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


def name(*labels: bytes) -> bytes:
    return b"".join(struct.pack("!B", len(label)) + label for label in labels) + b"\x00"


QUESTION = name(b"a", b"example") + b"\x00\x01\x00\x01"


def test_compression_pointer_backwards_is_followed() -> None:
    # answer name points at the question name (offset 12); CNAME rdata points into its own owner
    rdata = b"\x01b" + b"\xc0\x0e"  # b.example (offset 14 = "example" label)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 30, len(rdata)) + rdata
    message = dns.parse_message(header(an=1) + QUESTION + answer)
    assert message.answers == (dns.ResourceRecord("a.example", 5, 1, 30, "b.example"),)


@pytest.mark.parametrize(
    "answer_name",
    [
        b"\xc0\x40",  # forward pointer (past the end)
        b"\xc0\x1b",  # points at itself
        b"\x01x\xc0\x1b",  # points at its own first label
    ],
)
def test_pointers_that_do_not_point_backwards(answer_name: bytes) -> None:
    answer = answer_name + struct.pack("!HHIH", 1, 1, 30, 4) + b"\x01\x02\x03\x04"
    with pytest.raises(Malformed):
        dns.parse_message(header(an=1) + QUESTION + answer)


def test_pointer_loop_is_malformed() -> None:
    # question name: label "a" then pointer to offset 12 (itself): loops without the backwards rule
    with pytest.raises(Malformed):
        dns.parse_message(header() + b"\x01a\xc0\x0c\x00\x01\x00\x01")


def test_label_and_name_limits() -> None:
    ok = name(b"x" * 63) + b"\x00\x01\x00\x01"
    assert dns.parse_message(header() + ok).questions[0].name == "x" * 63
    with pytest.raises(Malformed):  # 64 has the top bits 01: an extended label type
        dns.parse_message(header() + b"\x40" + b"x" * 64 + b"\x00\x00\x01\x00\x01")
    long_name = name(*([b"x" * 63] * 4))  # 4 * 64 + 1 = 257 wire bytes
    with pytest.raises(Malformed):
        dns.parse_message(header() + long_name + b"\x00\x01\x00\x01")
    exactly = name(*([b"x" * 63] * 3), b"y" * 61)  # 255 wire bytes
    assert len(dns.parse_message(header() + exactly + b"\x00\x01\x00\x01").questions[0].name) == 253


def test_odd_label_bytes_are_escaped() -> None:
    message = dns.parse_message(header() + name(b"a.b", b"c\\d", b"\xff ") + b"\x00\x01\x00\x01")
    assert message.questions[0].name == "a\\046b.c\\092d.\\255\\032"


def test_each_byte_alone_in_a_label() -> None:
    # One odd byte among plain ones must still be escaped (the check runs on the whole name at once).
    for byte in range(256):
        label = b"a" + bytes([byte]) + b"z"
        got = dns.parse_message(header() + name(label, b"test") + b"\x00\x01\x00\x01").questions[0].name
        plain = 0x21 <= byte <= 0x7E and byte not in b".\\"
        assert got == "a" + (chr(byte) if plain else f"\\{byte:03d}") + "z.test"


def test_other_types_are_skipped_and_bad_rdata_is_malformed() -> None:
    mx = b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 30, 4) + b"\x00\x0a\xc0\x0c"
    txt = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 30, 3) + b"\x02hi"
    message = dns.parse_message(header(an=2) + QUESTION + mx + txt)
    assert [(a.rtype, a.data) for a in message.answers] == [(15, None), (16, None)]
    bad_a = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 5) + b"\x01\x02\x03\x04\x05"
    with pytest.raises(Malformed):
        dns.parse_message(header(an=1) + QUESTION + bad_a)
    cname_past_rdata = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 30, 2) + b"\x03abc\x00"
    with pytest.raises(Malformed):
        dns.parse_message(header(an=1) + QUESTION + cname_past_rdata)


def test_wrong_address_length_is_malformed_even_when_cut_short() -> None:
    # No further bytes can make a 5-byte A or a 4-byte AAAA record valid: Malformed, not Truncated.
    for rtype, rdlength in ((1, 5), (28, 4)):
        cut = b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 30, rdlength) + b"\x01"
        with pytest.raises(Malformed):
            dns.parse_message(header(an=1) + QUESTION + cut)
    whole_but_cut = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + b"\x01"
    with pytest.raises(Truncated):
        dns.parse_message(header(an=1) + QUESTION + whole_but_cut)


def test_record_count_bound() -> None:
    with pytest.raises(Malformed):
        dns.parse_message(header(qd=dns.MAX_RECORDS + 1))


def scapy_dns() -> Any:
    from scapy.layers import dns as scapy_dns_module

    return scapy_dns_module


@pytest.mark.parametrize("path", DNS_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize(("rcode", "code"), [("NXDOMAIN", 3), ("REFUSED", 5)])
def test_blocked_reply_with_ede(path: Path, rcode: str, code: int) -> None:
    s = scapy_dns()
    for original in corpus_messages(path):  # from the query and from the response
        text = "blocked by netguard policy 'corp': registry.blocked.test"
        reply = dns.build_blocked_reply(original, rcode=rcode, info_code=dns.EDE_BLOCKED, text=text)
        parsed = s.DNS(reply)
        source = dns.parse_message(original)
        assert parsed.id == source.id
        assert (parsed.qr, parsed.rcode, parsed.ancount, parsed.nscount) == (1, code, 0, 0)
        assert parsed.qd[0].qname == b"dl.allowed.test."
        opt = parsed.ar[0]
        assert isinstance(opt, s.DNSRROPT)
        ede = opt.rdata[0]
        assert isinstance(ede, s.EDNS0ExtendedDNSError)
        assert (ede.optcode, ede.info_code, ede.extra_text) == (15, 15, text.encode())
        ours = dns.parse_message(reply)
        assert ours.questions == source.questions and ours.has_edns and ours.rcode == code


def test_blocked_reply_without_edns_has_no_opt() -> None:
    query = header(flags=0x0100) + QUESTION
    reply = dns.build_blocked_reply(query, rcode="REFUSED", info_code=dns.EDE_PROHIBITED, text="x")
    parsed = dns.parse_message(reply)
    assert (parsed.is_response, parsed.rcode, parsed.has_edns, parsed.flags & 0x0100) == (True, 5, False, 0x0100)
    assert reply[12:] == QUESTION


def test_blocked_reply_text_is_bounded_and_rcode_checked() -> None:
    s = scapy_dns()
    query = bytes(s.DNS(id=7, rd=1, qd=s.DNSQR(qname="x.test"), ar=s.DNSRROPT(rclass=4096, z=0x8000)))
    reply = dns.build_blocked_reply(query, rcode="NXDOMAIN", info_code=18, text="é" * 300)
    ede = s.DNS(reply).ar[0].rdata[0]
    assert ede.info_code == 18
    assert len(ede.extra_text) <= dns.MAX_EXTRA_TEXT
    assert ede.extra_text.decode() == "é" * (dns.MAX_EXTRA_TEXT // 2)
    assert s.DNS(reply).ar[0].z == 0x8000  # DO bit copied
    with pytest.raises(ValueError):
        dns.build_blocked_reply(query, rcode="SERVFAIL", info_code=15, text="")


# --- hypothesis: scapy-built responses with random answers, compressed by scapy ---

_labels = st.sampled_from(["a", "b", "cdn", "edge", "registry", "example", "test", "x-1"])
_names = st.lists(_labels, min_size=1, max_size=5).map(".".join)


@st.composite
def scapy_responses(draw: st.DrawFn) -> bytes:
    s = scapy_dns()
    records = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT", "NS"]))
        owner = draw(_names)
        ttl = draw(st.integers(0, 2**31 - 1))
        if kind == "A":
            rdata: object = str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
        elif kind == "AAAA":
            rdata = str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))))
        elif kind in ("CNAME", "NS"):
            rdata = draw(_names)
        elif kind == "TXT":
            rdata = [draw(st.binary(max_size=30))]
        else:
            records.append(s.DNSRRMX(rrname=owner, ttl=ttl, preference=5, exchange=draw(_names)))
            continue
        records.append(s.DNSRR(rrname=owner, type=kind, ttl=ttl, rdata=rdata))
    packet = s.DNS(
        id=draw(st.integers(0, 0xFFFF)),
        qr=1,
        rd=1,
        ra=1,
        qd=[s.DNSQR(qname=draw(_names), qtype=draw(st.sampled_from(["A", "AAAA"])))],
        an=records,
        ar=[s.DNSRROPT(rclass=1232)] if draw(st.booleans()) else [],
    )
    plain = bytes(packet)
    if not draw(st.booleans()):
        return plain
    compressed = bytes(s.dns_compress(packet))
    # scapy's compressor sometimes emits a pointer one byte off, into a label (seen with repeated
    # owner names); such output is not a valid message, so the oracle only uses compressed bytes
    # that scapy itself reads back to the same names as the uncompressed message.
    names = _scapy_names(compressed)
    return compressed if names is not None and names == _scapy_names(plain) else plain


def _scapy_names(wire: bytes) -> list[bytes] | None:
    """Every name scapy reads in `wire` (owners and name-valued rdata), or None if it cannot."""
    s = scapy_dns()
    try:
        parsed = s.DNS(wire)
        names = [q.qname for q in parsed.qd] + [rr.rrname for rr in parsed.an]
        names += [rr.exchange if rr.type == 15 else rr.rdata for rr in parsed.an if rr.type in (2, 5, 15)]
    except Exception:  # scapy failing to read its own output counts as a mismatch
        return None
    return names


@given(scapy_responses())
def test_hypothesis_responses_match_scapy(wire: bytes) -> None:
    s = scapy_dns()
    theirs = s.DNS(wire)
    ours = dns.parse_message(wire)
    assert ours.id == theirs.id and ours.is_response
    assert [q.name + "." for q in ours.questions] == [q.qname.decode() for q in theirs.qd]
    assert len(ours.answers) == len(theirs.an)
    for mine, rr in zip(ours.answers, theirs.an, strict=True):
        assert mine.name + "." == rr.rrname.decode()
        assert mine.rtype == rr.type
        assert mine.ttl == rr.ttl
        if rr.type == 1:
            assert mine.data == ipaddress.IPv4Address(rr.rdata).packed
        elif rr.type == 28:
            assert mine.data == ipaddress.IPv6Address(rr.rdata).packed
        elif rr.type == 5:
            assert mine.data == rr.rdata.decode().rstrip(".")
        else:
            assert mine.data is None
    assert ours.has_edns == any(isinstance(r, s.DNSRROPT) for r in theirs.ar)
    for cut in range(0, len(wire), 5):
        with pytest.raises(Truncated):
            dns.parse_message(wire[:cut])


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        dns.parse_message(data)


def test_names_reusing_earlier_names() -> None:
    # question a.example at 12; answer 1: "\xff" + pointer to "example" (14); answer 2: pointer to
    # answer 1's name; answer 3: label "c" + pointer to answer 1's name (a cached name as suffix).
    q = name(b"a", b"example") + b"\x00\x01\x00\x01"
    a1_name = b"\x01\xff\xc0\x0e"
    a1 = a1_name + struct.pack("!HHIH", 1, 1, 5, 4) + b"\x01\x02\x03\x04"
    a1_offset = 12 + len(q)
    a2 = struct.pack("!H", 0xC000 | a1_offset) + struct.pack("!HHIH", 1, 1, 5, 4) + b"\x05\x06\x07\x08"
    a3 = b"\x01c" + struct.pack("!H", 0xC000 | 12) + struct.pack("!HHIH", 5, 1, 5, 2) + b"\xc0\x0c"
    message = dns.parse_message(header(an=3) + q + a1 + a2 + a3)
    assert [a.name for a in message.answers] == ["\\255.example", "\\255.example", "c.a.example"]
    assert message.answers[2].data == "a.example"
    # a cached suffix still counts towards the 255-byte limit
    long_q = name(*([b"x" * 63] * 3), b"y" * 61)  # 255 wire bytes
    answer = b"\x01z" + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + bytes(4)
    with pytest.raises(Malformed):
        dns.parse_message(header(an=1) + long_q + b"\x00\x01\x00\x01" + answer)
