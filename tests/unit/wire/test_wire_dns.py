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


# --- SVCB / HTTPS (RFC 9460): scapy's DNSRRSVCB and DNSRRHTTPS are the oracle ---

_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def _svc_params(draw: st.DrawFn) -> list[Any]:
    s = scapy_dns()
    params = []
    # Keys in any order and repeated: RFC 9460 clients call that malformed, but a lax one may not,
    # so every hint must be seen whatever the order.
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from([0, 1, 3, 4, 5, 6, 7, 9]))
        if key == 4:
            value: object = draw(st.lists(_v4, min_size=1, max_size=4))
        elif key == 6:
            value = draw(st.lists(_v6, min_size=1, max_size=3))
        elif key == 1:
            value = [b"h2", b"h3"][: draw(st.integers(1, 2))]
        elif key == 3:
            value = draw(st.integers(0, 0xFFFF))
        elif key == 0:
            value = [1, 4]
        else:
            value = draw(st.binary(max_size=40))
        params.append(s.SvcParam(key=key, value=value))
    return params


@st.composite
def scapy_svcb_responses(draw: st.DrawFn) -> bytes:
    s = scapy_dns()

    def svcb(owner: str) -> Any:
        cls = draw(st.sampled_from([s.DNSRRSVCB, s.DNSRRHTTPS]))
        return cls(rrname=owner, ttl=draw(st.integers(0, 2**31 - 1)),
                   svc_priority=draw(st.sampled_from([0, 1, 2, 65535])),
                   target_name=draw(st.one_of(st.just("."), _names)), svc_params=draw(_svc_params()))

    qname = draw(_names)
    answers = [svcb(draw(st.one_of(st.just(qname), _names))) for _ in range(draw(st.integers(1, 4)))]
    extra = [svcb(draw(_names)) for _ in range(draw(st.integers(0, 2)))]
    extra += [s.DNSRR(rrname=draw(_names), type="A", rdata=draw(_v4)) for _ in range(draw(st.integers(0, 2)))]
    extra += [s.DNSRR(rrname=draw(_names), type="AAAA", rdata=draw(_v6)) for _ in range(draw(st.integers(0, 1)))]
    extra += [s.DNSRR(rrname=draw(_names), type="TXT", rdata=[b"x"]) for _ in range(draw(st.integers(0, 1)))]
    extra = draw(st.permutations(extra))
    if draw(st.booleans()):
        extra.insert(draw(st.integers(0, len(extra))), s.DNSRROPT(rclass=1232))
    packet = s.DNS(id=draw(st.integers(0, 0xFFFF)), qr=1, rd=1, ra=1, qd=[s.DNSQR(qname=qname, qtype=65)],
                   an=answers, ar=extra)
    plain = bytes(packet)
    if not draw(st.booleans()):
        return plain
    compressed = bytes(s.dns_compress(packet))  # scapy compresses owners and TargetNames alike
    try:
        same = [r.target_name for r in s.DNS(compressed).an] == [r.target_name for r in s.DNS(plain).an]
    except Exception:
        same = False
    return compressed if same else plain


def _svcb_from_scapy(rr: Any) -> dns.Svcb:
    target = rr.target_name.decode().rstrip(".")
    hints: list[bytes] = []
    for p in rr.svc_params:
        if p.key in (4, 6):
            hints += [ipaddress.ip_address(a).packed for a in p.value]
    return dns.Svcb(rr.svc_priority, target, tuple(hints))


@given(scapy_svcb_responses())
def test_svcb_and_https_records_match_scapy(wire: bytes) -> None:
    s = scapy_dns()
    theirs = s.DNS(wire)
    ours = dns.parse_message(wire)
    assert len(ours.answers) == len(theirs.an)
    for mine, rr in zip(ours.answers, theirs.an, strict=True):
        assert (mine.name + ".", mine.rtype, mine.ttl) == (rr.rrname.decode(), rr.type, rr.ttl)
        assert mine.data == _svcb_from_scapy(rr)
    kept = [rr for rr in theirs.ar if rr.type in (1, 28, 64, 65)]
    assert len(ours.additional) == len(kept)
    for mine, rr in zip(ours.additional, kept, strict=True):
        assert (mine.name + ".", mine.rtype) == (rr.rrname.decode(), rr.type)
        if rr.type in (64, 65):
            assert mine.data == _svcb_from_scapy(rr)
        else:
            assert mine.data == ipaddress.ip_address(rr.rdata).packed
    assert ours.has_edns == any(isinstance(r, s.DNSRROPT) for r in theirs.ar)
    for cut in range(0, len(wire), 7):
        with pytest.raises(Truncated):
            dns.parse_message(wire[:cut])


def svcb_record(rdata: bytes, rtype: int = 65, owner: bytes = b"\xc0\x0c") -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata


def param(key: int, value: bytes) -> bytes:
    return struct.pack("!HH", key, len(value)) + value


HTTPS_QUESTION = name(b"a", b"example") + b"\x00\x41\x00\x01"


def test_svcb_target_root_and_alias_mode() -> None:
    alias = svcb_record(b"\x00\x00" + name(b"ghcr", b"io"))
    service_self = svcb_record(b"\x00\x01\x00" + param(4, bytes([10, 0, 0, 1])))
    message = dns.parse_message(header(an=2) + HTTPS_QUESTION + alias + service_self)
    assert [a.data for a in message.answers] == [dns.Svcb(0, "ghcr.io", ()),
                                                 dns.Svcb(1, "", (bytes([10, 0, 0, 1]),))]


def test_svcb_target_name_pointer_is_followed() -> None:
    # RFC 9460 forbids compressing TargetName; a pointer is read anyway, so no name hides behind one.
    rdata = b"\x00\x01" + b"\xc0\x0c" + param(6, bytes(15) + b"\x01")
    message = dns.parse_message(header(an=1) + HTTPS_QUESTION + svcb_record(rdata))
    assert message.answers[0].data == dns.Svcb(1, "a.example", (bytes(15) + b"\x01",))


@pytest.mark.parametrize("rdata", [
    b"\x00",  # no room for the priority
    b"\x00\x01" + b"\x04ghcr",  # TargetName runs past the record
    b"\x00\x01\x00" + b"\x00\x04\x00",  # SvcParam header cut
    b"\x00\x01\x00" + struct.pack("!HH", 4, 8) + bytes(4),  # value runs past the record
    b"\x00\x01\x00" + param(4, bytes(6)),  # ipv4hint not a multiple of 4 bytes
    b"\x00\x01\x00" + param(6, bytes(20)),  # ipv6hint not a multiple of 16 bytes
])
def test_bad_svcb_rdata_is_malformed(rdata: bytes) -> None:
    for section in ("an", "ar"):
        counts = {"an": 1} if section == "an" else {"ar": 1}
        with pytest.raises(Malformed):
            dns.parse_message(header(**counts) + HTTPS_QUESTION + svcb_record(rdata))
        # ... and with bytes after it, still Malformed (the rdata length is complete)
        with pytest.raises(Malformed):
            dns.parse_message(header(**counts) + HTTPS_QUESTION + svcb_record(rdata) + bytes(40))


def test_additional_address_records_are_kept_and_checked() -> None:
    a = svcb_record(bytes([1, 2, 3, 4]), rtype=1)
    aaaa = svcb_record(bytes(16), rtype=28)
    other = svcb_record(b"\x02hi", rtype=16)
    message = dns.parse_message(header(ar=3) + HTTPS_QUESTION + a + other + aaaa)
    assert [(r.rtype, r.data) for r in message.additional] == [(1, bytes([1, 2, 3, 4])), (28, bytes(16))]
    # Authority records are not additional ones.
    assert dns.parse_message(header(ns=1) + HTTPS_QUESTION + a).additional == ()
    with pytest.raises(Malformed):
        dns.parse_message(header(ar=1) + HTTPS_QUESTION + svcb_record(bytes(5), rtype=1))


def test_blocked_reply_from_the_parsed_message_is_the_same() -> None:
    for path in DNS_FILES:
        for original in corpus_messages(path):
            parsed = dns.parse_message(original)
            for text in ("", "netguard: x is blocked"):
                kw: dict[str, Any] = {"rcode": "NXDOMAIN", "info_code": dns.EDE_BLOCKED, "text": text}
                assert dns.build_blocked_reply(original, **kw, parsed=parsed) == dns.build_blocked_reply(original, **kw)


@given(st.binary(min_size=0, max_size=20))
def test_looks_like_response_is_the_header_shape(data: bytes) -> None:
    expected = len(data) >= 12 and data[2] >> 3 == 0x10 and data[4:6] == b"\x00\x01"
    assert dns.looks_like_response(data) == expected
    response = header(qd=1, flags=0x8180) + QUESTION
    assert dns.looks_like_response(response) and not dns.looks_like_response(header(qd=1, flags=0x0100))
    assert not dns.looks_like_response(header(qd=2, flags=0x8180))
