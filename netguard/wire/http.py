"""Strategy: the head of an HTTP/1.x request (request line and headers), read incrementally.

`parse_request_head` is called with all client bytes seen so far. It returns None while the head
is incomplete (bounded by MAX_HEAD), and raises Malformed as soon as the bytes cannot be HTTP: the
method is checked on the first bytes, so a non-HTTP stream is rejected without buffering. The name
to judge (`host`) is the CONNECT authority for CONNECT, the authority of an absolute-form target
(RFC 9112 §3.2.2: it overrides Host), else the Host header. What would let a filter and a server
disagree is Malformed, not guessed: several Host headers, a Host that names another host than an
absolute-form target, userinfo in an authority, obsolete line folding, a bad port. The HTTP/2
prior-knowledge preface (`PRI * HTTP/2.0`) is returned as a head without a host.
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


def looks_like_http(first_bytes: bytes) -> bool:
    """Cheap check: the bytes start (or could start) with a common method and a space."""
    for method in _KNOWN_METHODS:
        word = method + b" "
        if first_bytes.startswith(word) or (first_bytes and word.startswith(first_bytes)):
            return True
    return False


def parse_request_head(data: bytes) -> RequestHead | None:
    """Parse the request head from the client's first bytes; None while it is incomplete."""
    _check_method_prefix(data)
    end, body_start = _find_head_end(data)
    if end < 0:
        if len(data) > MAX_HEAD:
            raise Malformed(f"request head longer than {MAX_HEAD} bytes")
        return None
    if body_start > MAX_HEAD:
        raise Malformed(f"request head longer than {MAX_HEAD} bytes")
    head = Reader(data).take(end)
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    method, target, version = _request_line(lines[0])
    host_header = _host_header(lines[1:])
    host: str | None = None
    port: int | None = None
    connect: tuple[str, int] | None = None
    if method == b"CONNECT":
        host, connect_port = _authority(target, port_required=True)
        if connect_port is None:
            raise Malformed("CONNECT target without port")
        port = connect_port
        connect = (host, port)
    elif b"://" in target:
        scheme, _, rest = target.partition(b"://")
        if scheme.lower() not in (b"http", b"https"):
            raise Malformed("absolute-form target with a scheme other than http(s)")
        authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
        host, port = _authority(authority, port_required=False)
        if host_header:
            header_host, _ = _authority(host_header.encode("ascii"), port_required=False)
            if header_host.lower() != host.lower():
                raise Malformed("Host header names another host than the request target")
    elif host_header:
        host, port = _authority(host_header.encode("ascii"), port_required=False)
    return RequestHead(
        method.decode("ascii"),
        target.decode("ascii", "backslashreplace"),
        version.decode("ascii"),
        host,
        port,
        host_header,
        connect,
        body_start,
    )


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


def _host_header(lines: list[bytes]) -> str | None:
    host: str | None = None
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise Malformed("obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon or not name or any(b not in _TCHAR for b in name):
            raise Malformed("header line without a valid name")
        if name.lower() == b"host":
            if host is not None:
                raise Malformed("more than one Host header")
            try:
                host = value.strip(b" \t").decode("ascii")
            except UnicodeDecodeError:
                raise Malformed("non-ASCII Host header") from None
    return host


def _authority(authority: bytes, *, port_required: bool) -> tuple[str, int | None]:
    """Split host[:port] / [v6]:port into (host, port)."""
    if b"@" in authority:
        raise Malformed("userinfo in authority")
    if authority.startswith(b"["):
        close = authority.find(b"]")
        if close < 0:
            raise Malformed("unterminated IPv6 literal")
        host, rest = authority[1:close], authority[close + 1 :]
        if rest and not rest.startswith(b":"):
            raise Malformed("junk after IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_bytes = authority.partition(b":")
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
