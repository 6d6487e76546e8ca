"""Strategy: read the client Initial packets of QUIC v1 (RFC 9000, 9001) and v2 (RFC 9369) in a
UDP datagram, and collect the ClientHello they carry.

A datagram may hold several long-header packets one after another (coalescing, RFC 9000 §12.2):
`long_headers` walks them all, each delimited by its Length field, and stops where a server would:
at a short-header packet (it runs to the end of the datagram), at a Retry (it has no Length), and
at a header no server could delimit (a connection ID over 20 bytes, a Length past the end). A
long header of a version other than v1 and v2 raises `UnsupportedVersion`: netguard cannot tell
where its packets end or what they say, and a server of that version might read them.

Initial packets are encrypted with keys anyone can derive from a Destination Connection ID
(RFC 9001 §5.2; v2: its own salt and "quicv2 " labels, RFC 9369 §3.3): HKDF-Extract with the
version's salt, then HKDF-Expand-Label for key, IV and header protection key. `decrypt_initial`
removes header protection (AES-ECB mask over a 16-byte sample, §5.4) and the AES-128-GCM payload
protection (the `cryptography` package) with the keys of a given connection ID, and walks the frames
an Initial may hold (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE; anything else is Malformed, RFC
9000 §17.2.2). A payload that does not authenticate gives None: it was not protected with those
keys. Which keys to try is the caller's business: a server decrypts a new connection's Initial with
the keys of its own DCID, and any Initial it routes to a connection it already has with that
connection's keys, whatever the packet's DCID.

`CryptoAssembler` takes CRYPTO frames from several packets in any order (Chromium splits its
~1.95 KB ClientHello over two Initial datagrams and shuffles the frames), raises `CryptoConflict`
for overlapping frames whose bytes disagree, and returns the ClientHello handshake message once it
is contiguous; `tls.parse_handshake` reads it. It keeps the bytes after that, so that frames of the
same connection that come later are checked against what was judged.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netguard.wire.errors import Malformed, Truncated, UnsupportedVersion
from netguard.wire.reader import Reader
from netguard.wire.tls import MAX_CLIENT_HELLO

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF  # RFC 9369 §3.1
# Long-header packet kinds.
INITIAL, ZERO_RTT, HANDSHAKE, RETRY = "initial", "0-rtt", "handshake", "retry"


@dataclass(frozen=True, slots=True)
class Version:
    """What differs between the QUIC versions netguard reads: salt, HKDF labels, type bits."""

    number: int
    salt: bytes
    label_prefix: bytes
    kinds: tuple[str, str, str, str]  # the packet kind for each value of the two type bits


V1 = Version(VERSION_1, bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),  # RFC 9001 §5.2
             b"quic ", (INITIAL, ZERO_RTT, HANDSHAKE, RETRY))
V2 = Version(VERSION_2, bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),  # RFC 9369 §3.3.1
             b"quicv2 ", (RETRY, INITIAL, ZERO_RTT, HANDSHAKE))  # RFC 9369 §3.2
VERSIONS = {V1.number: V1, V2.number: V2}

# RFC 9000 §17.2: connection IDs are at most 20 bytes in v1 (and v2); a server drops a longer one.
MAX_CID = 20
# Header protection samples 16 bytes starting 4 bytes after the packet number offset (§5.4.2).
_SAMPLE_OFFSET = 4
_SAMPLE_LEN = 16
_TAG_LEN = 16
# CRYPTO frames per connection. Each is checked against the ranges already held, so this bounds
# the work an Initial flood can cause; Chromium's shuffled ClientHello uses a few dozen at most.
MAX_CRYPTO_FRAMES = 256
# The byte budget of one connection's CRYPTO stream: the handshake header (4 bytes) plus the
# largest ClientHello tls.py accepts. A client's Initial CRYPTO stream holds nothing else.
MAX_CRYPTO_BYTES = 4 + MAX_CLIENT_HELLO
# Derived keys (and the ciphers made from them) are cached per DCID: a client sends several
# Initials with one DCID, and netguard may try one connection's keys on several packets.
KEY_CACHE_SIZE = 256

_FRAME_PADDING = 0x00
_FRAME_PING = 0x01
_FRAME_ACK = 0x02
_FRAME_ACK_ECN = 0x03
_FRAME_CRYPTO = 0x06
_FRAME_CLOSE = 0x1C


class CryptoConflict(Malformed):
    """Two CRYPTO frames of one connection give different bytes for the same offsets (an evasion:
    a filter and a server could each keep a different copy)."""


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial packet protection keys (RFC 9001 §5.2) and the secrets they come from."""

    initial_secret: bytes
    secret: bytes
    key: bytes
    iv: bytes
    hp: bytes


@dataclass(frozen=True, slots=True)
class LongHeader:
    """One long-header packet of a datagram, delimited but not decrypted."""

    version: int
    kind: str  # INITIAL, ZERO_RTT, HANDSHAKE or RETRY
    dcid: bytes
    scid: bytes
    token: bytes  # Initial packets only
    start: int  # where the packet starts in the datagram
    pn_offset: int  # where its (protected) packet number starts; for a Retry, its end
    end: int  # just past the packet


@dataclass(frozen=True, slots=True)
class QuicInitial:
    """A decrypted client Initial packet: its header fields and CRYPTO frames as (offset, data)."""

    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    packet_number: int
    crypto: tuple[tuple[int, bytes], ...]
    packet_length: int  # where the packet ends in the datagram


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    # One HMAC block suffices: every output here is at most 32 bytes (SHA-256 size).
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


@lru_cache(maxsize=KEY_CACHE_SIZE)
def client_initial_keys(dcid: bytes, version: int = VERSION_1) -> InitialKeys:
    """Derive the client's Initial keys from the Destination Connection ID (v1 or v2)."""
    v = VERSIONS.get(version)
    if v is None:
        raise UnsupportedVersion(version)
    initial_secret = hmac.digest(v.salt, dcid, hashlib.sha256)
    secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    prefix = v.label_prefix
    return InitialKeys(
        initial_secret,
        secret,
        _hkdf_expand_label(secret, prefix + b"key", 16),
        _hkdf_expand_label(secret, prefix + b"iv", 12),
        _hkdf_expand_label(secret, prefix + b"hp", 16),
    )


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _ecb(hp: bytes) -> Any:
    # ECB keeps no state between blocks, so one encryptor serves every sample of this key.
    return Cipher(algorithms.AES(hp), modes.ECB()).encryptor()


def is_long_header(datagram: bytes) -> bool:
    """Cheap check: the datagram starts with a long-header packet (RFC 8999 §5.1), any version."""
    return bool(datagram) and datagram[0] & 0x80 == 0x80


def looks_like_quic_initial(datagram: bytes) -> bool:
    """Cheap check: the datagram starts with a v1 or v2 long header of type Initial."""
    if len(datagram) < 5 or not datagram[0] & 0x80:
        return False
    v = VERSIONS.get(int.from_bytes(datagram[1:5], "big"))
    return v is not None and v.kinds[(datagram[0] >> 4) & 3] == INITIAL


def version_of(datagram: bytes) -> int | None:
    """The version field of a datagram's first long header; None for a short header or too few bytes."""
    if len(datagram) < 5 or not datagram[0] & 0x80:
        return None
    return int.from_bytes(datagram[1:5], "big")


def long_headers(datagram: bytes) -> list[LongHeader]:
    """The long-header packets a datagram holds, in order (RFC 9000 §12.2).

    Stops at a short-header packet, after a Retry, and at a header a server could not delimit (it
    drops that packet and the rest of the datagram, and so does this walk). Raises
    UnsupportedVersion for a long header of a version other than v1 and v2.
    """
    out: list[LongHeader] = []
    size = len(datagram)
    pos = 0
    while pos < size:
        first = datagram[pos]
        if not first & 0x80:
            break
        r = Reader(datagram, pos + 1)
        try:
            number = r.u32()
        except Truncated:
            break
        v = VERSIONS.get(number)
        if v is None:
            raise UnsupportedVersion(number)
        kind = v.kinds[(first >> 4) & 3]
        try:
            dcid_len = r.u8()
            if dcid_len > MAX_CID:
                break
            dcid = r.take(dcid_len)
            scid_len = r.u8()
            if scid_len > MAX_CID:
                break
            scid = r.take(scid_len)
            if kind == RETRY:
                out.append(LongHeader(number, kind, dcid, scid, b"", pos, size, size))
                break
            token = r.take(r.varint()) if kind == INITIAL else b""
            length = r.varint()
            pn_offset = r.pos
            r.skip(length)
        except Truncated:
            break
        out.append(LongHeader(number, kind, dcid, scid, token, pos, pn_offset, r.pos))
        pos = r.pos
    return out


def decrypt_initial(datagram: bytes, header: LongHeader, key_dcid: bytes | None = None) -> QuicInitial | None:
    """Remove the protection of one client Initial packet with the keys of `key_dcid` (default: its
    own DCID) in its version. None if it does not authenticate with those keys.

    Raises Malformed for frames an Initial may not hold, a malformed payload, or reserved header bits
    set once protection is removed (RFC 9000 §17.2: a connection error, not a packet to read past).
    """
    keys = client_initial_keys(header.dcid if key_dcid is None else key_dcid, header.version)
    pn_offset, end = header.pn_offset, header.end
    if end - pn_offset < _SAMPLE_OFFSET + _SAMPLE_LEN:
        return None  # too short to sample: a server cannot remove its header protection either
    sample = datagram[pn_offset + _SAMPLE_OFFSET : pn_offset + _SAMPLE_OFFSET + _SAMPLE_LEN]
    mask = _ecb(keys.hp).update(sample)
    first = datagram[header.start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(a ^ b for a, b in zip(datagram[pn_offset : pn_offset + pn_len], mask[1:], strict=False))
    packet_number = int.from_bytes(pn_bytes, "big")
    aad = bytes((first,)) + datagram[header.start + 1 : pn_offset] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = datagram[pn_offset + pn_len : end]
    if len(ciphertext) < _TAG_LEN:
        return None
    try:
        payload = _aead(keys.key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return None
    if first & 0x0C:
        raise Malformed("reserved header bits set")
    return QuicInitial(header.version, header.dcid, header.scid, header.token, packet_number,
                       _crypto_frames(payload), end)


def parse_initial(datagram: bytes) -> QuicInitial:
    """Decrypt the client Initial packet at the start of a UDP datagram with its own DCID's keys.

    Raises UnsupportedVersion for versions other than v1 and v2, Truncated when the datagram ends
    before the packet does, Malformed otherwise (not a long header, not an Initial, does not decrypt,
    bad frames).
    """
    r = Reader(datagram)
    first = r.u8()
    if not first & 0x80:
        raise Malformed("short header packet, not an Initial")
    number = r.u32()
    v = VERSIONS.get(number)
    if v is None:
        raise UnsupportedVersion(number)
    kind = v.kinds[(first >> 4) & 3]
    if kind != INITIAL:
        raise Malformed(f"long header packet of type {kind}, not Initial")
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
    initial = decrypt_initial(datagram, LongHeader(number, kind, dcid, scid, token, 0, pn_offset, r.pos))
    if initial is None:
        raise Malformed("Initial payload does not authenticate with this DCID's keys")
    return initial


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
    """One connection's CRYPTO stream: frames in any order, until the ClientHello is contiguous,
    and kept after that so that later frames are checked against it."""

    __slots__ = ("_buf", "_frames", "_ranges", "_result")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ranges: list[list[int]] = []  # sorted, disjoint, non-adjacent [start, stop) held
        self._frames = 0
        self._result: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes held (the buffer reaches the highest offset seen)."""
        return len(self._buf)

    @property
    def complete(self) -> bool:
        """True once the ClientHello is whole."""
        return self._result is not None

    def add(self, frames: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]]) -> bytes | None:
        """Add (offset, data) frames; return the whole ClientHello handshake message once complete.

        Raises CryptoConflict for overlapping frames that disagree, Malformed for too many frames,
        data past the byte budget, or a first handshake message that is not a ClientHello.
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
        merged = [offset, end]
        kept: list[list[int]] = []
        for piece in self._ranges:
            start, stop = piece
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi and buf[lo:hi] != data[lo - offset : hi - offset]:
                raise CryptoConflict("overlapping CRYPTO frames carry different bytes")
            if stop < offset or start > end:
                kept.append(piece)
            else:  # overlapping or adjacent: one range
                merged[0], merged[1] = min(merged[0], start), max(merged[1], stop)
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[offset:end] = data
        kept.append(merged)
        kept.sort()
        self._ranges = kept

    def _complete(self) -> bytes | None:
        if not self._ranges or self._ranges[0][0] != 0:
            return None
        contiguous = self._ranges[0][1]
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
    "HANDSHAKE",
    "INITIAL",
    "RETRY",
    "V1",
    "V2",
    "VERSIONS",
    "VERSION_1",
    "VERSION_2",
    "ZERO_RTT",
    "CryptoAssembler",
    "CryptoConflict",
    "InitialKeys",
    "LongHeader",
    "QuicInitial",
    "Truncated",
    "UnsupportedVersion",
    "Version",
    "client_initial_keys",
    "decrypt_initial",
    "is_long_header",
    "long_headers",
    "looks_like_quic_initial",
    "parse_initial",
    "version_of",
]
