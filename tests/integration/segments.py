"""Send hand-made TCP segments on one connection and report, after each, how many packets netguard's
rules queued and how many its data-less-segment rules let stay in the kernel. Run inside the client
namespace:

    python segments.py BACKEND SOURCE ADDRESS STEP...

Steps: S (the SYN), A<offset> (a pure ACK with a TCP data offset of 5..15, padded with NOPs),
D<bytes>/<offset> (that many bytes of a real ClientHello, in order), F (a FIN without data), U (a pure
ACK with the URG flag, urgent pointer 1), W (wait until the server has sent something after its
SYN-ACK: its ACK of our data). Prints one JSON list:
per step [step, queued, skipped], read from the rule counters of the client namespace's filter table
(BACKEND-save -c): a raw socket's send runs the OUTPUT hook in the sending call, so the counters are
final when it returns. The kernel answers the server's SYN-ACK with a reset (it knows no such socket):
the caller drops those resets in the raw table first.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time

from scapy.all import IP, TCP, AsyncSniffer, IPv6, conf, raw  # type: ignore[attr-defined]

from netguard.lab.lab import python_client_hello

PORT = 443
# harness.scaled() for a script run on its own in a namespace
T = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)
WAIT = 2.0 * T  # seconds for the server's SYN-ACK or ACK on a local veth


def counters(backend: str, family: int) -> tuple[int, int]:
    """(packets the TCP queue rules of NETGUARD-FLOW and NETGUARD-EMPTY sent to the queue, packets
    NETGUARD-EMPTY's u32 rules returned)."""
    tool = f"{'iptables' if family == 4 else 'ip6tables'}-{backend.removeprefix('iptables-')}-save"
    out = subprocess.run([tool, "-c", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    queued = skipped = 0
    for line in out.splitlines():
        if not line.startswith("["):
            continue
        packets = int(line[1:].split(":", 1)[0])
        if "-p tcp" in line and "NFQUEUE" in line and ("-A NETGUARD-FLOW" in line or "-A NETGUARD-EMPTY" in line):
            queued += packets
        elif "-A NETGUARD-EMPTY" in line and "-m u32" in line and line.endswith("-j RETURN"):
            skipped += packets
    return queued, skipped


def main() -> None:
    backend, src, address, *steps = sys.argv[1:]
    conf.verb = 0
    family = ipaddress.ip_address(address).version
    if family == 6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(tcp: TCP) -> None:
        if family == 6:
            sock.sendto(raw(IPv6(src=src, dst=address) / tcp)[40:], (address, 0))
        else:
            sock.sendto(raw(IP(src=src, dst=address) / tcp), (address, 0))

    sport = random.randint(20000, 60000)
    isn = random.randint(0, 2**31)
    seen: list[object] = []
    sniffer = AsyncSniffer(filter=f"tcp and src host {address} and src port {PORT} and dst port {sport}",
                           iface=["eth0", "lo"], store=False, prn=seen.append)
    sniffer.start()
    time.sleep(0.3 * T)

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(seen) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(seen) < count:
            raise SystemExit(f"segments: the server sent {len(seen)} packets, {count} expected")

    hello = python_client_hello("registry-1.docker.io")
    sent = 0  # client bytes so far
    server_seq = 0
    out: list[list[object]] = []
    before = counters(backend, family)
    for step in steps:
        seq = isn + 1 + sent
        if step == "S":
            send(TCP(sport=sport, dport=PORT, flags="S", seq=isn))
            wait_for(1)
            server_seq = seen[0][TCP].seq + 1  # type: ignore[index]
        elif step == "W":
            wait_for(2)
        elif step == "F":
            send(TCP(sport=sport, dport=PORT, flags="FA", seq=seq, ack=server_seq))
        elif step == "U":
            send(TCP(sport=sport, dport=PORT, flags="AU", seq=seq, ack=server_seq, urgptr=1))
        elif step.startswith("A"):
            options = [("NOP", None)] * (4 * (int(step[1:]) - 5))
            send(TCP(sport=sport, dport=PORT, flags="A", seq=seq, ack=server_seq, options=options))
        elif step.startswith("D"):
            size, offset = (int(v) for v in step[1:].split("/"))
            options = [("NOP", None)] * (4 * (offset - 5))
            send(TCP(sport=sport, dport=PORT, flags="PA", seq=seq, ack=server_seq, options=options)
                 / hello[sent:sent + size])
            sent += size
        else:
            raise SystemExit(f"segments: unknown step {step!r}")
        after = counters(backend, family)
        out.append([step, after[0] - before[0], after[1] - before[1]])
        before = after
    sniffer.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
