"""A small registry stand-in for the namespace lab: HTTPS on 443, plain HTTP on 80, UDP echo on 443.

Strategy: one dual-stack listening socket per port, one thread per connection, keep-alive HTTP/1.1.
Every response names the host the client asked for (SNI or Host), so a test can tell that it
reached the server and which name it used. `CONNECT host:port` is answered 200 and then echoed,
like a proxy tunnel to nowhere. UDP 443 echoes the first bytes of each datagram (a QUIC
stand-in). Run it as `python -m netguard.lab.server CERT KEY`.
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


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > HEAD_LIMIT:
            return None
        data += chunk
    return data


def _serve(conn: socket.socket, sni: str | None) -> None:
    with conn:
        while True:
            head = _read_head(conn)
            if head is None:
                return
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ")[0]
            host = sni or ""
            for line in lines[1:]:
                if line.lower().startswith(b"host:"):
                    host = line[5:].strip().decode("ascii", "replace")
            if method == b"CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                while chunk := conn.recv(4096):
                    conn.sendall(chunk)
                return
            body = f"hello from {host}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)


def _tls_client(raw: socket.socket, ctx: ssl.SSLContext) -> None:
    names: list[str] = []

    def on_sni(_s: ssl.SSLObject, name: str | None, _c: ssl.SSLContext) -> None:
        if name:
            names.append(name)

    ctx.sni_callback = on_sni
    try:
        raw.settimeout(CLIENT_TIMEOUT)
        conn = ctx.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    with contextlib.suppress(OSError):
        _serve(conn, names[0] if names else None)


def _listen(port: int) -> socket.socket:
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
    tls, plain = _listen(443), _listen(80)
    threading.Thread(target=_accept_loop, args=(plain, None), daemon=True).start()
    threading.Thread(target=_udp_echo, args=(443,), daemon=True).start()
    print("ready", flush=True)
    _accept_loop(tls, ctx)


if __name__ == "__main__":
    main(sys.argv[1:])
