"""A TLS client that names one host in its first ClientHello and another in its second: the second
hello follows the server's HelloRetryRequest, as RFC 8446 §4.1.4 has it, but with a different
server_name (OpenSSL's server takes the second hello's name). Both hellos are Python's ssl
(OpenSSL) bytes: the first with its default key share (X25519), the second with a P-256 share for a
server that asked for P-256, carrying the first hello's session id.

    python hrrclient.py ADDRESS PORT FIRST_NAME SECOND_NAME

Prints what came back: "no-hrr" (the server did not ask again), "server-hello" (the server took
the second hello and answered it), "alert", "closed", "reset" or "timeout"."""

from __future__ import annotations

import os
import socket
import sys

from netguard.lab.lab import python_client_hello as hello

CCS = b"\x14\x03\x03\x00\x01\x01"
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def with_session_id(record: bytes, session_id: bytes) -> bytes:
    # record header 5, handshake header 4, legacy_version 2, random 32, then the session id
    start = 5 + 4 + 2 + 32
    if record[start] != len(session_id):
        raise SystemExit("session id lengths differ")
    return record[: start + 1] + session_id + record[start + 1 + len(session_id) :]


def read_some(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def main(address: str, port: int, first: str, second: str) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
    try:
        sock.connect((address, port))
        one = hello(first)
        sock.sendall(one)
        answer = read_some(sock)
        if answer[11:43] != HRR_RANDOM:
            return "no-hrr"
        two = with_session_id(hello(second, "prime256v1"), one[44 : 44 + one[43]])
        sock.sendall(CCS + two)
        reply = read_some(sock)
        if not reply:
            return "closed"
        if reply[0] == 0x16 and reply[5:6] == b"\x02":
            return "server-hello"
        return "alert" if reply[0] == 0x15 else f"other {reply[:6].hex()}"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    finally:
        sock.close()


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
