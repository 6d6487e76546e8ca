"""QUIC Initial packets: RFC 9001 (v1) and RFC 9369 (v2) Appendix A vectors, aioquic's client as an
independent oracle, coalesced packets, keys of another connection ID, a Chromium-like ClientHello
over two Initials with shuffled CRYPTO frames, truncations, tampering, versions, and the
assembler's rules (conflicts, budget, checks after completion)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wirecorpus import DATA, chromium_like_hello, crypto_frame, protect_initial, varint

from netguard.wire import quic, tls
from netguard.wire.errors import Malformed, ParseError, Truncated, UnsupportedVersion

VECTORS = DATA / "rfc9001"
VECTORS_V2 = DATA / "rfc9369"


def hex_file(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().replace("\n", ""))


def a1_values() -> dict[str, bytes]:
    lines = (VECTORS / "a1-keys.txt").read_text().splitlines()
    return {key: bytes.fromhex(value) for key, value in (line.split() for line in lines)}


def test_rfc9001_a1_keys() -> None:
    values = a1_values()
    keys = quic.client_initial_keys(values["dcid"])
    assert (keys.initial_secret, keys.secret, keys.key, keys.iv, keys.hp) == (
        values["initial_secret"],
        values["client_initial_secret"],
        values["key"],
        values["iv"],
        values["hp"],
    )


def test_rfc9001_a2_client_initial_decrypts_to_the_published_client_hello() -> None:
    packet = hex_file("a2-client-initial-protected.hex")
    payload = hex_file("a2-client-initial-payload.hex")
    initial = quic.parse_initial(packet)
    assert (initial.version, initial.dcid, initial.scid, initial.token) == (1, a1_values()["dcid"], b"", b"")
    assert initial.packet_number == 2
    assert initial.packet_length == len(packet) == 1200
    # The published payload is one CRYPTO frame (type, offset 0, 2-byte length 0x40f1) then PADDING.
    published_hello = payload[4 : 4 + 0xF1]
    assert initial.crypto == ((0, published_hello),)
    message = quic.CryptoAssembler().add(initial.crypto)
    assert message == published_hello
    hello = tls.parse_handshake(message)
    assert hello.sni == "example.com" and hello.alpn == ("alpn",)


def test_rfc9001_a2_truncations_and_tampering() -> None:
    packet = hex_file("a2-client-initial-protected.hex")
    for cut in range(len(packet)):
        with pytest.raises(Truncated):
            quic.parse_initial(packet[:cut])
    for position in (0, 20, 30, 500, len(packet) - 1):
        tampered = bytearray(packet)
        tampered[position] ^= 0x01 if position else 0x40  # (first byte: flip a protected bit's mask input)
        with pytest.raises(ParseError):
            quic.parse_initial(bytes(tampered))
    with pytest.raises(Malformed):  # payload bit flip: does not authenticate
        quic.parse_initial(packet[:400] + bytes((packet[400] ^ 1,)) + packet[401:])


@pytest.mark.parametrize("version", [0, 0xFF00001D, 0x1A2A3A4A, 0x709A50C4])
def test_other_versions_are_reported(version: int) -> None:
    packet = bytearray(hex_file("a2-client-initial-protected.hex"))
    packet[1:5] = version.to_bytes(4, "big")
    with pytest.raises(UnsupportedVersion) as info:
        quic.parse_initial(bytes(packet))
    assert info.value.version == version


def test_not_initial() -> None:
    with pytest.raises(Malformed):
        quic.parse_initial(b"\x40" + bytes(40))  # short header
    packet = bytearray(hex_file("a2-client-initial-protected.hex"))
    packet[0] = 0xE0  # Handshake packet type
    with pytest.raises(Malformed):
        quic.parse_initial(bytes(packet))
    assert quic.looks_like_quic_initial(bytes(hex_file("a2-client-initial-protected.hex")))
    assert not quic.looks_like_quic_initial(bytes(packet))


def chromium_datagrams(seed: int) -> tuple[bytes, list[bytes]]:
    """A ~1.9 KB ClientHello cut into CRYPTO frames, shuffled over two Initial datagrams."""
    hello = chromium_like_hello(b"quic.blocked.test")
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(hello)), 9))
    bounds = list(zip([0, *cuts], [*cuts, len(hello)], strict=True))
    rng.shuffle(bounds)
    dcid = rng.randbytes(8)
    half = len(bounds) // 2
    datagrams = [
        protect_initial(dcid, b"".join(crypto_frame(a, hello[a:b]) for a, b in part), pn=pn, pad_to=1292)
        for pn, part in enumerate((bounds[:half], bounds[half:]))
    ]
    return hello, datagrams


@pytest.mark.parametrize("seed", range(6))
def test_chromium_like_hello_over_two_shuffled_initials(seed: int) -> None:
    hello, datagrams = chromium_datagrams(seed)
    assert all(len(d) >= 1200 for d in datagrams)
    for order in (datagrams, datagrams[::-1]):
        assembler = quic.CryptoAssembler()
        first = assembler.add(quic.parse_initial(order[0]).crypto)
        assert first is None
        message = assembler.add(quic.parse_initial(order[1]).crypto)
        assert message == hello
        parsed = tls.parse_handshake(message)
        assert parsed.sni == "quic.blocked.test" and parsed.ech


def test_assembler_rules() -> None:
    hello = chromium_like_hello()
    assembler = quic.CryptoAssembler()
    assert assembler.add([(10, hello[10:100]), (10, hello[10:100])]) is None  # duplicate is fine
    with pytest.raises(Malformed):
        assembler.add([(50, b"X" * 10)])  # overlaps with different bytes
    with pytest.raises(Malformed):
        quic.CryptoAssembler().add([(quic.MAX_CRYPTO_BYTES, b"x")])
    with pytest.raises(Malformed):
        quic.CryptoAssembler().add([(i, hello[i : i + 1]) for i in range(quic.MAX_CRYPTO_FRAMES + 1)])
    with pytest.raises(Malformed):
        quic.CryptoAssembler().add([(0, b"\x02\x00\x00\x10")])  # not a ClientHello


def test_frames_not_allowed_in_initial() -> None:
    dcid = bytes(8)
    stream_frame = b"\x08\x00\x03abc"
    with pytest.raises(Malformed):
        quic.parse_initial(protect_initial(dcid, crypto_frame(0, b"\x01\x00") + stream_frame))
    ack_ping = b"\x02\x05\x00\x01\x00\x01\x01\x01"
    initial = quic.parse_initial(protect_initial(dcid, ack_ping + crypto_frame(0, b"\x01\x00\x00")))
    assert initial.crypto == ((0, b"\x01\x00\x00"),)


@given(st.binary(max_size=200), st.integers(0, 3))
def test_random_payloads_raise_only_parse_errors(payload: bytes, pn: int) -> None:
    with contextlib.suppress(ParseError):
        quic.parse_initial(protect_initial(b"\x01" * 8, payload, pn=pn, pad_to=0))


# -- QUIC v2 (RFC 9369) ---------------------------------------------------------------------------


def test_rfc9369_a1_keys() -> None:
    lines = (VECTORS_V2 / "a1-keys.txt").read_text().splitlines()
    values = {key: bytes.fromhex(value) for key, value in (line.split() for line in lines)}
    keys = quic.client_initial_keys(values["dcid"], quic.VERSION_2)
    assert (keys.secret, keys.key, keys.iv, keys.hp) == (
        values["client_initial_secret"], values["key"], values["iv"], values["hp"])
    # Not the v1 keys of the same DCID.
    assert keys.key != quic.client_initial_keys(values["dcid"]).key


def test_rfc9369_a2_client_initial_decrypts_to_the_published_client_hello() -> None:
    packet = bytes.fromhex((VECTORS_V2 / "a2-client-initial-protected.hex").read_text().replace("\n", ""))
    payload = bytes.fromhex((VECTORS_V2 / "a2-client-initial-payload.hex").read_text().replace("\n", ""))
    assert packet[0] >> 4 & 3 == 1  # v2's Initial type bits (v1 would call this 0-RTT)
    initial = quic.parse_initial(packet)
    assert (initial.version, initial.packet_number, initial.packet_length) == (quic.VERSION_2, 2, 1200)
    assert initial.crypto == ((0, payload[4 : 4 + 0xF1]),)
    hello = tls.parse_handshake(quic.CryptoAssembler().add(initial.crypto) or b"")
    assert hello.sni == "example.com"
    [header] = quic.long_headers(packet)
    assert (header.kind, header.version, header.end) == (quic.INITIAL, quic.VERSION_2, 1200)
    # The same bytes with the version field set to 1 read as a v1 0-RTT packet, which opens nothing.
    as_v1 = packet[:1] + (1).to_bytes(4, "big") + packet[5:]
    assert [h.kind for h in quic.long_headers(as_v1)] == [quic.ZERO_RTT]


def test_v2_packet_types() -> None:
    # RFC 9369 §3.2: Initial 0b01, 0-RTT 0b10, Handshake 0b11, Retry 0b00.
    assert quic.V2.kinds == (quic.RETRY, quic.INITIAL, quic.ZERO_RTT, quic.HANDSHAKE)
    assert quic.V1.kinds == (quic.INITIAL, quic.ZERO_RTT, quic.HANDSHAKE, quic.RETRY)


# -- aioquic's client as an oracle ----------------------------------------------------------------


def aioquic_first_flight(name: str, version: int, *, big: bool = False) -> list[bytes]:
    """The datagrams aioquic's client sends first (its own packet protection, not netguard's)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, server_name=name, alpn_protocols=["h3"], original_version=version,
                               quantum_readiness_test=big)
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.1", 443), now=0.0)
    return [data for data, _ in conn.datagrams_to_send(now=0.0)]


@pytest.mark.parametrize("version", [quic.VERSION_1, quic.VERSION_2])
def test_aioquic_client_initial_is_read(version: int) -> None:
    [datagram] = aioquic_first_flight("quic.example.test", version)
    initial = quic.parse_initial(datagram)
    assert initial.version == version
    hello = tls.parse_handshake(quic.CryptoAssembler().add(initial.crypto) or b"")
    assert hello.sni == "quic.example.test" and hello.alpn == ("h3",)


@pytest.mark.parametrize("version", [quic.VERSION_1, quic.VERSION_2])
def test_aioquic_protection_matches_ours(version: int) -> None:
    # aioquic protects a payload of ours; we read it back (and its keys equal ours).
    from aioquic.quic.crypto import CryptoPair

    dcid = bytes(range(8))
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=version)
    first = 0xD3 if version == quic.VERSION_2 else 0xC3
    frames = crypto_frame(0, b"\x01\x00\x00\x05hello") + bytes(1100)
    header = bytes((first,)) + version.to_bytes(4, "big") + bytes((8,)) + dcid + b"\x00\x00" + \
        (0x4000 | (4 + len(frames) + 16)).to_bytes(2, "big") + (7).to_bytes(4, "big")
    packet = pair.encrypt_packet(header, frames, 7)
    initial = quic.parse_initial(packet)
    assert initial.packet_number == 7 and initial.crypto == ((0, b"\x01\x00\x00\x05hello"),)
    assert packet == protect_initial(dcid, frames, pn=7, scid=b"", version=version, pad_to=0)


# -- coalesced packets (RFC 9000 §12.2) -------------------------------------------------------------


def long_packet(kind_bits: int, version: int, dcid: bytes, body: bytes) -> bytes:
    """An unprotected long-header packet that is not an Initial (0-RTT, Handshake): only delimited."""
    return bytes((0xC0 | kind_bits << 4 | 3,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + \
        b"\x00" + varint(len(body)) + body


def test_every_packet_of_a_datagram_is_delimited() -> None:
    hello = chromium_like_hello(b"second.blocked.test")
    a = protect_initial(b"A" * 8, crypto_frame(0, b"\x01\x00\x00\x00"), pad_to=0)
    zero_rtt = long_packet(1, quic.VERSION_1, b"A" * 8, bytes(40))
    handshake = long_packet(2, quic.VERSION_1, b"A" * 8, bytes(40))
    b = protect_initial(b"B" * 8, crypto_frame(0, hello), pad_to=0)
    datagram = a + zero_rtt + handshake + b + bytes(100)  # zero bytes after the last packet: padding
    headers = quic.long_headers(datagram)
    assert [h.kind for h in headers] == [quic.INITIAL, quic.ZERO_RTT, quic.HANDSHAKE, quic.INITIAL]
    assert [h.dcid for h in headers] == [b"A" * 8] * 3 + [b"B" * 8]
    assert headers[-1].start == len(a) + len(zero_rtt) + len(handshake) and headers[-1].end == len(datagram) - 100
    second = quic.decrypt_initial(datagram, headers[-1])
    assert second is not None and second.crypto == ((0, hello),)
    # v1 and v2 packets may follow each other (compatible version negotiation, RFC 9368).
    v2 = protect_initial(b"C" * 8, crypto_frame(0, b"x"), version=quic.VERSION_2, pad_to=0)
    assert [h.version for h in quic.long_headers(a + v2)] == [quic.VERSION_1, quic.VERSION_2]


def test_the_walk_stops_where_a_server_stops() -> None:
    a = protect_initial(b"A" * 8, crypto_frame(0, b"\x01"), pad_to=0)
    short = b"\x40" + bytes(30) + a  # a short header runs to the end of the datagram
    assert quic.long_headers(short) == []
    assert len(quic.long_headers(a + short)) == 1
    retry = bytes((0xF0,)) + (1).to_bytes(4, "big") + b"\x00\x04abcd" + bytes(40)
    assert [h.kind for h in quic.long_headers(a + retry + a)] == [quic.INITIAL, quic.RETRY]
    long_cid = bytes((0xC3,)) + (1).to_bytes(4, "big") + bytes((21,)) + bytes(21) + b"\x00\x00\x10" + bytes(16)
    assert len(quic.long_headers(a + long_cid + a)) == 1
    assert len(quic.long_headers(a + a[:-1])) == 1  # the second one's Length runs past the end
    assert quic.long_headers(a[:3]) == []


def test_a_long_header_of_another_version_anywhere_is_reported() -> None:
    a = protect_initial(b"A" * 8, crypto_frame(0, b"\x01"), pad_to=0)
    other = long_packet(0, 0xFF00001D, b"A" * 8, bytes(40))
    for datagram in (other, a + other, a + other + a):
        with pytest.raises(UnsupportedVersion) as info:
            quic.long_headers(datagram)
        assert info.value.version == 0xFF00001D


def test_decrypt_with_the_keys_of_another_connection_id() -> None:
    # A client's later Initials carry the server's connection ID but the keys of its first DCID.
    packet = protect_initial(b"S" * 5, crypto_frame(0, b"\x01\x00"), key_dcid=b"D" * 8)
    [header] = quic.long_headers(packet)
    assert quic.decrypt_initial(packet, header) is None
    initial = quic.decrypt_initial(packet, header, b"D" * 8)
    assert initial is not None and initial.dcid == b"S" * 5 and initial.crypto == ((0, b"\x01\x00"),)
    assert quic.decrypt_initial(packet, header, b"E" * 8) is None


def test_fixed_bit_and_packet_number_lengths() -> None:
    # The fixed bit is not checked (a server that does not either would read the packet); every
    # packet number length decodes.
    for first in (0x80, 0x81, 0x82, 0xC0, 0xC1, 0xC2, 0xC3):
        packet = protect_initial(bytes(8), crypto_frame(0, b"\x01\x00"), first=first & 0xFC | 3)
        assert quic.parse_initial(packet).crypto == ((0, b"\x01\x00"),)


# -- the assembler --------------------------------------------------------------------------------


def test_overlaps_that_agree_are_one_stream_and_those_that_differ_are_a_conflict() -> None:
    hello = chromium_like_hello()
    a = quic.CryptoAssembler()
    assert a.add([(100, hello[100:300]), (250, hello[250:400])]) is None
    assert a.add([(0, hello[:150]), (350, hello[350:])]) == hello
    with pytest.raises(quic.CryptoConflict):
        a.add([(20, bytes(b ^ 1 for b in hello[20:40]))])
    assert a.add([(10, hello[10:500])]) == hello  # after completion: checked, agrees
    with pytest.raises(quic.CryptoConflict):
        a.add([(len(hello) - 5, b"\x00" * 4 + bytes((hello[-1] ^ 1,)))])
    assert isinstance(quic.CryptoConflict("x"), Malformed)


@given(st.data())
def test_any_order_and_any_overlap_of_agreeing_pieces_gives_the_hello(data: st.DataObject) -> None:
    hello = chromium_like_hello(b"order.test")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(hello) - 1), max_size=12)))
    pieces = list(zip([0, *cuts], [*cuts, len(hello)], strict=True))
    # Widen some pieces so they overlap their neighbours with the same bytes.
    pieces = [(max(0, a - data.draw(st.integers(0, 30))), min(len(hello), b + data.draw(st.integers(0, 30))))
              for a, b in pieces]
    order = data.draw(st.permutations(pieces))
    assembler = quic.CryptoAssembler()
    results = [assembler.add([(a, hello[a:b])]) for a, b in order]
    assert results[-1] == hello and all(r is None for r in results[: results.index(hello)])


def test_the_byte_budget() -> None:
    a = quic.CryptoAssembler()
    a.add([(quic.MAX_CRYPTO_BYTES - 1, b"x")])  # the last byte of the budget is fine
    assert a.size == quic.MAX_CRYPTO_BYTES
    with pytest.raises(Malformed):
        a.add([(quic.MAX_CRYPTO_BYTES - 1, b"xy")])
    # A ClientHello that says it is longer than the budget is Malformed once its header is there.
    with pytest.raises(Malformed):
        quic.CryptoAssembler().add([(0, b"\x01" + (quic.MAX_CRYPTO_BYTES).to_bytes(3, "big"))])
    # The largest ClientHello that fits, in 1100-byte pieces from many packets, in reverse order.
    body = bytes(quic.MAX_CRYPTO_BYTES - 4)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    a = quic.CryptoAssembler()
    pieces = [(i, message[i : i + 1100]) for i in range(0, len(message), 1100)][::-1]
    assert [a.add([p]) for p in pieces][-1] == message
