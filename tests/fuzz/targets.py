"""Fuzz targets for the wire parsers, their seed inputs, and a byte mutator.

Shared by the hypothesis fuzz tests (bounded, in CI) and `scripts/fuzz` (millions of inputs). A
target takes bytes and may raise only ParseError; anything else escaping is a bug."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import hpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "wire"))

from wirecorpus import (
    DATA,
    chromium_like_hello,
    corpus_files,
    crypto_frame,
    protect_initial,
    read_pcap,
    records,
)

from netguard.engine import classify
from netguard.engine.classify import DONE, Reader
from netguard.wire import dns, h2, http, ip, quic, socks, tls
from netguard.wire.addr import parse_address
from netguard.wire.errors import Malformed, ParseError, Truncated

Target = Callable[[bytes], object]


def fuzz_ip(data: bytes) -> object:
    return ip.parse_packet(data)


def fuzz_dns(data: bytes) -> object:
    message = dns.parse_message(data)
    # A message we can read must also be answerable with a blocked reply, which must parse again.
    reply = dns.build_blocked_reply(data, rcode="NXDOMAIN", info_code=dns.EDE_BLOCKED, text="fuzz")
    dns.parse_message(reply)
    return message


# A message around one SVCB/HTTPS rdata: the same bytes as an answer (HTTPS) and as an additional
# record (SVCB), so both readers of the record see every mutation.
_SVCB_HEAD = struct.pack("!HHHHHH", 0x5353, 0x8180, 1, 1, 0, 1) + b"\x01a\x07example\x00\x00\x41\x00\x01"


def fuzz_dns_svcb(rdata: bytes) -> object:
    record = struct.pack("!HIH", 1, 300, len(rdata) & 0xFFFF) + rdata
    message = dns.parse_message(_SVCB_HEAD + b"\xc0\x0c\x00\x41" + record + b"\xc0\x0c\x00\x40" + record)
    answer, extra = message.answers[0].data, message.additional[0].data
    if not isinstance(answer, dns.Svcb) or answer != extra:
        raise AssertionError(f"answer {answer!r} and additional record {extra!r} differ")
    if any(len(h) not in (4, 16) for h in answer.hints):
        raise AssertionError(f"a hint of the wrong size: {answer.hints!r}")
    return answer


def fuzz_dns_tcp(data: bytes) -> object:
    messages, _rest = dns.split_tcp_messages(data)
    return [dns.parse_message(m) for m in messages]


def _outcome(parse: Callable[[], object]) -> object:
    try:
        return parse()
    except Malformed:
        return "malformed"
    except Truncated:
        return "truncated"


def _feed_in_pieces(data: bytes) -> object:
    reader = tls.ClientHelloReader()
    third = max(1, len(data) // 3)
    result: object = None
    for piece in (data[:third], data[third : 2 * third], data[2 * third :]):
        result = reader.feed(piece)
    return result


# What the incremental reader says -> what the one-shot parse must say for the same bytes.
_ONE_SHOT_FOR = {tls.NeedMore: "truncated", tls.NotTls: "malformed", str: "malformed"}


def fuzz_tls(data: bytes) -> object:
    # Feed in three pieces (the record-joining path) and compare with the one-shot parse (the
    # single-record fast path when it applies): both must reach the same answer.
    incremental = _outcome(lambda: _feed_in_pieces(data))
    one_shot = _outcome(lambda: tls.parse_client_hello(data))
    expected = incremental if isinstance(incremental, tls.ClientHello) else _ONE_SHOT_FOR[type(incremental)]
    if one_shot != expected:
        raise AssertionError(f"incremental parse gave {incremental!r}, one-shot {one_shot!r}")
    if incremental == "malformed":
        raise Malformed("both parses agree: malformed")
    return incremental


def fuzz_tls_handshake(data: bytes) -> object:
    return tls.parse_handshake(data)


def fuzz_http(data: bytes) -> object:
    return http.parse_request_head(data)


def fuzz_quic(data: bytes) -> object:
    return quic.parse_initial(data)


_FUZZ_DCID = bytes.fromhex("8394c8f03e515708")


def fuzz_quic_payload(data: bytes) -> object:
    # Mutated ciphertext never authenticates; encrypting the mutated plaintext reaches the frame parser.
    initial = quic.parse_initial(protect_initial(_FUZZ_DCID, data, pad_to=0))
    assembler = quic.CryptoAssembler()
    message = assembler.add(initial.crypto)
    return tls.parse_handshake(message) if message is not None else None


def fuzz_socks(data: bytes) -> object:
    # Every prefix of a whole request is pending, and every longer input gives the same request.
    result = socks.read_request(data)
    if isinstance(result, socks.Request):
        for cut in range(1, result.end):
            if not isinstance(socks.read_request(data[:cut]), socks.Pending):
                raise AssertionError(f"prefix of {cut} bytes is not pending before a request of {result.end}")
        if socks.read_request(data[: result.end]) != result:
            raise AssertionError("the request alone reads differently")
    return result


def _stream_names(data: bytes, pieces: int) -> list[object]:
    """The names a Reader finds in data fed in `pieces` segments, rebased as the engine rebases a
    followed flow; a ParseError ends the list as "malformed"."""
    reader = Reader()
    out: list[object] = []
    window = b""
    size = max(1, -(-len(data) // pieces))
    try:
        for pos in range(0, len(data), size):
            window += data[pos : pos + size]
            while (found := reader.feed(window)) is not None:
                out.append(found)
                if found is DONE or reader.finished:
                    return out
            if reader.following:
                window = window[reader.rebase() :]
    except ParseError:
        out.append("malformed")
    return out


def fuzz_stream(data: bytes) -> object:
    # The request loop (and the proxy and tunnel stages around it) finds the same names whatever the
    # segmentation: at once, and in 2, 3 and 7 pieces.
    whole = _stream_names(data, 1)
    for pieces in (2, 3, 7):
        split = _stream_names(data, pieces)
        # Split bytes may stop before what the whole reaches (fewer bytes read when a name ended it),
        # never disagree on what both read.
        if split != whole:
            raise AssertionError(f"{pieces} pieces read {split!r}, at once {whole!r}")
    return whole


def fuzz_hpack(data: bytes) -> object:
    # Two header blocks through one decoder (the second may index what the first added): the first
    # byte is the first block's length.
    decoder = h2.Decoder()
    cut = 1 + data[0] if data else 0
    first = _outcome(lambda: h2.request_authority(decoder.decode(data[1:cut])))
    return h2.is_server_preface(data), first, h2.request_authority(decoder.decode(data[cut:]))


def _libc_address(text: str) -> bytes | None:
    try:
        # Bytes, as a C proxy hands them over (a str would go through Python's IDNA codec first).
        infos = socket.getaddrinfo(text.encode("latin-1"), None, flags=socket.AI_NUMERICHOST, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return None
    address = ipaddress.ip_address(str(infos[0][4][0]).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


def fuzz_addr(data: bytes) -> object:
    # Differential: the C library's numeric getaddrinfo is the oracle (interface-name scopes aside:
    # which interfaces exist is the machine's).
    text = data.decode("latin-1")
    ours = parse_address(text)
    scope = text.partition("%")[2]
    if "\x00" not in text and (not scope or (scope.isascii() and scope.isdigit()) or ":" not in text):
        theirs = _libc_address(text)
        if ours != theirs:
            raise AssertionError(f"{text!r}: netguard {ours!r}, libc {theirs!r}")
    return ours
def fuzz_quic_v2_payload(data: bytes) -> object:
    # The v2 path end to end: a v1 Initial coalesced with a v2 one whose plaintext is the input, read
    # as a datagram (walk, v2 keys and types, frames, assembler, ClientHello).
    v1 = protect_initial(_FUZZ_DCID, crypto_frame(0, b"\x01\x00"), pad_to=0)
    v2 = protect_initial(_FUZZ_DCID[::-1], data, version=quic.VERSION_2, pad_to=0)
    return classify.QuicReader().feed(v1 + v2)


def fuzz_quic_datagram(data: bytes) -> object:
    # A whole datagram as the engine reads it; the input is fed twice, as a client may resend it.
    reader = classify.QuicReader()
    reader.feed(data)
    return reader.feed(data)


TARGETS: dict[str, Target] = {
    "ip": fuzz_ip,
    "dns": fuzz_dns,
    "dns_tcp": fuzz_dns_tcp,
    "dns_svcb": fuzz_dns_svcb,
    "tls": fuzz_tls,
    "tls_handshake": fuzz_tls_handshake,
    "http": fuzz_http,
    "socks": fuzz_socks,
    "stream": fuzz_stream,
    "h2_stream": fuzz_stream,
    "hpack": fuzz_hpack,
    "addr": fuzz_addr,
    "quic": fuzz_quic,
    "quic_payload": fuzz_quic_payload,
    "quic_v2_payload": fuzz_quic_v2_payload,
    "quic_datagram": fuzz_quic_datagram,
}


def _svc_param(key: int, value: bytes) -> bytes:
    return struct.pack("!HH", key, len(value)) + value


def _hex(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().replace("\n", ""))


def _payloads(path: Path) -> list[bytes]:
    out = []
    for raw in read_pcap(path):
        l4 = ip.parse_packet(raw).l4
        if l4 is not None and l4.payload:
            out.append(l4.payload)
    return out


@cache
def seeds(target: str) -> tuple[bytes, ...]:
    """Valid inputs to start mutating from, per target."""
    packets = [raw for path in corpus_files("") for raw in read_pcap(path)]
    payloads = [p.l4.payload for p in map(ip.parse_packet, packets) if p.l4 is not None and p.l4.payload]
    single = [p for p in payloads if p[:1] == b"\x16" and p[5:6] == b"\x01"]
    hellos = [*single, records(chromium_like_hello(), [300, 700])]
    dns_udp = _payloads(DATA / "corpus" / "dns-cname-udp.pcap")
    dns_tcp = _payloads(DATA / "corpus" / "dns-cname-tcp.pcap")
    rfc_packet = _hex(DATA / "rfc9001" / "a2-client-initial-protected.hex")
    rfc_payload = _hex(DATA / "rfc9001" / "a2-client-initial-payload.hex")
    rfc_v2 = _hex(DATA / "rfc9369" / "a2-client-initial-protected.hex")
    zero_rtt = b"\xd3" + (1).to_bytes(4, "big") + b"\x08" + _FUZZ_DCID + b"\x00\x40\x20" + bytes(32)
    hello = chromium_like_hello()
    half = len(hello) // 2
    svcb = [
        b"\x00\x00\x04ghcr\x02io\x00",  # AliasMode
        b"\x00\x01\x00" + _svc_param(1, b"\x02h2\x02h3") + _svc_param(4, bytes([10, 0, 0, 1, 10, 0, 0, 2]))
        + _svc_param(5, bytes(40)) + _svc_param(6, bytes(15) + b"\x01"),
        b"\x00\x02\xc0\x0c" + _svc_param(3, b"\x01\xbb") + _svc_param(4, bytes(4)),  # compressed target
    ]
    https_answer = (_SVCB_HEAD[:6] + b"\x00\x01\x00\x00\x00\x00" + _SVCB_HEAD[12:] + b"\xc0\x0c\x00\x41"
                    + struct.pack("!HIH", 1, 300, len(svcb[1])) + svcb[1])
    h2_blocks = [
        bytes(hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "ghcr.io:5000"),
                                      (":path", "/v2/"), ("user-agent", "curl/7.88.1")], huffman=huffman))
        for huffman in (True, False)]
    padded = b"\x02" + bytes(5) + h2_blocks[1][:7] + b"\0\0"
    h2_frames = (h2.PREFACE + _h2_frame(h2.SETTINGS, 0, bytes(6), 0)
                 + _h2_frame(h2.HEADERS, h2.END_HEADERS, h2_blocks[0])
                 + _h2_frame(h2.HEADERS, h2.PADDED | h2.PRIORITY_FLAG, padded, 3)
                 + _h2_frame(h2.CONTINUATION, h2.END_HEADERS, h2_blocks[1][7:], 3) + _h2_frame(h2.DATA, 1, b"body", 3))
    by_target = {
        "ip": packets[:40],
        "dns": dns_udp + [m for s in dns_tcp for m in dns.split_tcp_messages(s)[0]] + [https_answer],
        "dns_svcb": svcb,
        "dns_tcp": [*dns_tcp, b"".join(dns_tcp)],
        "tls": hellos,
        "tls_handshake": [*(h[5:] for h in single), hello],
        "http": [
            b"GET /v2/ HTTP/1.1\r\nHost: registry.example:5000\r\nAccept: */*\r\n\r\n",
            b"CONNECT quay.io:443 HTTP/1.1\r\nHost: quay.io:443\r\n\r\n",
            b"GET http://[fd00::1]:80/v2/ HTTP/1.0\n\n",
        ],
        "socks": [
            b"\x05\x02\x00\x02\x01\x04user\x06secret\x05\x01\x00\x03\x07ghcr.io\x01\xbb",
            b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01\x01\xbb",
            b"\x04\x01\x01\xbb\x00\x00\x00\x01alice\x00quay.io\x00",
            b"\x04\x02\x00\x50\x0a\x4d\x00\x67\x00",
        ],
        "stream": [
            b"GET http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\r\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: c\r\nUpgrade: websocket\r\n\r\n\x81\x80",
            b"CONNECT a.test:443 HTTP/1.1\r\n\r\n" + single[0] if single else b"CONNECT a:1 HTTP/1.1\r\n\r\n",
            b"\x05\x02\x00\x02\x01\x01u\x01p\x05\x01\x00\x03\x01a\x00\x50GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x15\x03\x03\x00\x02\x01\x5a" + hellos[-1],
            b"\r\n\tget\thttp://a.test/\rHost: b\r\n\r\nSSH-2.0-x y\r\n",
        ],
        "h2_stream": [h2_frames, b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n" + h2_frames],
        "hpack": [bytes((len(b),)) + b + h2_blocks[1] for b in (h2_blocks[0], b"\x3f\xe1\x1f" + h2_blocks[1])],
        "addr": [b"10.77.0.103", b"0x0a4d0067", b"012.0115.0147", b"::ffff:10.77.0.103", b"fe80::1%1",
                 b"1:2:3:4:5:6:7.8.9.10", b"4294967295"],
        "quic": [
            rfc_packet,
            protect_initial(_FUZZ_DCID, crypto_frame(900, hello[900:]) + crypto_frame(0, hello[:900])),
        ],
        "quic_payload": [rfc_payload[:300], b"\x02\x05\x00\x01\x00\x01\x01\x01" + crypto_frame(0, b"\x01\x00\x00\x10")],
        "quic_v2_payload": [rfc_payload[:300],
                            crypto_frame(half, hello[half:]) + b"\x01" + crypto_frame(0, hello[:half])],
        "quic_datagram": [
            rfc_packet,
            rfc_v2,
            protect_initial(_FUZZ_DCID, crypto_frame(0, hello[:half]), pad_to=0) + zero_rtt
            + protect_initial(b"S" * 8, crypto_frame(half, hello[half:]), key_dcid=_FUZZ_DCID, pad_to=0)
            + protect_initial(_FUZZ_DCID[::-1], crypto_frame(0, hello), version=quic.VERSION_2, pad_to=0),
        ],
    }
    return tuple(by_target[target])


def _h2_frame(kind: int, flags: int, payload: bytes, stream: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


_INTERESTING = (0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF)
_INTERESTING16 = (0, 1, 0x00FF, 0x0100, 0x3FFF, 0x4000, 0x7FFF, 0x8000, 0xFFFF)


def mutate(data: bytes, rng: random.Random, pool: tuple[bytes, ...]) -> bytes:
    """Apply one to four random edits: bit flips, interesting bytes and lengths, inserts, deletes,
    duplicated ranges, truncation, and splices with another seed."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.choice(_INTERESTING)
        elif op == 2 and n >= 2:
            pos = rng.randrange(n - 1)
            value = rng.choice((*_INTERESTING16, n - pos, n - pos - 2, rng.randrange(0x10000)))
            buf[pos : pos + 2] = struct.pack("!H", value & 0xFFFF)
        elif op == 3:
            pos = rng.randrange(n + 1)
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and n:
            pos = rng.randrange(n)
            del buf[pos : pos + rng.randint(1, 32)]
        elif op == 5 and n:
            pos = rng.randrange(n)
            chunk = buf[pos : pos + rng.randint(1, 64)]
            at = rng.randrange(n + 1)
            buf[at:at] = chunk
        elif op == 6 and n:
            del buf[rng.randrange(n) :]
        elif op == 7 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(buf) + 1)
            buf[cut:] = other[rng.randrange(len(other) + 1) :]
        elif op == 8 and n:
            pos = rng.randrange(n)
            buf[pos : pos + 4] = rng.randbytes(4)
    return bytes(buf)
