"""Send a QUIC v1 client Initial whose ClientHello names NAME to ADDRESS:443, split over two
datagrams with the CRYPTO frames in reverse order (as Chromium shuffles them), and report whether
the lab's UDP echo answered. Run inside the client namespace:

    python quicsend.py ADDRESS NAME

Prints a JSON list: for each datagram sent (the second half first, then the first half twice),
"echo" if an echo came back before the next send, else the name of the error (TimeoutError,
PermissionError, ...). More QUIC senders: quicpeer.py.
The ClientHello comes from Python's ssl module; protection follows RFC 9001 section 5.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netguard.lab.lab import python_client_hello
from netguard.wire.quic import client_initial_keys


def varint(value: int) -> bytes:
    return struct.pack("!B", value) if value < 0x40 else struct.pack("!H", value | 0x4000)


def initial(dcid: bytes, pn: int, payload: bytes, pad_to: int = 1200) -> bytes:
    keys = client_initial_keys(dcid)
    pn_bytes = struct.pack("!I", pn)
    head = b"\xc3" + struct.pack("!I", 1) + bytes((len(dcid),)) + dcid + b"\x04" + os.urandom(4) + varint(0)
    overhead = len(head) + 2 + len(pn_bytes) + 16
    payload += bytes(max(0, pad_to - overhead - len(payload)))
    header = head + struct.pack("!H", 0x4000 | (len(pn_bytes) + len(payload) + 16)) + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, payload, header)
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sealed[:16]) + encryptor.finalize()
    pn_offset = len(header) - 4
    protected = bytes(a ^ b for a, b in zip(pn_bytes, mask[1:5], strict=True))
    return bytes((header[0] ^ (mask[0] & 0x0F),)) + header[1:pn_offset] + protected + sealed


def main() -> None:
    address, name = sys.argv[1:3]
    hello = python_client_hello(name)[5:]  # the handshake message, without its record header
    half = len(hello) // 2
    dcid = os.urandom(8)
    second = initial(dcid, 1, b"\x06" + varint(half) + varint(len(hello) - half) + hello[half:])
    first = initial(dcid, 0, b"\x06" + varint(0) + varint(half) + hello[:half])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    outcomes = []
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        # Not connected: the lab server may answer from another of its addresses.
        s.settimeout(0.5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
        for datagram in (second, first, first):
            try:
                s.sendto(datagram, (address, 443))
                s.recvfrom(2048)
                outcomes.append("echo")
            except OSError as e:
                outcomes.append(type(e).__name__)
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
