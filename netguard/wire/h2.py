"""Strategy: the client side of an HTTP/2 cleartext connection (RFC 9113), read for the host each
request names, the way the server reads it.

A client that speaks HTTP/2 without TLS (prior knowledge, `curl --http2-prior-knowledge`, or after
an `Upgrade: h2c`) names its host in the `:authority` pseudo-header of each request's header block,
HPACK-coded (RFC 7541): Huffman strings and indexes into a dynamic table that lives as long as the
connection. So every header block of the connection is decoded, in order, with one `Decoder` per
connection, and every request's host is judged (HTTP/2 multiplexes requests for several hosts over one
connection to a server that serves them all). `HeaderBlock` joins a HEADERS frame and its
CONTINUATION frames (fenced by their lengths; padding and priority fields taken off) and decodes the
block once END_HEADERS closes it. What a server rejects or might read differently is Malformed (the
engine's fail verdict), never "no name": an index past the table, a bad Huffman padding or the EOS
symbol, an integer or string past its bound, a table size update past MAX_TABLE_SIZE or after a
field, a Host header that names another host than `:authority`. Frames of other types are
the caller's to skip by their length. A block without pseudo-headers (trailers) names nothing.

The dynamic table starts at HTTP/2's default size (4096). The server may have allowed a larger one
(its SETTINGS, which netguard does not read): then an index netguard evicted but the server kept is
past netguard's table, which is Malformed, never a different entry (entries are evicted oldest first,
so the newest ones have the same index in both tables).
"""

from __future__ import annotations

from netguard.wire.errors import Malformed

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# HTTP/2's default dynamic table size (SETTINGS_HEADER_TABLE_SIZE), where every connection starts.
DEFAULT_TABLE_SIZE = 4096
# The largest table size update taken: servers allow 4-64 KiB (nghttp2, Go: 4096; h2o, nginx: 4096
# and up to 64 KiB); a larger one is not a client's, and the table must stay bounded.
MAX_TABLE_SIZE = 65536
# One request's header block, all its frames together: servers take 8-64 KiB (nginx 16 KiB by
# default, Go 1 MiB but per field far less); as for an HTTP/1.1 head (wire.http.MAX_HEAD).
MAX_HEADER_BLOCK = 16384
# An HPACK integer: 2^28 bounds every index, length and size a header block can use (RFC 7541 5.1
# leaves it to the decoder; nghttp2 stops at 2^32).
MAX_INTEGER = 1 << 28
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1

# RFC 7541 Appendix A: the static table (index 1..61).
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

# RFC 7541 Appendix B: the Huffman code's length per symbol (0..255, 256 = EOS). The code is
# canonical (codes of one length are consecutive, in symbol order), so the lengths give the codes.
_HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b0806060605"
    "05050606060606060607080f060c0a0d06070707070707070707070707070707070707070707070807080d130d0e060f05"
    "060506050606060507070606060506070605050607070707070f0b0e0d1c141614141616161716171717171718171818"
    "161718171717171516171617171816151416161717151716161815161717151516151716171714161616171616171a1a"
    "1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b1b14181415161515171616191918181a171a1b"
    "1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e"
)
EOS = 256


def _huffman_table() -> dict[tuple[int, int], int]:
    """(length, code) -> symbol, built from the canonical code lengths."""
    table: dict[tuple[int, int], int] = {}
    code, previous = -1, 0
    for symbol in sorted(range(257), key=lambda s: (_HUFFMAN_LENGTHS[s], s)):
        length = _HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous) if code >= 0 else 0
        previous = length
        table[(length, code)] = symbol
    return table


_HUFFMAN = _huffman_table()
_MIN_CODE, _MAX_CODE = min(_HUFFMAN_LENGTHS), max(_HUFFMAN_LENGTHS)


def huffman_decode(data: bytes) -> bytes:
    """Decode an HPACK Huffman string. Raises Malformed for EOS inside it or a padding that is more
    than 7 bits or not the EOS code's leading ones (RFC 7541 5.2)."""
    out = bytearray()
    code = length = 0
    table = _HUFFMAN
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            if length < _MIN_CODE:
                continue
            symbol = table.get((length, code))
            if symbol is None:
                if length >= _MAX_CODE:
                    raise Malformed("HPACK Huffman code longer than any symbol's")
                continue
            if symbol == EOS:
                raise Malformed("HPACK Huffman string holds EOS")
            out.append(symbol)
            code = length = 0
    if length > 7 or code != (1 << length) - 1:
        raise Malformed("HPACK Huffman padding is not at most 7 one bits")
    return bytes(out)


class Decoder:
    """One connection's HPACK decoder (its dynamic table lives as long as the connection)."""

    __slots__ = ("_dynamic", "_max", "_size")

    def __init__(self) -> None:
        self._dynamic: list[tuple[str, str]] = []  # newest first
        self._size = 0
        self._max = DEFAULT_TABLE_SIZE

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header fields of one complete header block, in order. Raises Malformed."""
        fields: list[tuple[str, str]] = []
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                fields.append(self._entry(index))
            elif first & 0x40:  # literal, added to the table
                name, value, pos = self._literal(block, pos, 6)
                fields.append((name, value))
                self._add(name, value)
            elif first & 0x20:  # dynamic table size update: only before the first field
                if fields:
                    raise Malformed("HPACK table size update after a field")
                size, pos = _integer(block, pos, 5)
                if size > MAX_TABLE_SIZE:
                    raise Malformed(f"HPACK table size {size} over {MAX_TABLE_SIZE}")
                self._max = size
                self._evict(0)
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(block, pos, 4)
                fields.append((name, value))
        return fields

    def _entry(self, index: int) -> tuple[str, str]:
        if index == 0:
            raise Malformed("HPACK index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        at = index - len(STATIC_TABLE) - 1
        if at >= len(self._dynamic):
            raise Malformed(f"HPACK index {index} past the table")
        return self._dynamic[at]

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[str, str, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos

    def _add(self, name: str, value: str) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        self._evict(size)
        if size <= self._max:  # a larger entry empties the table and is not added (RFC 7541 4.4)
            self._dynamic.insert(0, (name, value))
            self._size += size

    def _evict(self, room: int) -> None:
        while self._dynamic and self._size + room > self._max:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer with an N-bit prefix at block[pos] (RFC 7541 5.1); the value and the next position."""
    limit = (1 << prefix) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise Malformed("HPACK integer runs past its block")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if value > MAX_INTEGER:
            raise Malformed("HPACK integer too large")
        if not byte & 0x80:
            return value, pos


def _string(block: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(block):
        raise Malformed("HPACK string runs past its block")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    if pos + length > len(block):
        raise Malformed("HPACK string runs past its block")
    raw = block[pos:pos + length]
    text = huffman_decode(raw) if huffman else raw
    # Field names and values are octets; latin-1 keeps every byte as one character (the host check
    # then finds any non-ASCII one).
    return text.decode("latin-1"), pos + length


class HeaderBlock:
    """A HEADERS frame and its CONTINUATION frames, joined until END_HEADERS."""

    __slots__ = ("_parts", "_size", "open")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.open = False  # a HEADERS frame without END_HEADERS came: only CONTINUATION may follow

    def add(self, kind: int, flags: int, payload: bytes) -> bytes | None:
        """Take one HEADERS or CONTINUATION frame's payload; the whole block once END_HEADERS ends it."""
        if kind == HEADERS:
            if self.open:
                raise Malformed("HTTP/2 HEADERS where a CONTINUATION belongs")
            payload = _fragment(flags, payload)
        elif not self.open:
            raise Malformed("HTTP/2 CONTINUATION without HEADERS")
        self._size += len(payload)
        if self._size > MAX_HEADER_BLOCK:
            raise Malformed(f"HTTP/2 header block longer than {MAX_HEADER_BLOCK} bytes")
        self._parts.append(payload)
        if not flags & END_HEADERS:
            self.open = True
            return None
        block = b"".join(self._parts)
        self._parts, self._size, self.open = [], 0, False
        return block


def _fragment(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's header block fragment: its padding and priority fields taken off."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise Malformed("HTTP/2 PADDED frame without a pad length")
        start, end = 1, end - payload[0]
    if flags & PRIORITY_FLAG:
        start += 5
    if start > end:
        raise Malformed("HTTP/2 padding or priority fields longer than the frame")
    return payload[start:end]


def request_authority(fields: list[tuple[str, str]]) -> tuple[bool, str | None]:
    """(whether the block is a request's header block, the authority it names or None). A block
    without pseudo-headers is a trailer section (no request). :authority wins over Host; both that
    differ are Malformed (RFC 9113 8.3.1: a server should reject it)."""
    authority: str | None = None
    host: str | None = None
    pseudo = False
    for name, value in fields:
        if name.startswith(":"):
            pseudo = True
            if name == ":authority":
                if authority is not None:
                    raise Malformed("HTTP/2 request with two :authority fields")
                authority = value
        elif name == "host":
            if host is not None:
                raise Malformed("HTTP/2 request with two Host fields")
            host = value
    if not pseudo:
        return False, None
    if authority is not None and host is not None and authority.lower() != host.lower():
        raise Malformed("HTTP/2 Host names another host than :authority")
    return True, authority if authority is not None else host


def is_server_preface(payload: bytes) -> bool:
    """Whether a server's first payload begins with a whole SETTINGS frame on stream 0 (RFC 9113 3.4:
    an HTTP/2 server's preface; an h2c server sends it as it accepts, before the client's)."""
    if len(payload) < FRAME_HEADER or payload[3] != SETTINGS or payload[4] or any(payload[5:9]):
        return False
    length = int.from_bytes(payload[:3], "big")
    return length % 6 == 0 and FRAME_HEADER + length <= len(payload)
