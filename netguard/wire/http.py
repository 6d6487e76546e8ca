"""Strategy: HTTP/1.x requests as a server reads them: heads, body framing, chunked bodies.

`parse_request_head` is called with the client's bytes from where a request may begin. It skips the
empty lines (CR, LF) a server skips before a request line (RFC 9112 §2.2; nginx takes any number),
returns None while the head is incomplete (bounded by MAX_HEAD), and raises Malformed as soon as
the bytes cannot be HTTP: the method is checked on the first bytes, so a non-HTTP stream is
rejected without buffering. The name to judge (`host`) is the CONNECT authority for CONNECT, the
authority of an absolute-form target (RFC 9112 §3.2.2: it overrides Host), else the Host header.
What would let a filter and a server disagree is Malformed, not guessed: several Host headers, a
Host that names another host than an absolute-form target, userinfo in an authority, obsolete line
folding, a bare CR, a bad port, and for the body (RFC 9112 §6): Transfer-Encoding together with
Content-Length, a Transfer-Encoding whose last coding is not chunked or in an HTTP/1.0 request, and
Content-Length values that differ or are not plain digits. `head_length` includes the skipped
empty lines; `body_length` / `chunked` say what follows the head, so that the next request's head is
found where the server finds it (`parse_chunk_line` and `parse_trailers` read a chunked body's
framing; the chunk data is skipped by count). The HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0`)
is returned as a head without a host (its frames are wire.h2's). `authority` splits a host[:port].
"""

from __future__ import annotations

from dataclasses import dataclass

from netguard.wire.errors import Malformed
from netguard.wire.reader import Reader

# Servers default to 8-16 KB for a request head (nginx 8 KB, Apache 8 KB per line); a client whose
# head is larger is not a registry client, and we must not buffer without end.
MAX_HEAD = 16384
# The longest registered method in common use is 7 bytes (CONNECT/OPTIONS); extension methods
# are tokens, and we allow up to this many bytes before deciding the stream is not HTTP.
MAX_METHOD = 20
# A chunk-size line with its extensions (servers: nginx and Go take a few KB at most).
MAX_CHUNK_LINE = 4096
# Content-Length and chunk sizes: a server's 64-bit integer holds at most 19 decimal / 16 hex digits.
MAX_LENGTH_DIGITS = 19
MAX_CHUNK_DIGITS = 16

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_KNOWN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI")
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head. `host` is the name to judge (see module doc), without port or brackets."""

    method: str
    target: str
    version: str
    host: str | None
    port: int | None
    host_header: str | None
    connect_authority: tuple[str, int] | None
    head_length: int
    body_length: int = 0  # Content-Length (0: no body)
    chunked: bool = False  # Transfer-Encoding ends in chunked
    upgrade: bool = False  # an Upgrade header: after the answer the stream may be another protocol


def looks_like_http(first_bytes: bytes) -> bool:
    """Cheap check: the bytes start (or could start) with a common method and a space."""
    for method in _KNOWN_METHODS:
        word = method + b" "
        if first_bytes.startswith(word) or (first_bytes and word.startswith(first_bytes)):
            return True
    return False


def parse_request_head(data: bytes) -> RequestHead | None:
    """Parse the request head at the start of `data` (after empty lines); None while it is incomplete."""
    blank = _blank_prefix(data)
    if blank:
        if blank > MAX_HEAD:
            raise Malformed(f"more than {MAX_HEAD} bytes of empty lines before a request")
        after = parse_request_head(data[blank:])
        if after is None:
            return None
        return _replace_length(after, after.head_length + blank)
    _check_method_prefix(data)
    end, body_start = _find_head_end(data)
    if end < 0:
        if len(data) > MAX_HEAD:
            raise Malformed(f"request head longer than {MAX_HEAD} bytes")
        return None
    if body_start > MAX_HEAD:
        raise Malformed(f"request head longer than {MAX_HEAD} bytes")
    head = Reader(data).take(end)
    if b"\r" in head and b"\r" in (head + b"\n").replace(b"\r\n", b""):
        raise Malformed("bare CR in a request head")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    method, target, version = _request_line(lines[0])
    fields = _fields(lines[1:])
    host_header = fields.host
    host: str | None = None
    port: int | None = None
    connect: tuple[str, int] | None = None
    if method.upper() == b"CONNECT":  # Squid takes the method in any case
        host, connect_port = authority(target, port_required=True)
        if connect_port is None:
            raise Malformed("CONNECT target without port")
        port = connect_port
        connect = (host, port)
    elif b"://" in target:
        scheme, _, rest = target.partition(b"://")
        if scheme.lower() not in (b"http", b"https"):
            raise Malformed("absolute-form target with a scheme other than http(s)")
        named = rest.split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
        host, port = authority(named, port_required=False)
        if host_header:
            header_host, _ = authority(host_header.encode("ascii"), port_required=False)
            if header_host.lower() != host.lower():
                raise Malformed("Host header names another host than the request target")
    elif host_header:
        host, port = authority(host_header.encode("ascii"), port_required=False)
    body_length, chunked = _framing(fields, version)
    return RequestHead(
        method.decode("ascii"),
        target.decode("ascii", "backslashreplace"),
        version.decode("ascii"),
        host,
        port,
        host_header,
        connect,
        body_start,
        body_length,
        chunked,
        fields.upgrade,
    )


def _blank_prefix(data: bytes) -> int:
    """How many CR and LF bytes `data` begins with."""
    if not data or data[0] not in (0x0D, 0x0A):
        return 0
    return len(data) - len(data.lstrip(b"\r\n"))


def _replace_length(head: RequestHead, length: int) -> RequestHead:
    return RequestHead(head.method, head.target, head.version, head.host, head.port, head.host_header,
                       head.connect_authority, length, head.body_length, head.chunked, head.upgrade)


def parse_chunk_line(data: bytes) -> tuple[int, int] | None:
    """The chunk-size line at the start of `data`: (chunk size, bytes of the line with its CRLF), or
    None while incomplete. Strict (RFC 9112 §7.1): hex digits, then extensions of token characters,
    '=', quoted strings and blanks, then CRLF; anything else is Malformed."""
    end = data.find(b"\n", 0, MAX_CHUNK_LINE)
    if end < 0:
        if len(data) >= MAX_CHUNK_LINE:
            raise Malformed(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
        return None
    if end == 0 or data[end - 1] != 0x0D:
        raise Malformed("chunk-size line not ended by CRLF")
    line = data[: end - 1]
    size_text = line[: len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))]
    if not size_text or len(size_text) > MAX_CHUNK_DIGITS:
        raise Malformed("chunk size is not a hex number of at most 16 digits")
    _check_extensions(line[len(size_text):])
    return int(size_text, 16), end + 1


def _check_extensions(rest: bytes) -> None:
    # chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ); ext-val = token / quoted-string
    allowed = _TCHAR | frozenset(b' \t;="\\')
    if rest and (rest.lstrip(b" \t")[:1] != b";" or any(b not in allowed for b in rest)):
        raise Malformed("chunk extension with bytes other than tokens, '=', quotes and blanks")
    if rest.count(b'"') % 2:
        raise Malformed("unterminated quoted string in a chunk extension")


def parse_trailers(data: bytes) -> int | None:
    """The trailer section after the last chunk (header lines, then an empty line): the bytes it
    takes with its final CRLF, or None while incomplete."""
    if data.startswith(b"\r\n"):
        return 2
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        if len(data) >= MAX_HEAD:
            raise Malformed(f"trailer section longer than {MAX_HEAD} bytes")
        return None
    section = data[:end]
    if b"\r" in section.replace(b"\r\n", b"") or b"\n" in section.replace(b"\r\n", b""):
        raise Malformed("bare CR or LF in a trailer section")
    _fields(section.split(b"\r\n"))
    return end + 4


def _check_method_prefix(data: bytes) -> None:
    # Reject a non-HTTP stream from its first bytes instead of buffering up to MAX_HEAD.
    prefix = data[: MAX_METHOD + 1]
    space = prefix.find(b" ")
    token = prefix if space < 0 else prefix[:space]
    if any(b not in _TCHAR for b in token):
        raise Malformed("request does not start with a method token")
    if space == 0 or (space < 0 and len(prefix) > MAX_METHOD):
        raise Malformed("request does not start with a method")


def _find_head_end(data: bytes) -> tuple[int, int]:
    """Return (end of the last header line, start of the body), or (-1, -1)."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    candidates = [(i, i + 3) for i in (crlf,) if i >= 0] + [(i, i + 2) for i in (lf,) if i >= 0]
    if not candidates:
        return -1, -1
    return min(candidates)


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise Malformed("request line is not 'METHOD target version'")
    method, target, version = parts
    if version not in _VERSIONS:
        raise Malformed("unknown HTTP version")
    if (version == b"HTTP/2.0") != (method == b"PRI"):
        raise Malformed("HTTP/2.0 only in the prior-knowledge preface")
    if any(b < 0x21 or b > 0x7E for b in target):
        raise Malformed("request target with control or non-ASCII bytes")
    return method, target, version


@dataclass(slots=True)
class _Fields:
    host: str | None = None
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    upgrade: bool = False


def _fields(lines: list[bytes]) -> _Fields:
    fields = _Fields()
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise Malformed("obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon or not name or any(b not in _TCHAR for b in name):
            raise Malformed("header line without a valid name")
        name = name.lower()
        if name == b"host":
            if fields.host is not None:
                raise Malformed("more than one Host header")
            try:
                fields.host = value.strip(b" \t").decode("ascii")
            except UnicodeDecodeError:
                raise Malformed("non-ASCII Host header") from None
        elif name == b"content-length":
            fields.lengths = (fields.lengths or []) + [v.strip(b" \t") for v in value.split(b",")]
        elif name == b"transfer-encoding":
            fields.codings = (fields.codings or []) + [v.strip(b" \t").lower() for v in value.split(b",")]
        elif name == b"upgrade":
            fields.upgrade = True
    return fields


def _framing(fields: _Fields, version: bytes) -> tuple[int, bool]:
    """(Content-Length, chunked) of a request; Malformed where servers would read it differently."""
    if fields.codings is not None:
        if fields.lengths is not None:
            raise Malformed("both Transfer-Encoding and Content-Length")
        if version == b"HTTP/1.0":
            raise Malformed("Transfer-Encoding in an HTTP/1.0 request")
        codings = [c for c in fields.codings if c]
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
            raise Malformed("Transfer-Encoding whose last coding is not chunked")
        return 0, True
    if fields.lengths is None:
        return 0, False
    values = set(fields.lengths)
    if len(values) != 1:
        raise Malformed("Content-Length values that differ")
    (text,) = values
    if not text or not text.isdigit() or not text.isascii() or len(text) > MAX_LENGTH_DIGITS:
        raise Malformed("Content-Length is not a plain decimal number")
    return int(text), False


def authority(text: bytes, *, port_required: bool) -> tuple[str, int | None]:
    """Split host[:port] / [v6]:port into (host, port); Malformed for userinfo, a bad port or literal."""
    if b"@" in text:
        raise Malformed("userinfo in authority")
    if text.startswith(b"["):
        close = text.find(b"]")
        if close < 0:
            raise Malformed("unterminated IPv6 literal")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(b":"):
            raise Malformed("junk after IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_bytes = text.partition(b":")
        port_text = port_bytes if colon else None
    if not host:
        raise Malformed("empty host")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 0xFFFF:
            raise Malformed("bad port")
        port = int(port_text)
    elif port_required:
        raise Malformed("port missing")
    try:
        return host.decode("ascii"), port
    except UnicodeDecodeError:
        raise Malformed("non-ASCII host") from None
