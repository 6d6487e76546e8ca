"""Hand-made attacks on TCP connections: a decoy segment the server will not take (or a trick on the
stream), then the real ClientHello, from raw sockets. Run inside the client namespace:

    python decoy.py BACKEND SOURCE ADDRESS ATTACK:DECOY_NAME:REAL_NAME...

one connection per ATTACK:DECOY_NAME:REAL_NAME, in turn. Attacks: badsum (the decoy's TCP checksum
is wrong), md5 (it carries a TCP MD5 signature option), noack (no ACK flag), futack (it acknowledges
bytes the server never sent), oldack (it acknowledges one byte before the server's first, sent
before the handshake's ACK: the server is still in SYN-RECEIVED and wants exactly its ISN + 1),
pawsold (its timestamp is older than the SYN's), farseq (it sits 200,000 bytes past the stream's
start, far beyond the server's receive window), syn2 (no decoy hello: a second SYN with ISN + 1
after the handshake, which the server ignores), tfo (the decoy rides in the SYN, as Fast Open data
the server does not take), spoof (no decoy hello: a "server" packet with payload made on this host
and sent to it over loopback), flood (the first 100 bytes of the real hello sent again and again,
then the rest), ackflood (pure ACKs past the kernel's byte window, then the real hello), none (just
the real hello), pawsjump (the handshake's ACK, data-less, carries a timestamp far ahead: the
decoy's, newer than the SYN's, is older than that one, and PAWS drops it; the real hello carries one
newer still), ipopt (IPv4: a loose source route through another address; IPv6: a destination option
of an unknown type whose action bits say "discard"), ipbad (IPv4: a timestamp option of length 3;
IPv6: hop-by-hop padding of 12 bytes, RFC 8200 allows 7). Every segment but the flood's ACKs carries
a timestamp option.

Prints one JSON list, an object per connection: attack, server_bytes (payload bytes the server sent
back: a ServerHello when it took a whole ClientHello), rst (a reset arrived), rejected (the local
firewall refused a send at once: the flow was marked blocked before), decoy_queued (packets the
netguard rules queued for the decoy step, from the rule counters).
The kernel would answer the server's SYN-ACK with a reset (it knows no such socket): the caller
drops those resets in the raw table first.
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

from scapy.all import (  # type: ignore[attr-defined]
    IP,
    TCP,
    AsyncSniffer,
    HBHOptUnknown,
    IPOption_LSRR,
    IPOption_NOP,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    PadN,
    conf,
    raw,
)
from segments import counters

from netguard.engine.packets import checksum
from netguard.lab.lab import python_client_hello

PORT = 443
WAIT = 2.0  # seconds for the server's SYN-ACK on a local veth
TS0 = 100_000  # the SYN's timestamp value
WINDOW = 131072  # firewall.TCP_WINDOW_BYTES, past which the ACK flood goes
JUMP = 1_000_000  # pawsjump: how far the data-less ACK moves the timestamp ahead
BAD_TIMESTAMP_OPTION = b"\x44\x03\x05\x00"
SETTLE = 0.25  # seconds for the server's answer (a ServerHello comes within milliseconds on a veth)
# Seconds to wait beyond SETTLE for the first answer (a reset or server bytes) when none has come:
# on a loaded machine the daemon's verdict, and so its reset, can take longer than SETTLE.
ANSWER_WAIT = 2.0 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR", "1") or 1)


SPOOF = b"SSH-2.0-spoof\r\n"


class Attacker:
    def __init__(self, backend: str, src: str, address: str) -> None:
        self.backend, self.src, self.address = backend, src, address
        self.v6 = ipaddress.ip_address(address).version == 6
        # IPPROTO_RAW: the packet goes out with the IP header built here (its source too), both families.
        self.sock = socket.socket(socket.AF_INET6 if self.v6 else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.seen: list[Any] = []  # scapy packets (untyped)
        self.sniffer = AsyncSniffer(filter=f"tcp and src host {address} and src port {PORT}",
                                    iface=["eth0", "lo"], store=False, prn=self.seen.append)
        self.rejected = False

    def send(self, tcp: TCP, ip_src: str | None = None, ip_dst: str | None = None, fix: int | None = None,
             ip_extra: str = "") -> None:
        dst = ip_dst or self.address
        packet = raw(self.ip(ip_src or self.src, dst, ip_extra) / tcp)
        if ip_extra == "ipbad" and not self.v6:
            # A timestamp option of length 3 (it must be at least 4): a parameter problem for the receiver.
            head = bytearray(packet[:24])
            head[20:24], head[10:12] = BAD_TIMESTAMP_OPTION, b"\0\0"
            head[10:12] = checksum(bytes(head)).to_bytes(2, "big")
            packet = bytes(head) + packet[24:]
        if fix is not None:  # a wrong TCP checksum
            at = (40 if self.v6 else 20) + 16
            packet = packet[:at] + fix.to_bytes(2, "big") + packet[at + 2:]
        try:
            self.sock.sendto(packet, (dst, 0))
        except PermissionError:
            self.rejected = True  # the local firewall rejected it at once (the flow is marked blocked)

    def ip(self, src: str, dst: str, extra: str) -> Any:
        """The IP header, with the options or extension headers an attack names."""
        if not self.v6:
            if extra == "ipopt":  # loose source route through another address: forwarded, not delivered
                return IP(src=src, dst=dst, options=[IPOption_LSRR(routers=["192.0.2.1"])])
            if extra == "ipbad":  # four NOPs here, made a timestamp option of length 3 in send()
                return IP(src=src, dst=dst, options=[IPOption_NOP()] * 4)
            return IP(src=src, dst=dst)
        if extra == "ipopt":  # an unknown destination option whose type says "discard"
            return IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0xC2, optdata=b"\0" * 4)])
        if extra == "ipbad":  # hop-by-hop padding longer than RFC 8200's 7 bytes
            return IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * 12)])
        return IPv6(src=src, dst=dst)

    def mine(self, sport: int) -> list[Any]:
        return [p for p in list(self.seen) if p[TCP].dport == sport and bytes(p[TCP].payload) != SPOOF]

    def run(self, attack: str, decoy_name: str, real_name: str) -> dict[str, object]:
        self.rejected = False
        sport = random.randint(20000, 60000)
        isn = random.randint(0, 2**31)
        decoy, real = python_client_hello(decoy_name), python_client_hello(real_name)
        send = self.send

        def opts(tsval: int = TS0 + 10) -> list[tuple[str, object]]:
            return [("Timestamp", (tsval, 0))]

        syn_data = decoy if attack == "tfo" else b""
        send(TCP(sport=sport, dport=PORT, flags="S", seq=isn, options=[("MSS", 1460), *opts(TS0)]) / syn_data)
        synack = None
        deadline = time.monotonic() + WAIT
        while synack is None and time.monotonic() < deadline:
            time.sleep(0.005)
            synack = next((p for p in self.mine(sport) if p[TCP].flags & 0x12 == 0x12), None)
        if synack is None:
            return {"attack": attack, "error": "no SYN-ACK"}
        s_seq = synack[TCP].seq + 1
        if attack == "pawsjump":  # the handshake's ACK moves the server's newest timestamp far ahead
            send(TCP(sport=sport, dport=PORT, flags="A", seq=isn + 1, ack=s_seq, options=opts(TS0 + JUMP)))
        elif attack != "oldack":
            send(TCP(sport=sport, dport=PORT, flags="A", seq=isn + 1, ack=s_seq, options=opts()))
        family = 6 if self.v6 else 4
        before = counters(self.backend, family)
        if attack in ("badsum", "md5", "noack", "futack", "oldack", "pawsold", "farseq", "pawsjump", "ipopt",
                      "ipbad"):
            extra = [(19, b"\x00" * 16)] if attack == "md5" else []
            tcp = TCP(sport=sport, dport=PORT, flags="P" if attack == "noack" else "PA",
                      seq=isn + 1 + (200_000 if attack == "farseq" else 0),
                      ack={"futack": s_seq + 1000, "oldack": s_seq - 1}.get(attack, s_seq),
                      options=[*opts(TS0 - 50 if attack == "pawsold" else TS0 + 10), *extra])
            send(tcp / decoy, fix=0x1234 if attack == "badsum" else None,
                 ip_extra=attack if attack in ("ipopt", "ipbad") else "")
        elif attack == "syn2":
            send(TCP(sport=sport, dport=PORT, flags="S", seq=isn + 1, options=opts(TS0 + 5)))
        elif attack == "spoof":
            # A "server" packet made here: it reaches this host over loopback, never from the server.
            send(TCP(sport=PORT, dport=sport, flags="PA", seq=s_seq, ack=isn + 1) / SPOOF, ip_src=self.address,
                 ip_dst=self.src)
        elif attack == "flood":
            copy = TCP(sport=sport, dport=PORT, flags="PA", seq=isn + 1, ack=s_seq, options=opts()) / real[:100]
            for _ in range(1000):
                send(copy)
        elif attack == "ackflood":
            ack = TCP(sport=sport, dport=PORT, flags="A", seq=isn + 1, ack=s_seq)
            for _ in range(WINDOW // 40 + 10):
                send(ack)
        elif attack not in ("tfo", "none"):
            raise SystemExit(f"decoy: unknown attack {attack!r}")
        time.sleep(0.1)
        after = counters(self.backend, family)
        if attack == "oldack":  # now the handshake's ACK, with the right number
            send(TCP(sport=sport, dport=PORT, flags="A", seq=isn + 1, ack=s_seq, options=opts()))
        if attack == "flood":
            send(TCP(sport=sport, dport=PORT, flags="PA", seq=isn + 101, ack=s_seq, options=opts(TS0 + 20))
                 / real[100:])
        else:
            late = TS0 + JUMP + 20 if attack == "pawsjump" else TS0 + 20
            send(TCP(sport=sport, dport=PORT, flags="PA", seq=isn + 1, ack=s_seq, options=opts(late)) / real)
        time.sleep(SETTLE)
        deadline = time.monotonic() + ANSWER_WAIT
        while not self.rejected and time.monotonic() < deadline and not any(
                p[TCP].flags & 0x04 or bytes(p[TCP].payload) for p in self.mine(sport)):
            time.sleep(0.01)
        got = self.mine(sport)
        rejected = self.rejected
        # The server would go on retransmitting to a socket that does not exist: a reset ends it.
        send(TCP(sport=sport, dport=PORT, flags="R", seq=isn + 1 + len(real)))
        return {"attack": attack, "server_bytes": sum(len(bytes(p[TCP].payload)) for p in got),
                "rst": any(p[TCP].flags & 0x04 for p in got), "rejected": rejected,
                "decoy_queued": after[0] - before[0]}


def main() -> None:
    backend, src, address, *specs = sys.argv[1:]
    conf.verb = 0
    attacker = Attacker(backend, src, address)
    attacker.sniffer.start()
    time.sleep(0.3)
    results = []
    for spec in specs:
        attack, decoy_name, real_name = spec.split(":")
        results.append(attacker.run(attack, decoy_name, real_name))
    attacker.sniffer.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
