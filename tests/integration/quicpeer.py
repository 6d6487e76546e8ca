"""A real QUIC server and client (aioquic) and hand-made QUIC datagrams, for the namespace lab.

    python quicpeer.py serve CERT KEY PORT... --echo PORT...
        QUIC (v1 and v2) on each PORT, every stream echoed; a plain UDP echo on each --echo PORT
        (a datagram that reaches it comes back: the test sees what got through). Prints "ready".

    python quicpeer.py connect ADDRESS PORT NAME [NAME...] [--version 1|2] [--big] [--cafile F]
        One UDP socket; for each NAME in turn a new QUIC connection from that socket (so all share
        one 5-tuple, each with its own connection IDs): handshake, then one stream echoed. After
        the last, the first connection is tried again. --big: a ClientHello over two Initial
        datagrams (aioquic's quantum_readiness_test). Prints JSON: per name {"handshake", "echo"},
        and "first_again".

    python quicpeer.py raw ADDRESS PORT HEX [HEX...] [--gso SIZE]
        Send hand-made datagrams from one socket (HEX: the UDP payload), each answered or not by
        the echo within the timeout; with --gso all of them in one UDP GSO send (UDP_SEGMENT).
        Prints JSON: one outcome per datagram, "echo" or the error's name.

Runs inside a lab namespace; only aioquic and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import threading
import time
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.quic.packet import QuicProtocolVersion

ALPN = ["netguard-test"]
STEP_TIMEOUT = 3.0  # seconds for one handshake or one echo: the lab answers in milliseconds
ECHO_TIMEOUT = 0.5
SOL_UDP, UDP_SEGMENT = 17, 103  # linux/udp.h


class _Echo(QuicConnectionProtocol):
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
            self.transmit()


def _udp_echo(port: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data[:64], peer)


async def _serve(cert: str, key: str, ports: list[int]) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    config.load_cert_chain(cert, key)
    for port in ports:
        await serve("::", port, configuration=config, create_protocol=_Echo)
    print("ready", flush=True)
    await asyncio.Event().wait()


class _Client:
    """Sans-I/O aioquic connections over one UDP socket."""

    def __init__(self, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.addr = (address, port)
        self.conns: list[QuicConnection] = []
        self.events: dict[int, list[QuicEvent]] = {}
        self.send_errors: list[str] = []

    def _flush(self) -> None:
        now = time.monotonic()
        for conn in self.conns:
            for data, addr in conn.datagrams_to_send(now=now):
                try:
                    self.sock.sendto(data, addr)
                except OSError as exc:  # a blocked flow: the kernel's REJECT refuses the send
                    self.send_errors.append(type(exc).__name__)

    def run_until(self, done: Any, timeout: float = STEP_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._flush()
            if done():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            timers = [t for t in (c.get_timer() for c in self.conns) if t is not None]
            wait = max(0.001, min([deadline, *timers]) - now)
            self.sock.settimeout(wait)
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                now = time.monotonic()
                for conn in self.conns:
                    timer = conn.get_timer()
                    if timer is not None and timer <= now:
                        conn.handle_timer(now=now)
            except OSError:
                continue  # an ICMP error for an earlier send
            else:
                for conn in self.conns:  # each keeps only packets for its own connection IDs
                    # (address, port): IPv6 adds flow info and scope, which the path it knows lacks.
                    conn.receive_datagram(data, addr[:2], now=time.monotonic())
            for i, conn in enumerate(self.conns):
                while (event := conn.next_event()) is not None:
                    self.events.setdefault(i, []).append(event)

    def open(self, name: str, version: int, big: bool, cafile: str | None) -> int:
        config = QuicConfiguration(is_client=True, server_name=name, alpn_protocols=ALPN,
                                   original_version=version, quantum_readiness_test=big)
        if cafile:
            config.load_verify_locations(cafile)
        else:
            config.verify_mode = ssl.CERT_NONE
        conn = QuicConnection(configuration=config)
        conn.connect(self.addr, now=time.monotonic())
        self.conns.append(conn)
        return len(self.conns) - 1

    def handshake(self, i: int) -> bool:
        return self.run_until(lambda: any(isinstance(e, HandshakeCompleted) for e in self.events.get(i, [])))

    def echo(self, i: int, payload: bytes) -> bool:
        conn = self.conns[i]
        stream = conn.get_next_available_stream_id()
        conn.send_stream_data(stream, payload, end_stream=True)

        def answered() -> bool:
            got = b"".join(e.data for e in self.events.get(i, [])
                           if isinstance(e, StreamDataReceived) and e.stream_id == stream)
            return got == payload

        return self.run_until(answered)


def connect(args: argparse.Namespace) -> dict[str, Any]:
    version = QuicProtocolVersion.VERSION_2 if args.version == 2 else QuicProtocolVersion.VERSION_1
    client = _Client(args.address, args.port)
    out: dict[str, Any] = {"sport": client.sock.getsockname()[1], "connections": []}
    for name in args.names:
        i = client.open(name, version, args.big, args.cafile)
        ok = client.handshake(i)
        out["connections"].append({"name": name, "handshake": ok, "echo": ok and client.echo(i, f"ping {i}".encode())})
    if len(args.names) > 1:
        out["first_again"] = client.echo(0, b"again")
    out["send_errors"] = sorted(set(client.send_errors))
    return out


def raw(args: argparse.Namespace) -> list[str]:
    family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
    datagrams = [bytes.fromhex(h) for h in args.datagrams]
    outcomes: list[str] = []
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(ECHO_TIMEOUT)
        if args.gso:
            s.setsockopt(SOL_UDP, UDP_SEGMENT, args.gso)
            sends = [b"".join(datagrams)]
        else:
            sends = datagrams
        for data in sends:
            try:
                s.sendto(data, (args.address, args.port))
            except OSError as e:
                outcomes.append(type(e).__name__)
                continue
            for _ in range(len(datagrams) if args.gso else 1):
                try:
                    s.recvfrom(2048)
                    outcomes.append("echo")
                except OSError as e:
                    outcomes.append(type(e).__name__)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("cert")
    p.add_argument("key")
    p.add_argument("ports", type=int, nargs="+")
    p.add_argument("--echo", type=int, nargs="*", default=[])
    p = sub.add_parser("connect")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("names", nargs="+")
    p.add_argument("--version", type=int, default=1, choices=(1, 2))
    p.add_argument("--big", action="store_true")
    p.add_argument("--cafile")
    p = sub.add_parser("raw")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("datagrams", nargs="+")
    p.add_argument("--gso", type=int, default=0)
    args = parser.parse_args()
    if args.command == "serve":
        for port in args.echo:
            threading.Thread(target=_udp_echo, args=(port,), daemon=True).start()
        asyncio.run(_serve(args.cert, args.key, args.ports))
    elif args.command == "connect":
        print(json.dumps(connect(args)))
    else:
        print(json.dumps(raw(args)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
