"""Strategy: the TLS ClientHello, read incrementally from the client's first bytes.

`ClientHelloReader.feed` takes TCP payload bytes as they arrive (in order; the engine reassembles
by sequence number), unwraps TLS records of type handshake, joins their fragments, and parses the
ClientHello once its 4-byte handshake header says it is complete. So a ClientHello spread over
several records and several TCP segments (Chromium's post-quantum one) is handled the same way as
a single-segment one. Records are unwrapped through the shared `Reader`. The hello itself is read
by one function with the cursor in locals (see reader.py): its handshake length fences it (past
that, an overrun is Malformed), every read is checked against the current fence first, and the
extensions are walked once into type -> body offset without building anything for the ones not
read; only server_name, ALPN and supported_versions are looked into, each fenced by its length.
A single-record ClientHello is parsed where it lies in the input, without copying.

The record layer is read as leniently as the servers that matter read it before the hello (Go's
crypto/tls, OpenSSL, BoringSSL), so that no hello a server would take is missed: any record
version below 0x1000 (Go takes those before it has picked a version; OpenSSL and BoringSSL any
0x03xx), empty handshake records (OpenSSL and BoringSSL skip up to 32), warning-level alerts
before and between the hello's fragments (Go skips up to 16 records, OpenSSL and BoringSSL 4
alerts), and records of up to 2^14 + 2048 bytes (Go's limit). Anything else once the bytes began
like TLS (a first record of type handshake or alert, version below 0x1000) is Malformed, never
"not TLS". `ClientHelloReader(after_hello=...)` reads what a TLS 1.3 server reads after it sent a
HelloRetryRequest: change_cipher_spec and early-data records (application_data, which such a
server skips) may come before the second ClientHello. After a hello, `end` is where the record
holding its last byte ends in the input and `leftover` the handshake bytes after it in that record.

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

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D
ALERT_WARNING = 1
ALERT_FATAL = 2
ALERT_ACCESS_DENIED = 49

# RFC 8446 §5.1: a record's plaintext is at most 2^14 bytes; Go's crypto/tls takes records of up to
# 2^14 + 2048 bytes (its ciphertext bound) before the hello, so a hello in such a record is read too.
MAX_RECORD = 16384 + 2048
# The highest record version a server takes before it has picked one (Go: below 0x1000).
MAX_RECORD_VERSION = 0x0FFF
# Records a server skips before or around the hello, and how many it skips at most: empty handshake
# records (OpenSSL and BoringSSL: 32) and warning alerts (Go: 16 useless records; OpenSSL,
# BoringSSL: 4). One more than the largest is no hello any of them reads.
MAX_EMPTY_RECORDS = 32
MAX_WARNING_ALERTS = 16
# After a HelloRetryRequest: change_cipher_spec and early-data records a TLS 1.3 server skips before
# the second hello (early data up to its max_early_data_size; the engine's byte bound applies too).
MAX_SKIPPED_AFTER_HELLO = 64
# The largest ClientHellos seen are ~2.2 KB (Chromium, X25519MLKEM768); several post-quantum key
# shares still fit in 16 KB. A larger claim is an attempt to make us buffer, not a real client.
MAX_CLIENT_HELLO = 16384

# Bytes a host_name may hold as sent (printable ASCII but space); anything else is reported, not
# decoded. The table maps every other byte to "!", so `name.translate(_HOST_ONLY) == name` holds
# exactly for clean names (one C pass, half the cost of translate's deletechars).
_HOST_ONLY = bytes(b if 0x21 <= b <= 0x7E else 0x21 for b in range(256))
_RECORD = struct.Struct("!BBBH")
# Bound unpack_from methods: the hot path calls them directly, after its own bounds check.
_FIRST_RECORD = struct.Struct("!BBBHBBH").unpack_from  # record header + handshake type, 24-bit length
_HELLO_HEAD = struct.Struct("!H32xB").unpack_from  # legacy_version, random (skipped), session id length
_U16 = struct.Struct("!H").unpack_from
_TAG_LEN = struct.Struct("!HH").unpack_from  # extension type, length
_SNI_SINGLE = struct.Struct("!HBH").unpack_from  # list length, name type, name length
# Precompiled layouts for supported_versions lists (a u8 length holds at most 127 entries).
_U16_ARRAYS = tuple(struct.Struct(f"!{n}H") for n in range(128))
# A NamedTuple's own __new__ is a Python function; building through tuple.__new__ skips it.
_new_hello = tuple.__new__


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


# RFC 8446 §4.1.3: a ServerHello whose random is this value is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
# Where the random lies in a server's first payload: record header (5), handshake type and length
# (4), legacy_version (2).
HRR_RANDOM_OFFSET = 11
HANDSHAKE_SERVER_HELLO = 2


def is_hello_retry_request(payload: bytes) -> bool:
    """Whether a server's TCP payload begins with a HelloRetryRequest (what the kernel rule matches)."""
    return (payload[:1] == bytes((CONTENT_HANDSHAKE,)) and payload[5:6] == bytes((HANDSHAKE_SERVER_HELLO,))
            and payload[HRR_RANDOM_OFFSET:HRR_RANDOM_OFFSET + 32] == HRR_RANDOM)


def access_denied_alert() -> bytes:
    """A TLS record carrying a fatal access_denied alert (legacy record version 0x0303)."""
    return bytes((CONTENT_ALERT, 3, 3, 0, 2, ALERT_FATAL, ALERT_ACCESS_DENIED))


class ClientHelloReader:
    """Incremental ClientHello parser: `feed` the client's first TCP payload bytes in order.

    `after_hello`: read the second ClientHello that follows a HelloRetryRequest, starting at a record
    boundary, with `handshake` the bytes left over after the first hello in its last record."""

    __slots__ = ("_after", "_alerts", "_buf", "_empty", "_error", "_handshake", "_pos", "_result", "_skipped",
                 "end", "leftover")

    def __init__(self, after_hello: bool = False, handshake: bytes = b"") -> None:
        self._buf = bytearray()
        self._pos = 0
        self._handshake = bytearray(handshake)
        self._result: ClientHello | NotTls | None = None
        self._error: Malformed | None = None
        self._after = after_hello
        self._alerts = self._empty = self._skipped = 0
        self.end = 0  # after a hello: where the record holding its last byte ends in the input
        self.leftover = b""  # after a hello: the handshake bytes after it in that record

    def feed(self, data: bytes) -> NeedMore | ClientHello | NotTls:
        """Add bytes; return NeedMore, NotTls or the ClientHello. Raises Malformed."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            fast = _single_record(data) if not self._buf and not self._after else None
            if fast is None:
                result = self._advance(data)
            else:
                result = fast
                self.end = end = 5 + ((data[3] << 8) | data[4])
                self.leftover = data[9 + fast.length : end]
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
        if self._pos == 0 and not self._after and buf:
            if buf[0] not in (CONTENT_HANDSHAKE, CONTENT_ALERT):
                return NotTls(f"first byte 0x{buf[0]:02x} is not a handshake or alert record")
            if len(buf) >= 2 and buf[1] > MAX_RECORD_VERSION >> 8:
                return NotTls(f"record major version {buf[1]}")
        r = Reader(bytes(buf), self._pos)
        while r.remaining() >= 5:
            ctype, major, minor, length = r.unpack(_RECORD)
            if (major << 8) | minor > MAX_RECORD_VERSION:
                raise Malformed(f"record version 0x{major:02x}{minor:02x} around a ClientHello")
            if length > MAX_RECORD:
                raise Malformed(f"record of {length} bytes")
            if r.remaining() < length:
                break
            body = r.take(length)
            self._pos = r.pos
            if ctype != CONTENT_HANDSHAKE:
                self._skip_record(ctype, body)
                continue
            if not length:
                self._empty += 1
                if self._empty > MAX_EMPTY_RECORDS:
                    raise Malformed(f"more than {MAX_EMPTY_RECORDS} empty records")
                continue
            self._handshake += body
            hs = Reader(bytes(self._handshake))
            if hs.u8() != HANDSHAKE_CLIENT_HELLO:
                raise Malformed(f"handshake type {hs.data[0]} where a ClientHello belongs")
            if hs.remaining() >= 3:
                need = 4 + hs.u24()
                if need > 4 + MAX_CLIENT_HELLO:
                    raise Malformed(f"ClientHello of {need - 4} bytes")
                if len(hs.data) >= need:
                    hello = _parse_hello(hs.data, 0, need)
                    self.end = self._pos
                    self.leftover = hs.data[need:]
                    return hello
        return NEED_MORE

    def _skip_record(self, ctype: int, body: bytes) -> None:
        """A record that is no part of the hello: skipped as a server skips it, or Malformed."""
        if ctype == CONTENT_ALERT:
            if len(body) != 2 or body[0] != ALERT_WARNING:
                raise Malformed("an alert other than a warning around a ClientHello")
            self._alerts += 1
            if self._alerts > MAX_WARNING_ALERTS:
                raise Malformed(f"more than {MAX_WARNING_ALERTS} warning alerts around a ClientHello")
            return
        if self._after and not self._handshake and (
            (ctype == CONTENT_CHANGE_CIPHER_SPEC and body == b"\x01") or ctype == CONTENT_APPLICATION_DATA
        ):
            self._skipped += 1
            if self._skipped > MAX_SKIPPED_AFTER_HELLO:
                raise Malformed(f"more than {MAX_SKIPPED_AFTER_HELLO} records before the second ClientHello")
            return
        raise Malformed(f"record type {ctype} around a ClientHello")


def _single_record(data: bytes) -> ClientHello | None:
    """The common case: the whole ClientHello in one record at the start of `data`; no copying."""
    if len(data) < 9:
        return None
    ctype, major, _minor, record_len, hs_type, hs_len_high, hs_len_low = _FIRST_RECORD(data)
    hello_end = 9 + ((hs_len_high << 16) | hs_len_low)
    if ctype != CONTENT_HANDSHAKE or major != 3 or hs_type != HANDSHAKE_CLIENT_HELLO:
        return None
    if hello_end > 5 + record_len or 5 + record_len > len(data) or record_len > MAX_RECORD:
        return None
    return _parse_hello(data, 5, hello_end)


def parse_client_hello(data: bytes) -> ClientHello:
    """One-shot: parse a ClientHello from record-layer bytes (the client's first TCP payload).

    Raises Truncated if the bytes end before the ClientHello does, Malformed otherwise.
    """
    if len(data) >= 9:  # _single_record, inlined: this is the hot path
        ctype, major, _minor, record_len, hs_type, hs_len_high, hs_len_low = _FIRST_RECORD(data)
        hello_end = 9 + ((hs_len_high << 16) | hs_len_low)
        if (
            ctype == CONTENT_HANDSHAKE
            and major == 3
            and hs_type == HANDSHAKE_CLIENT_HELLO
            and hello_end <= 5 + record_len <= len(data)
            and record_len <= MAX_RECORD
        ):
            return _parse_hello(data, 5, hello_end)
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
    return _parse_hello(message, 0, end)


def _overrun(need: int, pos: int) -> Malformed:
    # Inside the hello every enclosing length prefix is complete: an overrun is Malformed.
    return Malformed(f"field of {need} bytes overruns its block at offset {pos}")


def _parse_hello(data: bytes, start: int, end: int) -> ClientHello:
    """Parse the ClientHello whose handshake header is at `start` of `data` and ends at `end`.

    The hot path: one function, the cursor held in locals (`pos`, fenced by `end`), every read
    preceded by its bounds check. The handshake length is satisfied once `end <= len(data)`, so
    from there on an overrun is Malformed."""
    if end > len(data):
        raise Truncated("ClientHello incomplete")
    pos = start + 4
    if pos + 35 > end:
        raise _overrun(34, pos) if pos + 34 > end else _overrun(1, pos + 34)
    legacy_version, sid_len = _HELLO_HEAD(data, pos)
    pos += 35 + sid_len
    if pos > end:
        raise _overrun(sid_len, pos - sid_len)
    if sid_len > 32:
        raise Malformed("session id longer than 32 bytes")
    if pos + 2 > end:
        raise _overrun(2, pos)
    (suites_len,) = _U16(data, pos)
    pos += 2 + suites_len
    if pos > end:
        raise _overrun(suites_len, pos - suites_len)
    if suites_len < 2 or suites_len & 1:
        raise Malformed(f"cipher suites length {suites_len}")
    if pos >= end:
        raise _overrun(1, pos)
    compression_len = data[pos]
    pos += 1 + compression_len
    if pos > end:
        raise _overrun(compression_len, pos - compression_len)
    if compression_len < 1:
        raise Malformed("no compression methods")
    if pos == end:
        return _new_hello(ClientHello, (None, None, (), (), False, legacy_version, (), end - start - 4))
    if pos + 2 > end:
        raise _overrun(2, pos)
    (extensions_len,) = _U16(data, pos)
    pos += 2
    if extensions_len != end - pos:
        raise Malformed("extensions length disagrees with the ClientHello length")
    # Extensions: tag -> body offset (its u16 length sits just before it). One tight loop; the
    # bounds are checked once after it: a block that overruns leaves `pos` past `end`.
    blocks: dict[int, int] = {}
    count = 0
    unpack = _TAG_LEN
    try:
        while pos < end:
            tag, length = unpack(data, pos)
            pos += 4
            blocks[tag] = pos
            pos += length
            count += 1
    except struct.error:
        pos = len(data) + 4  # the header itself ran off the data
    if pos > end:
        raise Malformed(f"field of {pos - end} bytes overruns its block at offset {end}")
    if len(blocks) != count:
        raise Malformed("block type repeated")
    sni: str | None = None
    sni_problem: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    # Only three extensions are read; each body lies inside the hello (checked above) and is fenced
    # by its own length.
    at = blocks.get(EXT_SERVER_NAME)
    if at is not None:
        size = (data[at - 2] << 8) | data[at - 1]
        if size >= 5:
            list_len, name_type, name_len = _SNI_SINGLE(data, at)
            # The usual shape, exactly one host_name, checked here; anything else in _server_name.
            if list_len == size - 2 and name_type == 0 and name_len == size - 5 and name_len:
                name = data[at + 5 : at + size]
                if name.translate(_HOST_ONLY) == name:
                    sni = name.decode("ascii")
                else:
                    sni_problem = "host_name is not printable ASCII"
            else:
                sni, sni_problem = _server_name(data, at, at + size)
        else:
            sni, sni_problem = _server_name(data, at, at + size)
    at = blocks.get(EXT_ALPN)
    if at is not None:
        stop = at + ((data[at - 2] << 8) | data[at - 1])
        alpn = _COMMON_ALPN.get(bytes(data[at:stop])) or _alpn(data, at, stop)  # bytes(): bytearray input
    at = blocks.get(EXT_SUPPORTED_VERSIONS)
    if at is not None:
        size = (data[at - 2] << 8) | data[at - 1]
        if not size:
            raise _overrun(1, at)
        if data[at] != size - 1:
            raise Malformed(f"supported_versions list of {data[at]} bytes in {size - 1}")
        if not size & 1:
            raise Malformed(f"odd u16 array length {size - 1}")
        versions = _U16_ARRAYS[size >> 1].unpack_from(data, at + 1)
    return _new_hello(
        ClientHello,
        (sni, sni_problem, alpn, versions, EXT_ECH in blocks, legacy_version, tuple(blocks), end - start - 4),
    )


def _alpn(data: bytes, start: int, end: int) -> tuple[str, ...]:
    """The ALPN protocol names of the extension body at data[start:end]."""
    pos = start + 2
    if pos > end:
        raise _overrun(2, start)
    if _U16(data, start)[0] != end - pos:
        raise Malformed("ALPN list length disagrees with its extension")
    names = []
    empty = False
    while pos < end:
        first = pos + 1
        pos = first + data[pos]
        if pos > end:
            raise _overrun(pos - first, first)
        empty = empty or pos == first
        names.append(data[first:pos].decode("ascii", "backslashreplace"))
    if empty:
        raise Malformed("empty ALPN protocol name")
    return tuple(names)


def _alpn_body(*names: bytes) -> bytes:
    items = b"".join(bytes((len(name),)) + name for name in names)
    return len(items).to_bytes(2, "big") + items


# The ALPN lists real clients send (curl, Chromium and Go: h2 + http/1.1; Python: http/1.1; QUIC:
# h3), keyed by the extension body byte for byte: a hit skips the item walk. A constant table (never
# grows), built by _alpn itself, so both paths give the same names.
_COMMON_ALPN = {
    body: _alpn(body, 0, len(body))
    for body in (
        _alpn_body(b"h2", b"http/1.1"),
        _alpn_body(b"http/1.1"),
        _alpn_body(b"h2"),
        _alpn_body(b"h3"),
        _alpn_body(b"http/1.1", b"h2"),
    )
}


def _server_name(data: bytes, start: int, end: int) -> tuple[str | None, str | None]:
    size = end - start
    if not size:
        return None, "empty server_name extension"
    names: list[bytes] = []
    if size >= 5:
        list_len, name_type, name_len = _SNI_SINGLE(data, start)
        if list_len == size - 2 and name_type == 0 and name_len == size - 5:
            names.append(data[start + 5 : end])  # the usual shape: exactly one host_name
    if not names:
        if size < 2:
            raise _overrun(2, start)
        if _U16(data, start)[0] != size - 2:
            raise Malformed("server_name list length disagrees with its extension")
        pos = start + 2
        while pos < end:
            name_type = data[pos]
            if pos + 3 > end:
                raise _overrun(2, pos + 1)
            (name_len,) = _U16(data, pos + 1)
            pos += 3 + name_len
            if pos > end:
                raise _overrun(name_len, pos - name_len)
            if name_type == 0:
                names.append(data[pos - name_len : pos])
    if not names:
        return None, "no host_name entry"
    if len(names) > 1:
        return None, f"{len(names)} host_name entries"
    name = names[0]
    if not name:
        return None, "empty host_name"
    if name.translate(_HOST_ONLY) != name:
        return None, "host_name is not printable ASCII"
    return name.decode("ascii"), None


__all__ = [
    "NEED_MORE",
    "ClientHello",
    "ClientHelloReader",
    "NeedMore",
    "NotTls",
    "ParseError",
    "access_denied_alert",
    "is_grease",
    "is_hello_retry_request",
    "looks_like_tls",
    "parse_client_hello",
    "parse_handshake",
]
