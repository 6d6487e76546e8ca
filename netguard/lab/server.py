"""A small registry stand-in for the namespace lab: HTTPS on 443, plain HTTP on 80, UDP echo on 443.

Strategy: one dual-stack listening socket per port, one thread per connection, keep-alive HTTP/1.1
(request bodies read past by Content-Length or chunked framing). HTTPS on HRR_PORT takes only
P-256 key shares, so that clients meet a HelloRetryRequest there; the name answered is the last
server_name the server read (OpenSSL takes the second hello's).
Every response names the host the client asked for (SNI or Host), so a test can tell that it
reached the server and which name it used. `CONNECT host:port` is answered 200 and then echoed,
like a proxy tunnel to nowhere. MPTCP_PORT serves the same HTTPS on a Multipath TCP socket. UDP
443 echoes the first bytes of each datagram (a QUIC stand-in). Run it as
`python -m netguard.lab.server CERT KEY`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading

HEAD_LIMIT = 16384  # a request head longer than this is not a test client's
# Seconds a client may take over its TLS handshake: tests send a ClientHello a byte at a time, which
# takes minutes in an emulated VM (scripts/kernels); it only bounds the thread of a stuck client.
CLIENT_TIMEOUT = 600.0


# TLS that takes only P-256 key shares: a client that offers X25519 first (most do) gets a
# HelloRetryRequest and sends a second ClientHello. (8443 in the same namespace is the policy
# server's, netguard.lab.policyserver, and the benchmark's.)
HRR_PORT = 9443
# HTTPS on a Multipath TCP socket (RFC 8684), as Go 1.24 and later listen by default: a client that
# asks for Multipath TCP gets it here unless something on the way takes the option out. Plain TCP
# where the kernel has no MPTCP.
MPTCP_PORT = 9444


class _Buffered:
    """A connection's bytes read ahead: a request's head and body may share a segment with the next."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.data = b""

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.data:
            chunk = self.conn.recv(4096)
            if not chunk or len(self.data) > HEAD_LIMIT:
                return None
            self.data += chunk
        head, _, self.data = self.data.partition(marker)
        return head

    def skip(self, n: int) -> bool:
        while len(self.data) < n:
            chunk = self.conn.recv(65536)
            if not chunk:
                return False
            self.data += chunk
        self.data = self.data[n:]
        return True


def _skip_body(buf: _Buffered, lines: list[bytes]) -> bool:
    """Read past the request's body (Content-Length or chunked), so that the next request is found."""
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        while True:
            size_line = buf.until(b"\r\n")
            if size_line is None:
                return False
            size = int(size_line.split(b";")[0], 16)
            if not size:
                while (trailer := buf.until(b"\r\n")) is not None:
                    if not trailer:
                        return True
                return False
            if not buf.skip(size + 2):
                return False
    return buf.skip(int(fields.get(b"content-length", b"0") or 0))


def _serve(conn: socket.socket, sni: str | None) -> None:
    buf = _Buffered(conn)
    with conn:
        while True:
            head = buf.until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.split(b"\r\n")
            if not _skip_body(buf, lines):
                return
            method = lines[0].split(b" ")[0]
            host = sni or ""
            for line in lines[1:]:
                if line.lower().startswith(b"host:"):
                    host = line[5:].strip().decode("ascii", "replace")
            if method == b"CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + buf.data)
                while chunk := conn.recv(4096):
                    conn.sendall(chunk)
                return
            body = f"hello from {host}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)


def _on_sni(conn: ssl.SSLSocket | ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
    # Set once on the shared context; the name goes on the connection it came with (the last one
    # read: OpenSSL takes the second hello's after a HelloRetryRequest).
    if name:
        conn.lab_sni = name  # type: ignore[union-attr]


def _tls_client(raw: socket.socket, ctx: ssl.SSLContext) -> None:
    try:
        raw.settimeout(CLIENT_TIMEOUT)
        conn = ctx.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    with contextlib.suppress(OSError):
        _serve(conn, getattr(conn, "lab_sni", None))


def _listen(port: int, mptcp: bool = False) -> socket.socket:
    s = None
    if mptcp:
        with contextlib.suppress(OSError):  # no MPTCP in this kernel (or it is disabled): plain TCP
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    if s is None:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(128)
    return s


def _accept_loop(s: socket.socket, ctx: ssl.SSLContext | None) -> None:
    while True:
        conn, _ = s.accept()
        # Small writes (TLS tickets, then the response) must not wait for delayed ACKs (Nagle).
        with contextlib.suppress(OSError):  # an MPTCP socket of an older kernel may refuse it
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ctx is None:
            threading.Thread(target=_plain_client, args=(conn,), daemon=True).start()
        else:
            threading.Thread(target=_tls_client, args=(conn, ctx), daemon=True).start()


def _plain_client(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        _serve(conn, None)


def _udp_echo(port: int) -> None:
    # Stands in for a QUIC server: any datagram that reaches it comes back.
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(65535)
        with contextlib.suppress(OSError):
            s.sendto(data[:64], peer)


def main(argv: list[str]) -> None:
    """Serve until killed: argv is CERT KEY."""
    cert, key = argv
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = _on_sni
    tls, plain, hrr, mptcp = _listen(443), _listen(80), _listen(HRR_PORT), _listen(MPTCP_PORT, mptcp=True)
    hrr_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    hrr_ctx.load_cert_chain(cert, key)
    hrr_ctx.set_ecdh_curve("prime256v1")  # OpenSSL 3: the server's only group
    hrr_ctx.sni_callback = _on_sni
    threading.Thread(target=_accept_loop, args=(plain, None), daemon=True).start()
    threading.Thread(target=_accept_loop, args=(hrr, hrr_ctx), daemon=True).start()
    threading.Thread(target=_accept_loop, args=(mptcp, ctx), daemon=True).start()
    threading.Thread(target=_udp_echo, args=(443,), daemon=True).start()
    print("ready", flush=True)
    _accept_loop(tls, ctx)


if __name__ == "__main__":
    main(sys.argv[1:])
