"""Send a real ClientHello for NAME to ADDRESS:443 in tiny TCP segments, in order or shuffled,
from a hand-made connection, and report what came back. Run inside the client namespace:

    python rawhello.py SOURCE ADDRESS NAME SEGMENT_SIZE inorder|shuffle|overlap

Prints one JSON object: server_bytes (payload bytes the server sent back: a ServerHello when it got
the whole ClientHello), rst (a reset arrived for the connection) and rejected (a later segment was
refused by the local firewall at once). Packets are built with scapy
and sent through raw IP sockets, so they cross OUTPUT like a real client's (scapy's own senders
write link-layer frames, which netfilter never sees). The kernel would answer the server's SYN-ACK
with a reset (it knows no such socket): the caller drops those resets in the raw table first.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import sys
import time
from typing import Any

from scapy.all import IP, TCP, AsyncSniffer, IPv6, conf, raw  # type: ignore[attr-defined]

from netguard.lab.lab import python_client_hello

# harness.scaled() for a script run on its own in a namespace
T = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)


class Sender:
    def __init__(self, src: str, dst: str) -> None:
        self.v6 = ipaddress.ip_address(dst).version == 6
        self.src, self.dst = src, dst
        if self.v6:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, tcp: TCP) -> None:
        if self.v6:
            whole = raw(IPv6(src=self.src, dst=self.dst) / tcp)
            self.sock.sendto(whole[40:], (self.dst, 0))
        else:
            self.sock.sendto(raw(IP(src=self.src, dst=self.dst) / tcp), (self.dst, 0))


def main() -> None:
    src, address, name, size_text, mode = sys.argv[1:6]
    size = max(1, int(size_text))
    conf.verb = 0
    sender = Sender(src, address)
    sport = random.randint(20000, 60000)
    isn = random.randint(0, 2**31)
    seen: list[Any] = []  # scapy packets (untyped)
    sniffer = AsyncSniffer(filter=f"tcp and src host {address} and src port 443 and dst port {sport}",
                           iface=["eth0", "lo"], store=False, prn=seen.append)
    sniffer.start()
    time.sleep(0.3 * T)
    sender.send(TCP(sport=sport, dport=443, flags="S", seq=isn))
    synack = None
    for _ in range(round(100 * T)):
        time.sleep(0.02)
        synack = next((p for p in list(seen) if p.haslayer(TCP) and p[TCP].flags & 0x12 == 0x12), None)
        if synack is not None:
            break
    if synack is None:
        sniffer.stop()
        print(json.dumps({"error": "no SYN-ACK"}))
        return
    server_seq = synack[TCP].seq + 1
    sender.send(TCP(sport=sport, dport=443, flags="A", seq=isn + 1, ack=server_seq))
    hello = python_client_hello(name)
    pieces = [(i, hello[i:i + size]) for i in range(0, len(hello), size)]
    if mode == "overlap":
        # The first half twice, the second time with other bytes (one version for the filter,
        # another for the server), then the rest.
        half = len(hello) // 2
        forged = bytes(b ^ 0x20 if 0x61 <= b <= 0x7A else b for b in hello[:half])
        pieces = [(0, hello[:half]), (0, forged), (half, hello[half:])]
    if mode == "shuffle":
        # The first piece last, the others shuffled: nothing is contiguous until the end.
        rest = pieces[1:]
        random.shuffle(rest)
        pieces = [*rest, pieces[0]]
    rejected = False
    for off, data in pieces:
        try:
            sender.send(TCP(sport=sport, dport=443, flags="PA", seq=isn + 1 + off, ack=server_seq) / data)
        except PermissionError:
            rejected = True  # the local firewall rejected it at once (the flow is marked blocked)
    time.sleep(1.0 * T)
    sniffer.stop()
    got = list(seen)
    server_bytes = sum(len(bytes(p[TCP].payload)) for p in got if p.haslayer(TCP))
    rst = any(p[TCP].flags & 0x04 for p in got if p.haslayer(TCP))
    print(json.dumps({"server_bytes": server_bytes, "rst": rst, "rejected": rejected, "hello_len": len(hello),
                      "pieces": len(pieces)}))


if __name__ == "__main__":
    main()
