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
from netguard.wire.errors import Malformed, ParseError, UnsupportedVersion


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


class QuicReader:
    """Reads the Initial datagrams of one UDP 443 flow until the ClientHello is whole."""

    __slots__ = ("_crypto",)

    def __init__(self) -> None:
        self._crypto = quic.CryptoAssembler()

    def feed(self, datagram: bytes) -> Found | None:
        """Return the Found once known, None while more Initials are needed. Raises ParseError for
        CRYPTO frames that contradict each other and for QUIC versions other than 1."""
        if not quic.looks_like_quic_initial(datagram):
            return NO_NAME
        try:
            initial = quic.parse_initial(datagram)
        except UnsupportedVersion:
            # An Initial netguard cannot read (QUIC v2, a draft): a server may; unreadable input.
            raise
        except ParseError:
            # Not a client Initial that decrypts with the v1 keys of its DCID: a server derives the
            # same keys, so it would drop it too. Nothing to read here.
            return NO_NAME
        message = self._crypto.add(initial.crypto)
        if message is None:
            return None
        return _hello_name(tls.parse_handshake(message), "quic-sni")


def _hello_name(hello: tls.ClientHello, source: str) -> Found:
    # A server_name a server may read differently from us (two host names, an empty or non-ASCII
    # one) is unreadable input, not "no name": judging it by address would be an easy bypass.
    if hello.sni_problem is not None:
        raise Malformed(f"server_name: {hello.sni_problem}")
    return Found(hello.sni, source) if hello.sni else NO_NAME
