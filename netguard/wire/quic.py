"""Strategy: read a client's QUIC v1 Initial packet and collect the ClientHello it carries.

Initial packets are encrypted with keys anyone can derive from the Destination Connection ID
(RFC 9001 §5.2): HKDF-Extract with the v1 salt, then HKDF-Expand-Label for key, IV and header
protection key. `parse_initial` reads the long header through the shared `Reader`, removes header
protection (AES-ECB mask over a 16-byte sample, §5.4), decrypts the payload with AES-128-GCM (the
`cryptography` package) and walks the frames an Initial may hold (PADDING, PING, ACK, CRYPTO,
CONNECTION_CLOSE; anything else is Malformed, RFC 9000 §17.2.2). A payload that does not
authenticate is Malformed: it was not a client Initial for that DCID. Versions other than v1,
including version negotiation (version 0), raise `UnsupportedVersion` rather than being guessed.

`CryptoAssembler` takes CRYPTO frames from several packets in any order (Chromium splits its
~1.95 KB ClientHello over two Initial datagrams and shuffles the frames), rejects overlapping
frames whose bytes disagree, and returns the ClientHello handshake message once it is contiguous;
`tls.parse_handshake` reads it. Only the first packet of a coalesced datagram is decoded;
`QuicInitial.packet_length` says where the next one starts.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netguard.wire.errors import Malformed, Truncated, UnsupportedVersion
from netguard.wire.reader import Reader
from netguard.wire.tls import MAX_CLIENT_HELLO

VERSION_1 = 0x00000001
# RFC 9001 §5.2.
INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
# RFC 9000 §17.2: connection IDs are at most 20 bytes in v1.
MAX_CID = 20
# Header protection samples 16 bytes starting 4 bytes after the packet number offset (§5.4.2).
_SAMPLE_OFFSET = 4
_SAMPLE_LEN = 16
_TAG_LEN = 16
# Chromium's shuffled ClientHello arrives in a few dozen frames at most; more is an attempt to make
# the assembler do unbounded work.
MAX_CRYPTO_FRAMES = 256
# The handshake header (4 bytes) plus the largest ClientHello tls.py accepts.
MAX_CRYPTO_BYTES = 4 + MAX_CLIENT_HELLO
# Derived keys are cached per DCID: a client sends several Initials with the same DCID.
KEY_CACHE_SIZE = 256

_FRAME_PADDING = 0x00
_FRAME_PING = 0x01
_FRAME_ACK = 0x02
_FRAME_ACK_ECN = 0x03
_FRAME_CRYPTO = 0x06
_FRAME_CLOSE = 0x1C


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial packet protection keys (RFC 9001 §5.2) and the secrets they come from."""

    initial_secret: bytes
    secret: bytes
    key: bytes
    iv: bytes
    hp: bytes


@dataclass(frozen=True, slots=True)
class QuicInitial:
    """A decrypted client Initial packet: its header fields and CRYPTO frames as (offset, data)."""

    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    packet_number: int
    crypto: tuple[tuple[int, bytes], ...]
    packet_length: int


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    # One HMAC block suffices: every output here is at most 32 bytes (SHA-256 size).
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


@lru_cache(maxsize=KEY_CACHE_SIZE)
def client_initial_keys(dcid: bytes) -> InitialKeys:
    """Derive the client's Initial keys from the Destination Connection ID (QUIC v1)."""
    initial_secret = hmac.digest(INITIAL_SALT_V1, dcid, hashlib.sha256)
    secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    return InitialKeys(
        initial_secret,
        secret,
        _hkdf_expand_label(secret, b"quic key", 16),
        _hkdf_expand_label(secret, b"quic iv", 12),
        _hkdf_expand_label(secret, b"quic hp", 16),
    )


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def _hp_mask(hp: bytes, sample: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    return encryptor.update(sample) + encryptor.finalize()


def looks_like_quic_initial(datagram: bytes) -> bool:
    """Cheap check: a long-header packet of type Initial (any version)."""
    return len(datagram) >= 5 and datagram[0] & 0xB0 == 0x80


def parse_initial(datagram: bytes) -> QuicInitial:
    """Decrypt the client Initial packet at the start of a UDP datagram.

    Raises UnsupportedVersion for versions other than 1, Truncated when the datagram ends before the
    packet does, Malformed otherwise (not a long header, not an Initial, does not decrypt, bad frames).
    """
    r = Reader(datagram)
    first = r.u8()
    if not first & 0x80:
        raise Malformed("short header packet, not an Initial")
    version = r.u32()
    if version != VERSION_1:
        raise UnsupportedVersion(version)
    if (first >> 4) & 0x03 != 0:
        raise Malformed(f"long header packet type {(first >> 4) & 3}, not Initial")
    dcid_len = r.u8()
    if dcid_len > MAX_CID:
        raise Malformed(f"DCID of {dcid_len} bytes")
    dcid = r.take(dcid_len)
    scid_len = r.u8()
    if scid_len > MAX_CID:
        raise Malformed(f"SCID of {scid_len} bytes")
    scid = r.take(scid_len)
    token = r.take(r.varint())
    length = r.varint()
    pn_offset = r.pos
    if length < _SAMPLE_OFFSET + _SAMPLE_LEN:
        raise Malformed(f"Initial payload of {length} bytes is too short to sample")
    r.skip(length)
    packet_end = r.pos
    keys = client_initial_keys(dcid)
    sample = datagram[pn_offset + _SAMPLE_OFFSET : pn_offset + _SAMPLE_OFFSET + _SAMPLE_LEN]
    mask = _hp_mask(keys.hp, sample)
    first ^= mask[0] & 0x0F
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(a ^ b for a, b in zip(datagram[pn_offset : pn_offset + pn_len], mask[1:], strict=False))
    packet_number = int.from_bytes(pn_bytes, "big")
    header = bytes((first,)) + datagram[1:pn_offset] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = datagram[pn_offset + pn_len : packet_end]
    if len(ciphertext) < _TAG_LEN:
        raise Malformed("Initial payload shorter than its AEAD tag")
    try:
        payload = _aead(keys.key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise Malformed("Initial payload does not authenticate with this DCID's keys") from None
    if first & 0x0C:
        raise Malformed("reserved header bits set")  # RFC 9000 §17.2: a protocol violation
    return QuicInitial(version, dcid, scid, token, packet_number, _crypto_frames(payload), packet_end)


def _crypto_frames(payload: bytes) -> tuple[tuple[int, bytes], ...]:
    r = Reader(payload)
    r.fences = 1  # the payload is authenticated and complete: an overrun is Malformed
    frames = []
    while r.remaining():
        kind = r.varint()
        if kind == _FRAME_PADDING:
            run = len(payload) - r.pos - len(payload[r.pos :].lstrip(b"\x00"))
            r.skip(run)
        elif kind == _FRAME_PING:
            continue
        elif kind in (_FRAME_ACK, _FRAME_ACK_ECN):
            r.varint()  # largest acknowledged
            r.varint()  # ack delay
            ranges = r.varint()
            r.varint()  # first range
            for _ in range(ranges):
                # Each range is two varints of at least one byte: the loop ends at the payload's end.
                r.varint()
                r.varint()
            if kind == _FRAME_ACK_ECN:
                r.varint()
                r.varint()
                r.varint()
        elif kind == _FRAME_CRYPTO:
            offset = r.varint()
            data = r.take(r.varint())
            if offset + len(data) > MAX_CRYPTO_BYTES:
                raise Malformed(f"CRYPTO data beyond {MAX_CRYPTO_BYTES} bytes")
            frames.append((offset, data))
        elif kind == _FRAME_CLOSE:
            r.varint()
            r.varint()
            r.skip(r.varint())
        else:
            raise Malformed(f"frame type 0x{kind:x} not allowed in an Initial packet")
    return tuple(frames)


class CryptoAssembler:
    """Collect CRYPTO frames (any order, several packets) until the ClientHello is contiguous."""

    __slots__ = ("_buf", "_frames", "_pieces", "_result")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pieces: list[tuple[int, int]] = []
        self._frames = 0
        self._result: bytes | None = None

    def add(self, frames: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]]) -> bytes | None:
        """Add (offset, data) frames; return the whole ClientHello handshake message once complete.

        Raises Malformed for overlapping frames that disagree, too many frames or too many bytes.
        """
        for offset, data in frames:
            self._add_one(offset, data)
        if self._result is None:
            self._result = self._complete()
        return self._result

    def _add_one(self, offset: int, data: bytes) -> None:
        self._frames += 1
        if self._frames > MAX_CRYPTO_FRAMES:
            raise Malformed(f"more than {MAX_CRYPTO_FRAMES} CRYPTO frames")
        end = offset + len(data)
        if end > MAX_CRYPTO_BYTES:
            raise Malformed(f"CRYPTO data beyond {MAX_CRYPTO_BYTES} bytes")
        if not data:
            return
        buf = self._buf
        for start, stop in self._pieces:
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi and buf[lo:hi] != data[lo - offset : hi - offset]:
                raise Malformed("overlapping CRYPTO frames carry different bytes")
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[offset:end] = data
        self._pieces.append((offset, end))

    def _complete(self) -> bytes | None:
        contiguous = 0
        for start, stop in sorted(self._pieces):
            if start > contiguous:
                break
            contiguous = max(contiguous, stop)
        if contiguous < 4:
            return None
        buf = self._buf
        if buf[0] != 1:
            raise Malformed(f"first handshake message is type {buf[0]}, not ClientHello")
        need = 4 + ((buf[1] << 16) | (buf[2] << 8) | buf[3])
        if need > MAX_CRYPTO_BYTES:
            raise Malformed(f"ClientHello of {need - 4} bytes")
        if contiguous < need:
            return None
        return bytes(buf[:need])


__all__ = [
    "CryptoAssembler",
    "InitialKeys",
    "QuicInitial",
    "Truncated",
    "UnsupportedVersion",
    "client_initial_keys",
    "looks_like_quic_initial",
    "parse_initial",
]
