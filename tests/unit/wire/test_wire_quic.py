"""QUIC v1 Initial: RFC 9001 Appendix A vectors, Chromium-like ClientHello over two Initials with
shuffled CRYPTO frames, truncations, tampering, versions, and the assembler's rules."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wirecorpus import DATA, chromium_like_hello, crypto_frame, protect_initial

from netguard.wire import quic, tls
from netguard.wire.errors import Malformed, ParseError, Truncated, UnsupportedVersion

VECTORS = DATA / "rfc9001"


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


@pytest.mark.parametrize("version", [0, 0x6B3343CF, 0xFF00001D, 0x1A2A3A4A])
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
