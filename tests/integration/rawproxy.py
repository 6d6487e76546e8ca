"""A hand-made proxy client that hands the proxy a host field exactly as written (curl rewrites
odd IPv4 forms such as 0x0a4d0067 to dotted decimal before a proxy sees them).

    python rawproxy.py ADDRESS PORT http TARGET      GET http://TARGET/ through an HTTP proxy
    python rawproxy.py ADDRESS PORT socks5 TARGET    SOCKS5 CONNECT to the name TARGET, port 80, then GET /
    python rawproxy.py ADDRESS PORT hex BYTES        send bytes.fromhex(BYTES) as they are

Prints the answer's last line ("hello from ..." from the lab server), or "reset", "closed" or
"refused 0xNN" (the SOCKS5 reply code)."""

from __future__ import annotations

import os
import socket
import sys


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main(address: str, port: int, mode: str, target: str) -> str:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
    try:
        sock.connect((address, port))
        if mode == "socks5":
            sock.sendall(b"\x05\x01\x00")
            recv_exact(sock, 2)
            name = target.encode()
            sock.sendall(b"\x05\x01\x00\x03" + bytes((len(name),)) + name + (80).to_bytes(2, "big"))
            reply = recv_exact(sock, 4)
            if reply[1] != 0:
                return f"refused 0x{reply[1]:02x}"
            recv_exact(sock, {1: 4, 4: 16}.get(reply[3], 0) + 2)
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        elif mode == "hex":
            sock.sendall(bytes.fromhex(target))
        else:
            sock.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"hello from" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        lines = data.decode("latin-1").strip().splitlines()
        return lines[-1] if lines else "closed"
    except (ConnectionResetError, EOFError) as exc:
        return "reset" if isinstance(exc, ConnectionResetError) else "closed"
    finally:
        sock.close()


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
