"""HTTP/1.x request heads: hosts, CONNECT, absolute form, incremental prefixes, what is Malformed."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netguard.wire import http
from netguard.wire.errors import Malformed, ParseError

GET = b"GET /v2/ HTTP/1.1\r\nHost: Registry.Example:5000\r\nUser-Agent: docker/27\r\nAccept: */*\r\n\r\nbody"


def test_get_with_host() -> None:
    head = http.parse_request_head(GET)
    assert head == http.RequestHead(
        "GET", "/v2/", "HTTP/1.1", "Registry.Example", 5000, "Registry.Example:5000", None, len(GET) - 4
    )


def test_every_prefix_needs_more() -> None:
    whole = GET[: GET.index(b"\r\n\r\n") + 4]
    for cut in range(len(whole)):
        assert http.parse_request_head(whole[:cut]) is None
    assert http.parse_request_head(whole) is not None


def test_connect_authority() -> None:
    head = http.parse_request_head(b"CONNECT registry.example:443 HTTP/1.1\r\nHost: registry.example:443\r\n\r\n")
    assert head is not None
    assert head.connect_authority == ("registry.example", 443)
    assert (head.host, head.port) == ("registry.example", 443)
    head = http.parse_request_head(b"CONNECT [fd00::1]:8443 HTTP/1.1\r\n\r\n")
    assert head is not None and head.connect_authority == ("fd00::1", 8443)


def test_absolute_form_overrides_host() -> None:
    head = http.parse_request_head(b"GET http://quay.io/v2/ HTTP/1.1\r\nHost: quay.io\r\n\r\n")
    assert head is not None and (head.host, head.port) == ("quay.io", None)
    head = http.parse_request_head(b"GET http://quay.io:80/v2/ HTTP/1.0\n\n")  # bare LF lines
    assert head is not None and (head.host, head.port, head.host_header) == ("quay.io", 80, None)


def test_no_host() -> None:
    head = http.parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head is not None and head.host is None


def test_http2_preface() -> None:
    head = http.parse_request_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert head is not None and (head.method, head.version, head.host) == ("PRI", "HTTP/2.0", None)


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00",  # TLS: rejected from its first byte
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
        b"GET http://a.example@b.example/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\n continued\r\n\r\n",
        b"CONNECT a.example HTTP/1.1\r\n\r\n",
        b"CONNECT a.example:99999 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/3.0\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET ftp://a.example/ HTTP/1.1\r\n\r\n",
        b"A" * (http.MAX_METHOD + 1),
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(Malformed):
        http.parse_request_head(data)


def test_head_size_bound() -> None:
    data = b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * http.MAX_HEAD
    with pytest.raises(Malformed):
        http.parse_request_head(data)
    assert http.parse_request_head(data[: http.MAX_HEAD]) is None


def test_looks_like_http() -> None:
    assert http.looks_like_http(b"GET / HTTP/1.1")
    assert http.looks_like_http(b"CONN")
    assert not http.looks_like_http(b"\x16\x03\x01")
    assert not http.looks_like_http(b"")


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    for prefix in (b"", b"GET ", b"CONNECT a:1 HTTP/1.1\r\n"):
        with contextlib.suppress(ParseError):
            http.parse_request_head(prefix + data)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_hosts = st.lists(_token, min_size=1, max_size=4).map(".".join)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + "/".join(draw(st.lists(_token, max_size=4)))
    host = draw(_hosts) + (f":{draw(st.integers(1, 65535))}" if draw(st.booleans()) else "")
    headers = [("Host", host)] + [(f"X-{name}", value) for name, value in draw(st.lists(st.tuples(_token, _token)))]
    headers = draw(st.permutations(headers))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    head = f"{method} {path} HTTP/1.1{eol}" + "".join(f"{k}: {v}{eol}" for k, v in headers) + eol
    return head.encode()


@given(requests())
def test_hypothesis_requests_match_scapy(data: bytes) -> None:
    from scapy.layers.http import HTTPRequest

    theirs = HTTPRequest(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    ours = http.parse_request_head(data)
    assert ours is not None
    assert (ours.method, ours.target, ours.version) == (
        theirs.Method.decode(),
        theirs.Path.decode(),
        theirs.Http_Version.decode(),
    )
    assert ours.host_header is not None and ours.host_header == theirs.Host.decode()
    host, _, port = ours.host_header.partition(":")
    assert (ours.host, ours.port) == (host, int(port) if port else None)
    assert ours.head_length == len(data)
    for cut in range(len(data)):
        assert http.parse_request_head(data[:cut]) is None


# -- what follows a head: empty lines before it, its body's framing -------------------------------

def test_empty_lines_before_the_request_line_are_skipped() -> None:
    # RFC 9112 §2.2; nginx skips any number of CR and LF before a request line.
    for blank in (b"\r\n", b"\n", b"\r\n\r\n\r\n", b"\r"):
        data = blank + b"GET / HTTP/1.1\r\nHost: ghcr.io\r\n\r\n"
        head = http.parse_request_head(data)
        assert head is not None and head.host == "ghcr.io" and head.head_length == len(data)
        assert http.parse_request_head(blank) is None
    with pytest.raises(Malformed):
        http.parse_request_head(b"\r\n" * (http.MAX_HEAD // 2 + 1))


@pytest.mark.parametrize("headers, body, chunked", [
    (b"", 0, False),
    (b"Content-Length: 12\r\n", 12, False),
    (b"Content-Length: 12, 12\r\nContent-Length: 12\r\n", 12, False),  # the same value repeated
    (b"Transfer-Encoding: chunked\r\n", 0, True),
    (b"Transfer-Encoding: gzip, Chunked\r\n", 0, True),
    (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 0, True),
])
def test_body_framing(headers: bytes, body: int, chunked: bool) -> None:
    head = http.parse_request_head(b"POST /v2/ HTTP/1.1\r\nHost: a.example\r\n" + headers + b"\r\n")
    assert head is not None and (head.body_length, head.chunked) == (body, chunked)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 12\r\nTransfer-Encoding: chunked\r\n",  # the classic smuggling pair
    b"Content-Length: 12\r\nContent-Length: 13\r\n",
    b"Content-Length: +12\r\n",
    b"Content-Length: 0x10\r\n",
    b"Content-Length: 1" + b"0" * http.MAX_LENGTH_DIGITS + b"\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Content-Length : 12\r\n",
    b"X: a\rContent-Length: 99\r\n",  # a bare CR (some servers end a line there)
])
def test_framing_servers_could_read_differently_is_malformed(headers: bytes) -> None:
    with pytest.raises(Malformed):
        http.parse_request_head(b"POST / HTTP/1.1\r\nHost: a.example\r\n" + headers + b"\r\n")
    with pytest.raises(Malformed):
        http.parse_request_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_upgrade_is_reported() -> None:
    head = http.parse_request_head(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert head is not None and head.upgrade


@pytest.mark.parametrize("line, size", [
    (b"0\r\n", 0), (b"1a\r\n", 26), (b"00000FF\r\n", 255), (b"5;name=value\r\n", 5),
    (b"5 ; a=\"quoted; string\" ;b\r\n", 5),
])
def test_chunk_lines(line: bytes, size: int) -> None:
    assert http.parse_chunk_line(line + b"data") == (size, len(line))
    for cut in range(len(line)):
        assert http.parse_chunk_line(line[:cut]) is None


@pytest.mark.parametrize("line", [
    b"5\n", b"\r\n", b"x5\r\n", b"0x5\r\n", b"-1\r\n", b"1" * (http.MAX_CHUNK_DIGITS + 1) + b"\r\n",
    b"5 junk\r\n", b"5;a=\"open\r\n", b"5\r\r\n", b"5;a\x00\r\n",
])
def test_bad_chunk_lines(line: bytes) -> None:
    with pytest.raises(Malformed):
        http.parse_chunk_line(line)
    with pytest.raises(Malformed):
        http.parse_chunk_line(b"5" * http.MAX_CHUNK_LINE)


def test_trailers() -> None:
    assert http.parse_trailers(b"\r\nGET") == 2
    section = b"X-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    assert http.parse_trailers(section + b"GET") == len(section)
    assert http.parse_trailers(section[:-1]) is None
    with pytest.raises(Malformed):
        http.parse_trailers(b"X-A: b\nX-B: c\r\n\r\n")
    with pytest.raises(Malformed):
        http.parse_trailers(b"Bad Name: x\r\n\r\n")


def test_extension_methods_parse_when_the_line_is_a_request() -> None:
    head = http.parse_request_head(b"get http://ghcr.io/v2/ HTTP/1.1\r\n\r\n")
    assert head is not None and (head.method, head.host) == ("get", "ghcr.io")
