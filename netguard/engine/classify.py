"""Finding the name in a flow's first bytes: TLS SNI, HTTP Host / CONNECT target, QUIC Initial SNI.

Strategy: `Reader.feed` gets the contiguous client prefix each time it grows and returns None
while more bytes are needed, a Found with the name (or with name None when the flow carries no
name: not TLS, not HTTP, a ClientHello without SNI). The first bytes pick the reader: 0x16 is a
TLS handshake record, an HTTP method token is HTTP, anything else has no name. A parser's Malformed
propagates to the engine, which turns it into the fail verdict, except where the bytes only showed
that the stream is not HTTP after all.
"""

from __future__ import annotations

from typing import NamedTuple

from netguard.wire import http, quic, tls
from netguard.wire.errors import Malformed


class Found(NamedTuple):
    """The name a flow carries (None: no name), where it came from, and the port it names."""

    name: str | None
    source: str
    port: int | None = None


NO_NAME = Found(None, "address")


class Reader:
    """Reads one TCP client prefix; feed it the whole prefix each time it grows."""

    __slots__ = ("_fed", "_kind", "_tls")

    def __init__(self) -> None:
        self._kind: str | None = None
        self._tls: tls.ClientHelloReader | None = None
        self._fed = 0

    @property
    def waits_for_server(self) -> bool:
        """Whether the protocol read so far now waits for the server's answer (a proxy's
        negotiation): then server data does not make the engine judge the flow by address."""
        return False

    def feed(self, prefix: bytes) -> Found | None:
        """Return the Found once known, None while more bytes are needed. Raises ParseError."""
        if not prefix:
            return None
        if self._kind is None:
            if prefix[0] == tls.CONTENT_HANDSHAKE:
                self._kind, self._tls = "tls", tls.ClientHelloReader()
            elif http.looks_like_http(prefix[:8]):
                self._kind = "http"
            else:
                return NO_NAME
        if self._kind == "tls" and self._tls is not None:
            result = self._tls.feed(prefix[self._fed:])
            self._fed = len(prefix)
            if isinstance(result, tls.NeedMore):
                return None
            if isinstance(result, tls.NotTls):
                return NO_NAME
            return _hello_name(result, "sni")
        return _http(prefix)


def _http(prefix: bytes) -> Found | None:
    try:
        head = http.parse_request_head(prefix)
    except Malformed:
        if _has_method(prefix):
            raise
        return NO_NAME  # began like a method, but is not HTTP
    if head is None:
        return None
    if head.connect_authority is not None:
        return Found(head.connect_authority[0], "http-connect", head.connect_authority[1])
    if head.host:
        return Found(head.host, "http-host", head.port)
    return NO_NAME


def _has_method(prefix: bytes) -> bool:
    space = prefix.find(b" ", 0, http.MAX_METHOD + 1)
    return space > 0 and prefix[:space] in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT",
                                             b"OPTIONS", b"TRACE", b"PATCH", b"PRI")


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
