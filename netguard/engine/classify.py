"""Finding the names in a client's byte stream: TLS SNI, HTTP Host / CONNECT target, SOCKS target,
the SNI or requests inside a proxy tunnel, every request of a kept-alive HTTP connection, and QUIC
Initial SNI.

Strategy: a `Reader` walks one TCP client stream through stages, the way the server at the other
end reads it. `feed` gets the stream's bytes from the reader's base (the whole contiguous prefix
each time it grows) and returns the next name to judge (a Found), None while more bytes are needed,
or DONE when nothing more needs reading. The first bytes pick the stage: a TLS record (handshake or
alert: 0x16, 0x15), a SOCKS version byte (4, 5), an HTTP request, or neither (NO_NAME: judge by
address). A stream is HTTP when its first line is one that some lenient server or proxy takes as a
request (Squid splits on HTAB and VT and takes HTTP/0.9 and any-case methods; tinyproxy skips a
leading HTAB; RFC 9112 lets servers skip empty lines): an uppercase method and a space, or a token,
whitespace and either a version-ended line or a path / URI; so that the strict parser's Malformed on
such a line is the fail verdict, never "no name". After a CONNECT or SOCKS request the
tunnel's first bytes are read too (a ClientHello, requests, or a nested proxy request): a proxy
connects wherever its client names, so the name inside the tunnel is judged as well as the tunnel's
target. After any other request, the body is skipped by its framing (Content-Length, chunked) to the
next request head (`following`: the connection stays under watch for its whole life). HTTP/2
without TLS (the `PRI` preface at the start, after `Upgrade: h2c`, or in a tunnel) is followed the
same way: every request's header block is HPACK-decoded with the connection's table and its
:authority judged (wire.h2), the other frames skipped by their length. A parser's
Malformed propagates to the engine, which turns it into the fail verdict; only the very first bytes
may show that a stream is not TLS, SOCKS or HTTP after all (NO_NAME). Stage positions are offsets from
the reader's base; `rebase` drops what is read (the engine advances its reassembly by as much).

`Reader.waits_for_server` is for the engine's "server speaks first" rule (payload from the server
of an undecided flow means the name will not come from the client): it is True while
every byte sent is read and the client's next bytes only follow the server's answer (SOCKS5 after its
method list and after its authentication; before a SOCKS or CONNECT tunnel's first bytes), when a
server's answer is no sign of a server-first protocol and the flow must stay undecided.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from netguard.wire import h2, http, quic, socks, tls
from netguard.wire.addr import parse_address
from netguard.wire.errors import Malformed


class Found(NamedTuple):
    """The name a flow carries (None: no name), where it came from, and the port it names."""

    name: str | None
    source: str
    port: int | None = None


NO_NAME = Found(None, "address")
DONE = Found(None, "done")  # nothing more to read: what was judged stands

# Stages of a Reader.
_START, _TLS, _SOCKS, _HTTP, _BODY, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TUNNEL, _END, _H2 = range(12)
# The rest of the HTTP/2 preface after its request-line-like part ("PRI * HTTP/2.0", then an empty line).
_H2_PREFACE_END = h2.PREFACE[len(b"PRI * HTTP/2.0\r\n\r\n"):]
_KNOWN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI")
_TLS_FIRST = (tls.CONTENT_HANDSHAKE, tls.CONTENT_ALERT)
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_WAIT = Found(None, "wait")  # internal: more bytes needed


class Reader:
    """Reads one TCP client stream; feed it the stream from the reader's base each time it grows.

    After feed returned a Found the reader stands past it: `finished` (nothing more to read),
    `following` (a plain HTTP request: every later request must be read too) or neither (more names
    may follow before the flow can be decided, e.g. inside a tunnel). `waits_for_server`: every byte
    sent so far is read and the client's next bytes come only after the server answers (SOCKS5 after
    its method list and its authentication, before a SOCKS or CONNECT tunnel's first bytes), so the
    server's answer is no sign that the server speaks first. `tls_resume`: after a ClientHello, where
    the next record begins (offset from the base) and the handshake bytes left after the hello, for
    reading a second ClientHello after a HelloRetryRequest."""

    __slots__ = ("_data", "_fed", "_h2", "_pos", "_second", "_skip", "_stage", "_tls", "_tunnel", "finished",
                 "following", "tls_resume")

    def __init__(self, *, after_hello: tuple[bytes, int] | None = None, mid_stream: bool = False) -> None:
        """`after_hello` (leftover handshake bytes, offset): read the records after a first
        ClientHello from that offset on. `mid_stream`: the base is where a request may begin in a
        followed flow whose state was lost (only an HTTP request may come)."""
        self._data = b""
        self._pos = 0  # where the current stage begins (or, skipping a body, how far it is skipped)
        self._fed = 0  # bytes of the current stage given to the TLS reader
        self._skip = 0  # body or chunk bytes still to skip
        self._stage = _START
        self._tls: tls.ClientHelloReader | None = None
        self._tunnel = False  # bytes that are not TLS / SOCKS / HTTP end the reading (DONE), no NO_NAME
        self._h2: tuple[h2.Decoder, h2.HeaderBlock] | None = None  # an HTTP/2 connection's HPACK state
        self.following = mid_stream
        self.finished = False  # nothing more to read in this stream (a plain attribute: read per packet)
        self.tls_resume: tuple[int, bytes] | None = None
        self._second = after_hello is not None  # a second hello: TLS allows no third
        if after_hello is not None:
            leftover, self._pos = after_hello
            self._stage = _TLS
            self._tls = tls.ClientHelloReader(after_hello=True, handshake=leftover)
        elif mid_stream:
            self._stage, self._tunnel = _HTTP, True

    @property
    def waits_for_server(self) -> bool:
        """Every byte so far is read, and the client's next ones come only after the server answers."""
        if self._stage == _TUNNEL:
            return len(self._data) <= self._pos
        if self._stage == _SOCKS:
            result = socks.read_request(self._data[self._pos :])
            return isinstance(result, socks.Pending) and result.waiting
        return False

    def skip_unseen(self, n: int) -> bool:
        """Whether the next n bytes (which will never be seen) fall inside a body being skipped; if so,
        they count as skipped."""
        if self._stage not in (_BODY, _CHUNK_DATA) or n > self._skip or self._pos < len(self._data):
            return False
        self._skip -= n
        return True

    def rebase(self) -> int:
        """Forget the bytes before the current stage (read, or body skipped); returns how many."""
        n = min(self._pos, len(self._data))
        self._data = self._data[n:]
        self._pos -= n
        return n

    def feed(self, data: bytes) -> Found | None:
        """The next Found, None while more bytes are needed, DONE when there is nothing more to read.
        Raises ParseError (the engine's fail verdict)."""
        self._data = data
        if self._stage == _START and data and data[0] in _TLS_FIRST:  # the ordinary TLS connection
            self._stage, self._tls = _TLS, tls.ClientHelloReader()
        while True:
            stage = self._stage
            if stage == _TLS:  # first: the ordinary TLS connection's path
                return self._read_tls()
            if stage == _END:
                return DONE
            if self._pos >= len(data):
                return None
            if stage in (_START, _TUNNEL):
                found = self._choose()
            elif stage == _HTTP:
                found = self._read_http()
            elif stage == _SOCKS:
                found = self._read_socks()
            elif stage == _H2:
                found = self._read_h2()
            else:
                found = self._framing()
            if found is _WAIT:
                return None
            if found is not None:
                return found

    # -- stages -------------------------------------------------------------------------------

    def _choose(self) -> Found | None:
        """At the start or at a tunnel's first bytes: which protocol, or none (NO_NAME at the start,
        DONE inside a tunnel: what was judged stands)."""
        data, pos = self._data, self._pos
        first = data[pos]
        if first in _TLS_FIRST:
            self._stage, self._fed, self._tls = _TLS, 0, tls.ClientHelloReader()
            return None
        if socks.looks_like_socks(first):
            self._stage = _SOCKS
            return None
        known = _known_method(data, pos)
        if known is None:
            return _WAIT
        shape = known or _request_shape(data, pos)
        if shape is None:
            return _WAIT
        if shape:
            self._stage = _HTTP
            return None
        return self._end(DONE if self._tunnel else NO_NAME)

    def _end(self, found: Found) -> Found:
        self._stage, self.finished = _END, True
        return found

    def _read_tls(self) -> Found | None:
        reader = self._tls
        if reader is None:  # pragma: no cover - _TLS is entered with a reader
            raise Malformed("no TLS reader")
        data, start, fed = self._data, self._pos, self._fed
        result = reader.feed(data[start + fed :] if fed or start else data)
        self._fed = len(data) - start  # the stage's bytes only grow while it lasts
        if result is tls.NEED_MORE:
            return None
        if type(result) is not tls.ClientHello:  # NotTls
            return self._end(DONE if self._tunnel else NO_NAME)
        self._stage, self.finished = _END, True
        end = start + reader.end
        if not self._second:
            self.tls_resume = (end, reader.leftover)
        self._pos = end
        found = _hello_name(result, "tunnel-sni" if self._tunnel else "sni")
        return DONE if found is NO_NAME and self._tunnel else found

    def _read_socks(self) -> Found | None:
        start = self._pos
        result = socks.read_request(self._data[start:])
        if isinstance(result, socks.Pending):
            return _WAIT
        if isinstance(result, socks.NotSocks):
            return self._end(DONE if self._tunnel else NO_NAME)
        self._pos = start + result.end
        self._stage, self._tunnel = _TUNNEL, True
        source = f"socks{result.version}"
        if result.host is not None:
            return Found(result.host, source, result.port)
        return Found(_address_text(result.address or b""), source, result.port)

    def _read_http(self) -> Found | None:
        start = self._pos
        head = http.parse_request_head(self._data[start:])
        if head is None:
            return _WAIT
        self._pos = start + head.head_length
        if head.method == "PRI":  # the HTTP/2 preface (prior knowledge, or after Upgrade: h2c): frames follow
            self._pos = start
            return self._start_h2(start + head.head_length)
        if head.connect_authority is not None:
            self._stage, self._tunnel = _TUNNEL, True
            return Found(head.connect_authority[0], "http-connect", head.connect_authority[1])
        self.following = True
        # After an upgrade the stream may be another protocol: bytes that are no request end the
        # reading. Otherwise every later byte must be a request.
        self._tunnel = head.upgrade
        if head.chunked:
            self._stage = _CHUNK_LINE
        elif head.body_length:
            self._stage, self._skip = _BODY, head.body_length
        else:
            self._stage = self._next_request()
        if head.host:
            return Found(head.host, "http-host", head.port)
        return NO_NAME

    def _next_request(self) -> int:
        if self._h2 is not None:
            return _H2
        return _TUNNEL if self._tunnel else _HTTP

    def _start_h2(self, after: int) -> Found | None:
        """After "PRI * HTTP/2.0" and its empty line: the preface's end, then HTTP/2 frames, read for the
        whole connection (every request names its host)."""
        rest = self._data[after : after + len(_H2_PREFACE_END)]
        if rest != _H2_PREFACE_END[: len(rest)]:
            raise Malformed("HTTP/2 preface broken")
        if len(rest) < len(_H2_PREFACE_END):
            return _WAIT
        self._pos = after + len(rest)
        self._stage, self._h2, self.following = _H2, (h2.Decoder(), h2.HeaderBlock()), True
        return None

    def _read_h2(self) -> Found | None:
        """One HTTP/2 frame: a request's header block gives its authority; other frames are skipped by
        their length (_BODY)."""
        state = self._h2
        if state is None:  # pragma: no cover - _H2 is entered with a decoder
            raise Malformed("no HTTP/2 state")
        decoder, block = state
        data, pos = self._data, self._pos
        if len(data) - pos < h2.FRAME_HEADER:
            return _WAIT
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        if kind in (h2.HEADERS, h2.CONTINUATION):
            if length > h2.MAX_HEADER_BLOCK:
                raise Malformed(f"HTTP/2 header frame of {length} bytes")
            end = pos + h2.FRAME_HEADER + length
            if len(data) < end:
                return _WAIT
            self._pos = end
            whole = block.add(kind, flags, data[pos + h2.FRAME_HEADER : end])
            if whole is None:
                return None
            request, authority = h2.request_authority(decoder.decode(whole))
            if not request:
                return None  # trailers
            if not authority:
                return NO_NAME
            host, port = http.authority(authority.encode("latin-1"), port_required=False)
            return Found(host, "h2-authority", port)
        if block.open:
            raise Malformed(f"HTTP/2 frame type {kind} where a CONTINUATION belongs")
        if kind == h2.PUSH_PROMISE:
            raise Malformed("HTTP/2 PUSH_PROMISE from a client")
        self._pos = pos + h2.FRAME_HEADER
        self._stage, self._skip = _BODY, length
        return None

    def _framing(self) -> Found | None:
        """Advance through a body's framing (_WAIT when more bytes are needed)."""
        data, pos, stage = self._data, self._pos, self._stage
        if stage in (_BODY, _CHUNK_DATA):
            step = min(self._skip, len(data) - pos)
            self._pos += step
            self._skip -= step
            if self._skip:
                return _WAIT
            self._stage = _CHUNK_END if stage == _CHUNK_DATA else self._next_request()
            return None
        if stage == _CHUNK_LINE:
            line = http.parse_chunk_line(data[pos:])
            if line is None:
                return _WAIT
            size, used = line
            self._pos += used
            if size:
                self._stage, self._skip = _CHUNK_DATA, size
            else:
                self._stage = _TRAILERS
            return None
        if stage == _CHUNK_END:
            end = data[pos : pos + 2]
            if end != b"\r\n"[: len(end)]:
                raise Malformed("chunk data not followed by CRLF")
            if len(end) < 2:
                return _WAIT
            self._pos += 2
            self._stage = _CHUNK_LINE
            return None
        trailers = http.parse_trailers(data[pos:])  # _TRAILERS
        if trailers is None:
            return _WAIT
        self._pos += trailers
        self._stage = self._next_request()
        return None


_METHOD_WORDS = tuple(m + b" " for m in _KNOWN_METHODS)


def _known_method(data: bytes, pos: int) -> bool | None:
    """Whether the bytes at pos begin with a known method and a space; None while they are a proper
    prefix of one (the next segment decides: the same answer whatever the segmentation)."""
    head = data[pos : pos + 8]
    if head.startswith(_METHOD_WORDS):
        return True
    if len(head) < 8 and any(word.startswith(head) for word in _METHOD_WORDS):
        return None
    return False


# Whitespace a lenient server splits a request line on (RFC 9112 §3: SP, HTAB, VT, FF, bare CR; Squid
# does), and skips before it (tinyproxy a leading HTAB; CR and LF: RFC 9112 §2.2).
_WHITESPACE = b" \t\x0b\x0c\r"
_LINE_END = re.compile(rb"[\r\n]")
_WORDS = re.compile(rb"[ \t\x0b\x0c]+")


def _request_shape(data: bytes, pos: int) -> bool | None:
    """Whether the bytes at pos are a request some lenient server or proxy takes (so that a strict
    parse that fails is the fail verdict, never "no name"): after any leading whitespace, a token,
    then either more words ending in an HTTP version (any case), or one word that is a path or an
    absolute URI (an HTTP/0.9 request line), the line ended by CR or LF. None while the first line
    is incomplete (bounded: a longer one is no request)."""
    start = pos
    while start < len(data) and data[start] in _WHITESPACE + b"\n":
        start += 1
    if start - pos > http.MAX_HEAD:
        return False
    token_end = start
    while token_end < len(data) and data[token_end] in _TCHAR:
        token_end += 1
    if token_end - start > http.MAX_METHOD:
        return False
    if token_end == len(data):
        return None
    if token_end == start or data[token_end] not in _WHITESPACE[:4]:
        return False
    end = _LINE_END.search(data, token_end, token_end + http.MAX_HEAD)
    if end is None:
        return None if len(data) - token_end < http.MAX_HEAD else False
    words = _WORDS.split(data[start : end.start()].strip(_WHITESPACE))
    if len(words) >= 3:
        return words[-1].upper().startswith(b"HTTP/")
    return len(words) == 2 and (words[1].startswith(b"/") or b"://" in words[1])


def _address_text(address: bytes) -> str:
    if len(address) == 4:
        return "{}.{}.{}.{}".format(*address)
    groups = [f"{int.from_bytes(address[i:i + 2], 'big'):x}" for i in range(0, 16, 2)]
    return "[" + ":".join(groups) + "]"


# QUIC connections followed per UDP flow (5-tuple). QUIC multiplexes connections over one socket,
# so one flow may open several; each is judged. A client opens one (two after a Retry); beyond
# this, the oldest judged one is forgotten, and with none judged the flow gets the fail verdict.
MAX_QUIC_CONNECTIONS = 16


class QuicRead(NamedTuple):
    """What one datagram did to a flow's QUIC connections."""

    complete: tuple[tuple[bytes, Found], ...]  # connections whose ClientHello became whole: id, name
    pending: frozenset[bytes]  # connections it fed that are not judged yet (hold the datagram)


NOTHING = QuicRead((), frozenset())


class _Connection:
    __slots__ = ("crypto", "found", "judged")

    def __init__(self) -> None:
        self.crypto = quic.CryptoAssembler()
        self.found: Found | None = None
        self.judged = False


class QuicReader:
    """The QUIC connections of one UDP flow, each known by the DCID its Initial keys come from.

    For each Initial packet of a datagram (every coalesced packet, RFC 9000 §12.2) the keys a server
    might use are tried: the packet's own DCID (a server opens a new connection with those), the
    DCID of the datagram's first packet (a server hands the whole datagram to the connection that
    one names), and those of the connections this flow already opened (a client's later Initials
    carry the server's connection ID but keep the first keys, RFC 9001 §5.2). A packet that
    decrypts with none of them opens nothing and feeds no connection a server could have. The
    CRYPTO frames go to that connection's assembler; a connection is judged once its ClientHello
    is whole, and what comes later for it must agree with what was judged.
    """

    __slots__ = ("_conns",)

    def __init__(self) -> None:
        self._conns: dict[bytes, _Connection] = {}

    @property
    def size(self) -> int:
        """Bytes held for this flow's connections."""
        return sum(c.crypto.size for c in self._conns.values())

    @property
    def unjudged(self) -> bool:
        """True while some connection of the flow waits for the rest of its ClientHello."""
        return any(not c.judged for c in self._conns.values())

    def found(self) -> list[Found]:
        """The names of the connections judged so far (to judge them again under a new policy)."""
        return [c.found for c in self._conns.values() if c.judged and c.found is not None]

    def allow(self, cid: bytes) -> None:
        """Record that the engine judged connection `cid` and let it pass."""
        conn = self._conns.get(cid)
        if conn is not None:
            conn.judged = True

    def forget_judged(self) -> bool:
        """Forget the oldest judged connection (to make room); False if there is none."""
        for cid, conn in self._conns.items():
            if conn.judged:
                del self._conns[cid]
                return True
        return False

    def feed(self, datagram: bytes) -> QuicRead:
        """Read every Initial packet of a datagram. Raises UnsupportedVersion (a long header of a
        version netguard cannot read), CryptoConflict, and Malformed (bad frames, a ClientHello
        that does not parse, the limits of quic.CryptoAssembler and MAX_QUIC_CONNECTIONS)."""
        headers = quic.long_headers(datagram)
        first = headers[0].dcid if headers else b""
        complete: list[tuple[bytes, Found]] = []
        pending: set[bytes] = set()
        for header in headers:
            if header.kind != quic.INITIAL:
                continue  # 0-RTT and Handshake packets open no connection; Retry is a server's
            cid, initial = self._decrypt(datagram, header, first)
            if initial is None:
                continue
            conn = self._conns.get(cid)
            if conn is None:
                conn = self._open(cid)
            was_complete = conn.crypto.complete
            message = conn.crypto.add(initial.crypto)
            if was_complete:
                continue  # agreed with what was judged (a disagreement raised CryptoConflict)
            if message is None:
                pending.add(cid)
                continue
            found = _hello_name(tls.parse_handshake(message), "quic-sni")
            conn.found = found
            complete.append((cid, found))
            pending.discard(cid)
        return QuicRead(tuple(complete), frozenset(pending)) if complete or pending else NOTHING

    def _decrypt(self, datagram: bytes, header: quic.LongHeader, first: bytes) -> tuple[bytes, quic.QuicInitial | None]:
        tried = {header.dcid}
        initial = quic.decrypt_initial(datagram, header)
        if initial is not None:
            return header.dcid, initial
        for cid in (first, *self._conns):
            if cid in tried:
                continue
            tried.add(cid)
            initial = quic.decrypt_initial(datagram, header, cid)
            if initial is not None:
                return cid, initial
        return b"", None

    def _open(self, cid: bytes) -> _Connection:
        if len(self._conns) >= MAX_QUIC_CONNECTIONS and not self.forget_judged():
            raise Malformed(f"more than {MAX_QUIC_CONNECTIONS} QUIC connections on one flow")
        conn = self._conns[cid] = _Connection()
        return conn


def _hello_name(hello: tls.ClientHello, source: str) -> Found:
    # A server_name a server may read differently from us (two host names, an empty or non-ASCII
    # one) is unreadable input, not "no name": judging it by address would be an easy bypass.
    if hello.sni_problem is not None:
        raise Malformed(f"server_name: {hello.sni_problem}")
    return Found(hello.sni, source) if hello.sni else NO_NAME


def literal_address(name: str) -> bytes | None:
    """The address a name field holds, if it is an address literal (brackets allowed)."""
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return parse_address(name)
