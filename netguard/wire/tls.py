"""Strategy: the TLS ClientHello, read incrementally from the client's first bytes.

`ClientHelloReader.feed` takes TCP payload bytes as they arrive (in order; the engine reassembles
by sequence number), unwraps TLS records of type handshake, joins their fragments, and parses the
ClientHello once its 4-byte handshake header says it is complete. So a ClientHello spread over
several records and several TCP segments (Chromium's post-quantum one) is handled the same way as
a single-segment one. The parse itself goes through the shared `Reader`: the hello is fenced by its
handshake length, each extension body read through a fenced sub-reader.

What is reported rather than guessed: a server_name extension with several host_name entries, an
empty one, or one with non-ASCII / control bytes gives `sni = None` and a `sni_problem` text. A
repeated extension type is Malformed (RFC 8446 §4.2 forbids it; two SNI extensions would otherwise
let a filter and a server read different names). GREASE values (RFC 8701) are accepted anywhere and
kept as they are in `extensions` and `supported_versions` (see `is_grease`).

Error convention: `feed` returns NeedMore, NotTls or ClientHello and raises `Malformed` for bytes
that start like TLS but break its rules. Once it has produced a result or raised, it repeats it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from netguard.wire.errors import Malformed, ParseError, Truncated
from netguard.wire.reader import Reader

CONTENT_HANDSHAKE = 22
CONTENT_ALERT = 21
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D
ALERT_FATAL = 2
ALERT_ACCESS_DENIED = 49

# RFC 8446 §5.1: a record's plaintext is at most 2^14 bytes.
MAX_RECORD = 16384
# The largest ClientHellos seen are ~2.2 KB (Chromium, X25519MLKEM768); several post-quantum key
# shares still fit in 16 KB. A larger claim is an attempt to make us buffer, not a real client.
MAX_CLIENT_HELLO = 16384

# Bytes a host_name may hold as sent; anything else is reported, not decoded.
_HOST_BYTES = bytes(range(0x21, 0x7F))
_RECORD = struct.Struct("!BBBH")
_HELLO_FIXED = struct.Struct("!H32x")  # legacy_version, random (skipped)
_FIRST_RECORD = struct.Struct("!BBBHBBH")  # record header + handshake type and 24-bit length
_SNI_SINGLE = struct.Struct("!HBH")  # list length, name type, name length


@dataclass(frozen=True, slots=True)
class NeedMore:
    """More bytes are needed before anything can be said."""


@dataclass(frozen=True, slots=True)
class NotTls:
    """The bytes are not the start of a TLS handshake."""

    reason: str


NEED_MORE = NeedMore()


class ClientHello(NamedTuple):
    """The fields of a ClientHello that matter for deciding where a connection goes.

    `sni`: the single host_name, ASCII, as sent (case and trailing dot untouched), or None.
    `sni_problem`: why `sni` is None although a server_name extension was present, else None.
    `ech`: an encrypted_client_hello extension (0xfe0d) is present; `sni` is then the outer name.
    `extensions`: the extension types in wire order. `length`: the handshake body length.
    (A NamedTuple, not a dataclass: it is built once per connection on the hot path and a frozen
    dataclass costs three times as much to construct.)
    """

    sni: str | None
    sni_problem: str | None
    alpn: tuple[str, ...]
    supported_versions: tuple[int, ...]
    ech: bool
    legacy_version: int
    extensions: tuple[int, ...]
    length: int


def is_grease(value: int) -> bool:
    """True for a GREASE value (RFC 8701: 0x0a0a, 0x1a1a, ..., 0xfafa)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def looks_like_tls(first_bytes: bytes) -> bool:
    """Cheap check: a handshake record with major version 3 (needs at least 2 bytes to say yes)."""
    return len(first_bytes) >= 2 and first_bytes[0] == CONTENT_HANDSHAKE and first_bytes[1] == 3


def access_denied_alert() -> bytes:
    """A TLS record carrying a fatal access_denied alert (legacy record version 0x0303)."""
    return bytes((CONTENT_ALERT, 3, 3, 0, 2, ALERT_FATAL, ALERT_ACCESS_DENIED))


class ClientHelloReader:
    """Incremental ClientHello parser: `feed` the client's first TCP payload bytes in order."""

    __slots__ = ("_buf", "_error", "_handshake", "_pos", "_result")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._handshake = bytearray()
        self._result: ClientHello | NotTls | None = None
        self._error: Malformed | None = None

    def feed(self, data: bytes) -> NeedMore | ClientHello | NotTls:
        """Add bytes; return NeedMore, NotTls or the ClientHello. Raises Malformed."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            fast = _single_record(data) if not self._buf else None
            result = self._advance(data) if fast is None else fast
        except Malformed as exc:
            self._error = exc
            raise
        if not isinstance(result, NeedMore):
            self._result = result
            self._buf = bytearray()
        return result

    def _advance(self, data: bytes) -> NeedMore | ClientHello | NotTls:
        buf = self._buf
        buf += data
        if self._pos == 0 and not self._handshake and buf:
            if buf[0] != CONTENT_HANDSHAKE:
                return NotTls(f"first byte 0x{buf[0]:02x} is not a handshake record")
            if len(buf) >= 2 and buf[1] != 3:
                return NotTls(f"record major version {buf[1]}")
        r = Reader(bytes(buf), self._pos)
        while r.remaining() >= 5:
            ctype, major, _minor, length = r.unpack(_RECORD)
            if ctype != CONTENT_HANDSHAKE or major != 3:
                raise Malformed(f"record type {ctype} version {major} inside a ClientHello")
            if length == 0 or length > MAX_RECORD:
                raise Malformed(f"handshake record of {length} bytes")
            if r.remaining() < length:
                break
            self._handshake += r.take(length)
            self._pos = r.pos
            hs = Reader(bytes(self._handshake))
            if hs.u8() != HANDSHAKE_CLIENT_HELLO:
                raise Malformed(f"handshake type {hs.data[0]} where a ClientHello belongs")
            if hs.remaining() >= 3:
                need = 4 + hs.u24()
                if need > 4 + MAX_CLIENT_HELLO:
                    raise Malformed(f"ClientHello of {need - 4} bytes")
                if len(hs.data) >= need:
                    return _parse_hello(Reader(hs.data), 0, need)
        return NEED_MORE


def _single_record(data: bytes) -> ClientHello | None:
    """The common case: the whole ClientHello in one record at the start of `data`; no copying."""
    if len(data) < 9:
        return None
    r = Reader(data)
    ctype, major, _minor, record_len, hs_type, hs_len_high, hs_len_low = r.unpack(_FIRST_RECORD)
    hello_end = 9 + ((hs_len_high << 16) | hs_len_low)
    if ctype != CONTENT_HANDSHAKE or major != 3 or hs_type != HANDSHAKE_CLIENT_HELLO:
        return None
    if hello_end > 5 + record_len or 5 + record_len > len(data) or record_len > MAX_RECORD:
        return None
    return _parse_hello(r, 5, hello_end)


def parse_client_hello(data: bytes) -> ClientHello:
    """One-shot: parse a ClientHello from record-layer bytes (the client's first TCP payload).

    Raises Truncated if the bytes end before the ClientHello does, Malformed otherwise.
    """
    fast = _single_record(data)
    if fast is not None:
        return fast
    result = ClientHelloReader().feed(data)
    if isinstance(result, NeedMore):
        raise Truncated("ClientHello incomplete")
    if isinstance(result, NotTls):
        raise Malformed(f"not TLS: {result.reason}")
    return result


def parse_handshake(message: bytes) -> ClientHello:
    """Parse a bare ClientHello handshake message (type, 3-byte length, body), as QUIC carries it."""
    if len(message) >= 1 and message[0] != HANDSHAKE_CLIENT_HELLO:
        raise Malformed(f"handshake type {message[0]} is not ClientHello")
    if len(message) > 4 + MAX_CLIENT_HELLO:
        raise Malformed("ClientHello too long")
    if len(message) < 4:
        raise Truncated("handshake header incomplete")
    end = 4 + ((message[1] << 16) | (message[2] << 8) | message[3])
    if end > len(message):
        raise Truncated("ClientHello incomplete")
    return _parse_hello(Reader(message), 0, end)


def _parse_hello(r: Reader, start: int, end: int) -> ClientHello:
    """Parse the ClientHello whose handshake header is at `start` of `r`'s data and ends at `end`."""
    if end > len(r.data):
        raise Truncated("ClientHello incomplete")
    # The handshake length is satisfied: from here on an overrun is Malformed.
    r.pos = start + 4
    r.end = end
    r.fences = 1
    (legacy_version,) = r.unpack(_HELLO_FIXED)
    if r.skip_vector(1) > 32:
        raise Malformed("session id longer than 32 bytes")
    suites_len = r.skip_vector(2)
    if suites_len < 2 or suites_len & 1:
        raise Malformed(f"cipher suites length {suites_len}")
    if r.skip_vector(1) < 1:
        raise Malformed("no compression methods")
    if r.pos == end:
        return ClientHello(None, None, (), (), False, legacy_version, (), end - start - 4)
    if r.u16() != r.remaining():
        raise Malformed("extensions length disagrees with the ClientHello length")
    blocks = r.tagged_blocks()
    sni: str | None = None
    sni_problem: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    # The extensions are all known now; the cursor visits the three that matter, each fenced.
    block = blocks.get(EXT_SERVER_NAME)
    if block is not None:
        sni, sni_problem = _server_name(r.goto(*block))
    block = blocks.get(EXT_ALPN)
    if block is not None:
        alpn = _alpn(r.goto(*block))
    block = blocks.get(EXT_SUPPORTED_VERSIONS)
    if block is not None:
        versions = _supported_versions(r.goto(*block))
    return ClientHello(
        sni, sni_problem, alpn, versions, EXT_ECH in blocks, legacy_version, tuple(blocks), end - start - 4
    )


def _server_name(r: Reader) -> tuple[str | None, str | None]:
    size = r.remaining()
    if not size:
        return None, "empty server_name extension"
    names: list[bytes] = []
    if size >= 5:
        list_len, name_type, name_len = r.unpack(_SNI_SINGLE)
        if list_len == size - 2 and name_type == 0 and name_len == size - 5:
            names.append(r.take(name_len))  # the usual shape: exactly one host_name
        else:
            r.pos -= 5
    if not names:
        if r.u16() != r.remaining():
            raise Malformed("server_name list length disagrees with its extension")
        while r.remaining():
            name_type = r.u8()
            name = r.take(r.u16())
            if name_type == 0:
                names.append(name)
    if not names:
        return None, "no host_name entry"
    if len(names) > 1:
        return None, f"{len(names)} host_name entries"
    name = names[0]
    if not name:
        return None, "empty host_name"
    if name.translate(None, _HOST_BYTES):
        return None, "host_name is not printable ASCII"
    return name.decode("ascii"), None


def _alpn(r: Reader) -> tuple[str, ...]:
    if r.u16() != r.remaining():
        raise Malformed("ALPN list length disagrees with its extension")
    names = r.u8_prefixed_items()
    if not all(names):
        raise Malformed("empty ALPN protocol name")
    return tuple([name.decode("ascii", "backslashreplace") for name in names])


def _supported_versions(r: Reader) -> tuple[int, ...]:
    length = r.u8()
    if length != r.remaining():
        raise Malformed(f"supported_versions list of {length} bytes in {r.remaining()}")
    return r.u16_array(length)


__all__ = [
    "NEED_MORE",
    "ClientHello",
    "ClientHelloReader",
    "NeedMore",
    "NotTls",
    "ParseError",
    "access_denied_alert",
    "is_grease",
    "looks_like_tls",
    "parse_client_hello",
    "parse_handshake",
]
