"""TLS ClientHello: corpus captures, incremental feeding, records and segments, SNI problems,
truncations, and hypothesis-built ClientHellos cross-checked against scapy's reading."""

# scapy's TLS layer carries no annotations.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wirecorpus import (
    chromium_like_hello,
    client_hello,
    corpus_files,
    corpus_table,
    extension,
    read_pcap,
    records,
    sni_extension,
    u8,
    u16,
)

from netguard.wire import ip, tls
from netguard.wire.errors import Malformed, ParseError, Truncated


def first_client_payload(path: Path) -> bytes:
    for raw in read_pcap(path):
        packet = ip.parse_packet(raw)
        if isinstance(packet.l4, ip.TcpSegment) and packet.l4.payload[:1] == b"\x16":
            return packet.l4.payload
    raise AssertionError(f"{path.name}: no ClientHello")


HELLO_FILES = corpus_files("hello-")


def test_corpus_is_present() -> None:
    assert len(HELLO_FILES) == 5


@pytest.mark.parametrize("path", HELLO_FILES, ids=lambda p: p.name)
def test_corpus_sni_matches_readme(path: Path) -> None:
    row = corpus_table()[path.name]
    payload = first_client_payload(path)
    hello = tls.parse_client_hello(payload)
    assert hello.sni == row["SNI"]
    assert hello.sni_problem is None
    assert hello.length + 4 == int(row["ClientHello bytes"]) - 5
    assert 0x0304 in hello.supported_versions
    if "no ALPN" in row["notes"]:
        assert hello.alpn == ()
    elif "ALPN" in row["notes"]:
        expected = tuple(p.strip() for p in row["notes"].split("ALPN", 1)[1].split(","))
        assert hello.alpn == expected


@pytest.mark.parametrize("path", HELLO_FILES, ids=lambda p: p.name)
def test_every_truncation_needs_more(path: Path) -> None:
    payload = first_client_payload(path)
    whole = tls.parse_client_hello(payload)
    for cut in range(len(payload)):
        assert tls.ClientHelloReader().feed(payload[:cut]) == tls.NEED_MORE
        with pytest.raises(Truncated):
            tls.parse_client_hello(payload[:cut])
    # byte-by-byte feeding reaches the same result on the last byte
    reader = tls.ClientHelloReader()
    for i in range(len(payload) - 1):
        assert reader.feed(payload[i : i + 1]) == tls.NEED_MORE
    assert reader.feed(payload[-1:]) == whole


def test_post_quantum_hello_over_records_and_segments() -> None:
    hello = chromium_like_hello()
    stream = records(hello, [300, 1, 700, 250])
    expected = tls.parse_handshake(hello)
    assert expected.sni == "registry.blocked.test"
    assert expected.ech
    assert 0x6A6A in expected.supported_versions  # GREASE kept as sent
    for cut in (1, 5, 6, 400, 1000, len(stream) - 1):
        reader = tls.ClientHelloReader()
        assert reader.feed(stream[:cut]) == tls.NEED_MORE
        assert reader.feed(stream[cut:]) == expected
        assert reader.feed(b"more bytes") == expected


@given(
    record_sizes=st.lists(st.integers(1, 600), max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_any_record_and_segment_split_gives_the_same_hello(record_sizes: list[int], cuts: list[int]) -> None:
    hello = chromium_like_hello(b"split.example")
    stream = records(hello, record_sizes)
    reader = tls.ClientHelloReader()
    result: object = tls.NEED_MORE
    pos = 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        result = reader.feed(stream[pos:cut])
        pos = cut
        if cut < len(stream):
            assert result == tls.NEED_MORE
    assert isinstance(result, tls.ClientHello)
    assert result.sni == "split.example"


def test_not_tls() -> None:
    assert isinstance(tls.ClientHelloReader().feed(b"GET / HTTP/1.1\r\n"), tls.NotTls)
    assert isinstance(tls.ClientHelloReader().feed(b"\x16\x10"), tls.NotTls)  # no server takes 0x10xx
    assert isinstance(tls.ClientHelloReader().feed(b"\x17\x03"), tls.NotTls)
    assert tls.ClientHelloReader().feed(b"\x16\x02") == tls.NEED_MORE  # Go takes any version below 0x1000
    assert tls.ClientHelloReader().feed(b"\x16") == tls.NEED_MORE
    assert tls.looks_like_tls(b"\x16\x03\x01")
    assert not tls.looks_like_tls(b"\x16")
    assert not tls.looks_like_tls(b"\x17\x03\x03")


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ((b"a.example", b"b.example"), "2 host_name entries"),
        ((b"",), "empty host_name"),
        (("bücher.example".encode(),), "host_name is not printable ASCII"),
        ((b"a\x00.example",), "host_name is not printable ASCII"),
    ],
)
def test_sni_problems_are_reported(names: tuple[bytes, ...], problem: str) -> None:
    hello = tls.parse_handshake(client_hello([sni_extension(*names)]))
    assert hello.sni is None
    assert hello.sni_problem == problem


def test_each_byte_alone_in_a_host_name() -> None:
    # Printable ASCII but space is taken as sent; any other byte, even one among plain ones, is reported.
    for byte in range(256):
        host = b"a" + bytes([byte]) + b".example"
        hello = tls.parse_handshake(client_hello([sni_extension(host)]))
        if 0x21 <= byte <= 0x7E:
            assert (hello.sni, hello.sni_problem) == (host.decode(), None)
        else:
            assert (hello.sni, hello.sni_problem) == (None, "host_name is not printable ASCII")


@pytest.mark.parametrize(
    "names",
    [
        (b"h2", b"http/1.1"),  # the common lists (a table lookup in the parser) ...
        (b"http/1.1",),
        (b"h3",),
        (b"h2", b"http/1.1", b"h3"),  # ... and others (the item walk)
        (b"spdy/3", b"h2"),
        (b"h2\xff",),
    ],
)
def test_alpn_lists(names: tuple[bytes, ...]) -> None:
    body = u16(b"".join(u8(name) for name in names))
    hello = tls.parse_handshake(client_hello([extension(16, body)]))
    assert hello.alpn == tuple(name.decode("ascii", "backslashreplace") for name in names)
    # Typed bytes, but a bytearray has always worked too (the table is keyed by bytes).
    as_bytearray = bytearray(records(client_hello([extension(16, body)])))
    assert tls.parse_client_hello(as_bytearray).alpn == hello.alpn  # type: ignore[arg-type]
    for bad in (body + b"\x00", body[:-1], body[2:]):
        with pytest.raises(Malformed):
            tls.parse_handshake(client_hello([extension(16, bad)]))


def test_empty_server_name_extension() -> None:
    hello = tls.parse_handshake(client_hello([extension(0, b"")]))
    assert (hello.sni, hello.sni_problem) == (None, "empty server_name extension")


def test_no_sni() -> None:
    hello = tls.parse_handshake(client_hello([extension(43, u8(b"\x03\x04"))]))
    assert (hello.sni, hello.sni_problem, hello.supported_versions) == (None, None, (0x0304,))


@pytest.mark.parametrize(
    "extensions",
    [
        [sni_extension(b"a.example"), sni_extension(b"b.example")],  # repeated extension
        [extension(0, u16(b"\x00" + u16(b"a.example")) + b"x")],  # junk after the list
        [extension(0, u16(b"\x00" + struct.pack("!H", 40) + b"a.example"))],  # name overruns
        [extension(16, u16(b"\x00"))],  # empty ALPN name
        [extension(43, b"\x03\x03\x04\x00")],  # odd versions length
    ],
)
def test_malformed_extensions(extensions: list[bytes]) -> None:
    with pytest.raises(Malformed):
        tls.parse_handshake(client_hello(extensions))
    with pytest.raises(Malformed):
        tls.ClientHelloReader().feed(records(client_hello(extensions)))


def test_malformed_records() -> None:
    hello = client_hello([sni_extension(b"a.example")])
    with pytest.raises(Malformed):  # an alert record in the middle of the ClientHello
        tls.ClientHelloReader().feed(records(hello[:10]) + b"\x15\x03\x03\x00\x02\x02\x28")
    with pytest.raises(Malformed):  # more empty handshake records than any server skips
        tls.ClientHelloReader().feed(b"\x16\x03\x01\x00\x00" * (tls.MAX_EMPTY_RECORDS + 1))
    with pytest.raises(Malformed):  # a record version no server takes, once the bytes began like TLS
        tls.ClientHelloReader().feed(records(hello[:10]) + b"\x16\x10\x00\x00\x01\x00")
    with pytest.raises(Malformed):  # change_cipher_spec inside the first hello
        tls.ClientHelloReader().feed(records(hello[:10]) + b"\x14\x03\x03\x00\x01\x01" + records(hello[10:]))
    assert isinstance(tls.ClientHelloReader().feed(b"\x14\x03\x03\x00\x01\x01"), tls.NotTls)  # nobody takes it first
    with pytest.raises(Malformed):  # a ServerHello where a ClientHello belongs
        tls.ClientHelloReader().feed(records(b"\x02" + hello[1:]))
    with pytest.raises(Malformed):  # a ClientHello larger than the bound
        tls.ClientHelloReader().feed(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00")
    reader = tls.ClientHelloReader()
    with pytest.raises(Malformed):
        reader.feed(b"\x15\x03\x01\x00\x02\x02\x28")  # a fatal alert first
    with pytest.raises(Malformed):  # the error sticks
        reader.feed(records(hello))


def test_access_denied_alert() -> None:
    from scapy.all import load_layer

    load_layer("tls")
    from scapy.layers.tls.record import TLS, TLSAlert

    alert = tls.access_denied_alert()
    parsed = TLS(alert)
    message = parsed.msg[0]
    assert isinstance(message, TLSAlert)
    assert (parsed.type, message.level, message.descr) == (21, 2, 49)


def test_is_grease() -> None:
    assert all(tls.is_grease(v * 0x1010 + 0x0A0A) for v in range(16))
    assert not tls.is_grease(0x0A1A)
    assert not tls.is_grease(0x0304)


# --- hypothesis: ClientHellos built with scapy, our reading compared with scapy's ---

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_hostnames = st.lists(_label, min_size=1, max_size=5).map(".".join)
_alpn = st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b.isascii()), max_size=4)
_versions = st.lists(st.sampled_from([0x0304, 0x0303, 0x0302, 0x0301, 0x0A0A, 0x3A3A, 0xFAFA]), min_size=1, max_size=6)


def _scapy_known_extensions() -> frozenset[int]:
    from scapy.all import load_layer

    load_layer("tls")
    from scapy.layers.tls.extensions import _tls_ext_cls

    return frozenset(_tls_ext_cls)


# Extensions scapy decodes itself fail in scapy on random bodies; random ones use the other types
# (scapy keeps those as TLS_Ext_Unknown), plus ECH (0xfe0d) and GREASE values.
_unknown = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from([0xFE0D, 0x0A0A, 0x5A5A, 0xFAFA]),
            st.integers(0, 0xFFFF).filter(lambda t: t not in _scapy_known_extensions()),
        ),
        st.binary(max_size=40),
    ),
    max_size=8,
    unique_by=lambda e: e[0],
)


@st.composite
def scapy_hellos(draw: st.DrawFn) -> tuple[bytes, object]:
    from scapy.all import load_layer

    load_layer("tls")
    from scapy.layers.tls.extensions import (
        ProtocolName,
        ServerName,
        TLS_Ext_ALPN,
        TLS_Ext_ServerName,
        TLS_Ext_SupportedVersion_CH,
        TLS_Ext_Unknown,
    )
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    exts: list[object] = [TLS_Ext_Unknown(type=t, val=v) for t, v in draw(_unknown)]
    if draw(st.booleans()):
        exts.append(TLS_Ext_ServerName(servernames=[ServerName(servername=draw(_hostnames).encode())]))
    if draw(st.booleans()):
        exts.append(TLS_Ext_ALPN(protocols=[ProtocolName(protocol=p) for p in draw(_alpn)]))
    if draw(st.booleans()):
        exts.append(TLS_Ext_SupportedVersion_CH(versions=draw(_versions)))
    exts = draw(st.permutations(exts))
    hello = TLSClientHello(
        ciphers=draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20)),
        sid=draw(st.binary(max_size=32)),
        gmt_unix_time=0,
        random_bytes=draw(st.binary(min_size=28, max_size=28)),
        ext=exts,
    )
    wire = bytes(TLS(msg=[hello]))
    return wire, TLS(wire).msg[0]


@given(scapy_hellos())
def test_hypothesis_hellos_match_scapy(case: tuple[bytes, object]) -> None:
    wire, scapy_hello = case
    ours = tls.parse_client_hello(wire)
    exts = {e.type: e for e in (scapy_hello.ext or [])}  # type: ignore[attr-defined]
    assert ours.extensions == tuple(e.type for e in (scapy_hello.ext or []))  # type: ignore[attr-defined]
    if 0 in exts:
        assert ours.sni == exts[0].servernames[0].servername.decode()
    else:
        assert ours.sni is None
    expected_alpn = tuple(p.protocol.decode() for p in exts[16].protocols) if 16 in exts else ()
    assert ours.alpn == expected_alpn
    assert ours.supported_versions == (tuple(exts[43].versions) if 43 in exts else ())
    assert ours.ech == (0xFE0D in exts)
    assert ours.legacy_version == scapy_hello.version  # type: ignore[attr-defined]
    for cut in range(0, len(wire), 7):
        assert tls.ClientHelloReader().feed(wire[:cut]) == tls.NEED_MORE


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        tls.ClientHelloReader().feed(b"\x16\x03\x01" + data)
    with contextlib.suppress(ParseError):
        tls.parse_handshake(b"\x01" + data)


def test_post_quantum_fixture_file_matches_builder() -> None:
    # tests/data/clienthello-pq-1901.hex feeds scripts/bench_sections/parse.py; keep it in sync.
    from wirecorpus import DATA

    stored = bytes.fromhex((DATA / "clienthello-pq-1901.hex").read_text().replace("\n", ""))
    assert stored == records(chromium_like_hello())
    assert tls.parse_client_hello(stored).sni == "registry.blocked.test"


# -- what servers take around a ClientHello (Go's crypto/tls, OpenSSL, BoringSSL) ------------------

def _alert(level: int, description: int, version: int = 0x0301) -> bytes:
    from scapy.layers.tls.record import TLS, TLSAlert

    return bytes(TLS(type=21, version=version, msg=[TLSAlert(level=level, descr=description)]))


def _feed_all(data: bytes, step: int = 0) -> object:
    reader = tls.ClientHelloReader()
    if not step:
        return reader.feed(data)
    result: object = tls.NEED_MORE
    for pos in range(0, len(data), step):
        result = reader.feed(data[pos:pos + step])
    return result


@pytest.mark.parametrize("step", [0, 1, 7])
def test_warning_alerts_before_and_between_the_fragments_are_skipped(step: int) -> None:
    hello = chromium_like_hello(b"blocked.example")
    # Go skips warning alerts before the hello (up to 16 useless records), OpenSSL and BoringSSL too.
    stream = _alert(1, 0) + _alert(1, 90, 0x0303) + records(hello, [100]) + _alert(1, 112) + records(hello[100:])
    result = _feed_all(stream, step)
    assert isinstance(result, tls.ClientHello) and result.sni == "blocked.example"
    too_many = _alert(1, 90) * (tls.MAX_WARNING_ALERTS + 1) + records(hello)
    with pytest.raises(Malformed):
        _feed_all(too_many, step)
    with pytest.raises(Malformed):  # a fatal alert: no server reads on
        _feed_all(_alert(2, 40) + records(hello), step)


@pytest.mark.parametrize("version", [0x0000, 0x0002, 0x0100, 0x0200, 0x0300, 0x0304, 0x03FF, 0x0A0A, 0x0FFF])
def test_any_record_version_below_0x1000_is_read(version: int) -> None:
    hello = chromium_like_hello(b"blocked.example")
    for stream in (records(hello, version=version), records(hello, [50, 60], version=version)):
        result = tls.ClientHelloReader().feed(stream)
        assert isinstance(result, tls.ClientHello) and result.sni == "blocked.example"
        assert tls.parse_client_hello(stream) == result
    assert isinstance(tls.ClientHelloReader().feed(records(hello, version=0x1000)), tls.NotTls)


def test_empty_records_are_skipped_up_to_the_servers_bound() -> None:
    hello = client_hello([sni_extension(b"blocked.example")])
    empty = b"\x16\x03\x01\x00\x00"
    stream = empty * 3 + records(hello[:20]) + empty + records(hello[20:])
    result = tls.ClientHelloReader().feed(stream)
    assert isinstance(result, tls.ClientHello) and result.sni == "blocked.example"
    assert isinstance(tls.ClientHelloReader().feed(empty * tls.MAX_EMPTY_RECORDS + records(hello)), tls.ClientHello)


def test_records_up_to_gos_limit() -> None:
    padding = extension(21, bytes(tls.MAX_RECORD - 600))  # a hello in a record longer than 2^14
    hello = client_hello([sni_extension(b"blocked.example"), padding])
    assert 16384 < len(hello) <= tls.MAX_RECORD
    result = tls.ClientHelloReader().feed(records(hello))
    assert isinstance(result, tls.ClientHello) and result.sni == "blocked.example"


def test_scapy_reads_an_alert_then_the_hello_the_same_way() -> None:
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    hello = chromium_like_hello(b"blocked.example")
    stream = _alert(1, 90) + records(hello)
    parsed = TLS(stream)
    assert parsed.type == 21 and parsed.msg[0].level == 1  # scapy: a warning alert, then ...
    inner = parsed.payload.msg[0]
    assert isinstance(inner, TLSClientHello)  # ... the ClientHello, whose name netguard reads
    names = [n.servername.decode() for e in inner.ext if e.type == 0 for n in e.servernames]
    result = tls.ClientHelloReader().feed(stream)
    assert isinstance(result, tls.ClientHello) and [result.sni] == names


def test_end_and_leftover_after_the_hello() -> None:
    hello = client_hello([sni_extension(b"a.example")])
    reader = tls.ClientHelloReader()
    stream = records(hello)
    assert isinstance(reader.feed(stream + b"\x14\x03\x03\x00\x01\x01"), tls.ClientHello)
    assert (reader.end, reader.leftover) == (len(stream), b"")
    # A record holding the hello and the start of the next handshake message (a second hello after a
    # HelloRetryRequest may begin there: Go reads on from its handshake buffer).
    reader = tls.ClientHelloReader()
    stream = records(hello[:30]) + records(hello[30:] + hello[:10])
    assert isinstance(reader.feed(stream), tls.ClientHello)
    assert (reader.end, reader.leftover) == (len(stream), hello[:10])


def test_the_second_hello_after_a_hello_retry_request() -> None:
    second = chromium_like_hello(b"blocked.example")
    ccs = b"\x14\x03\x03\x00\x01\x01"
    early = b"\x17\x03\x03\x00\x05" + bytes(5)  # early data a server skips after an HRR
    for stream in (ccs + records(second), early + early + ccs + records(second, [40]),
                   _alert(1, 90) + records(second)):
        reader = tls.ClientHelloReader(after_hello=True)
        result = reader.feed(stream)
        assert isinstance(result, tls.ClientHello) and result.sni == "blocked.example"
    # Begun in the first hello's last record (leftover), finished in the next.
    reader = tls.ClientHelloReader(after_hello=True, handshake=second[:25])
    result = reader.feed(records(second[25:]))
    assert isinstance(result, tls.ClientHello) and result.sni == "blocked.example"
    with pytest.raises(Malformed):  # change_cipher_spec inside a hello split around it
        tls.ClientHelloReader(after_hello=True, handshake=second[:25]).feed(ccs + records(second[25:]))
    with pytest.raises(Malformed):  # a ServerHello is no second ClientHello
        tls.ClientHelloReader(after_hello=True).feed(ccs + records(b"\x02" + second[1:]))
    with pytest.raises(Malformed):
        tls.ClientHelloReader(after_hello=True).feed(ccs * (tls.MAX_SKIPPED_AFTER_HELLO + 1))
    with pytest.raises(Malformed):  # outside the after-hello mode change_cipher_spec is no record to skip
        tls.ClientHelloReader().feed(_alert(1, 90) + ccs + records(second))


def test_hello_retry_request_detection() -> None:
    hrr = b"\x16\x03\x03\x00\x58\x02\x00\x00\x54\x03\x03" + tls.HRR_RANDOM + bytes(10)
    assert tls.is_hello_retry_request(hrr)
    assert not tls.is_hello_retry_request(hrr[:40])
    assert not tls.is_hello_retry_request(hrr[:11] + bytes(32) + hrr[43:])
