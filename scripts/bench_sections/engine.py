"""The engine's own CPU per queued packet, in process: Engine.handle without kernel or NetfilterQueue.

Strategy: the packets the netpath floods send (a real ClientHello from Python's ssl for
registry-1.docker.io on a new flow each, DNS answers as dnsmasq writes them) and a ClientHello for a
name outside every registry (most of a VM's other HTTPS), built once, then fed to a fresh Engine
with the default policy, the scenarios interleaved round after round so machine drift hits all
alike; rows give the median µs per flow or answer and the rounds' min/max. This is the part of the
netpath verdict rows that is netguard's Python, free of the kernel's noise (the daemon adds its
NetfilterQueue callback, the verdict call, and a log line per block).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench_sections.netpath import dns_answer, row
from netguard.daemon.policyfiles import load_policy
from netguard.engine import Engine
from netguard.engine.packets import tcp_packet, udp_packet
from netguard.lab.lab import python_client_hello

CLIENT, SERVER = bytes([10, 77, 0, 10]), bytes([10, 77, 0, 53])
SYN, PSH_ACK = 0x02, 0x18
FULL_TABLE = 1000  # names the "table full" engine may hold (filled before the clock starts)


def _flows(n: int, hello: bytes) -> list[tuple[bytes, bytes]]:
    """(SYN, ClientHello segment) of n flows, each from its own source port and address."""
    out = []
    for i in range(n):
        src, sport = bytes([10, 77, 1 + i // 50000, 10]), 1024 + i % 50000
        out.append((tcp_packet(4, src, SERVER, sport, 443, 1000, 0, SYN, b""),
                    tcp_packet(4, src, SERVER, sport, 443, 1001, 1, PSH_ACK, hello)))
    return out


def _answers(n: int, new_names: bool, start: int = 0) -> list[bytes]:
    """n DNS answer packets: all for registry-1.docker.io, or each a new name and address."""
    template, name_off, addr_off = dns_answer("n00000000.flood.example" if new_names else "registry-1.docker.io",
                                              "10.77.0.53")
    msg = bytearray(template)
    out = []
    for k in range(start, start + n):
        if new_names:
            msg[name_off:name_off + 8] = b"%08d" % k
            msg[addr_off:addr_off + 4] = (0x0B000000 + k).to_bytes(4, "big")
        out.append(udp_packet(4, SERVER, CLIENT, 53, 5353, bytes(msg)))
    return out


def _timed(engine: Engine, packets: list[bytes], from_client: bool, per: int) -> float:
    """µs of Engine.handle per `per` packets."""
    handle = engine.handle
    start = time.perf_counter()
    for p in packets:
        handle(p, time.time(), from_client)
    return (time.perf_counter() - start) / (len(packets) / per) * 1e6


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every scenario (see the module doc); `quick` measures less."""
    rounds, n = (5, 5000) if quick else (15, 20000)
    policy = load_policy(None)
    flows = _flows(n, python_client_hello("registry-1.docker.io"))
    both = [p for pair in flows for p in pair]
    hellos = [hello for _, hello in flows]
    unknown = [hello for _, hello in _flows(n, python_client_hello("www.example.org"))]
    same = _answers(n, new_names=False)
    fresh = _answers(n, new_names=True, start=FULL_TABLE)
    fill = _answers(FULL_TABLE, new_names=True)

    def full_engine() -> Engine:
        engine = Engine(policy)
        engine.names.max_entries = FULL_TABLE
        for p in fill:
            engine.handle(p, time.time(), False)
        return engine

    scenarios: dict[str, tuple[str, Callable[[], float]]] = {
        "new TCP flow: SYN + 517 B ClientHello, allowed SNI": (
            "µs/flow", lambda: _timed(Engine(policy), both, True, 2)),
        "517 B ClientHello alone on a new flow (as the verdict-capacity flood sends it)": (
            "µs/packet", lambda: _timed(Engine(policy), hellos, True, 1)),
        "517 B ClientHello alone on a new flow, SNI not a registry (unknown_hosts = allow)": (
            "µs/packet", lambda: _timed(Engine(policy), unknown, True, 1)),
        "DNS answer, registry-1.docker.io A": ("µs/packet", lambda: _timed(Engine(policy), same, False, 1)),
        "DNS answer, a new name each, name table has room": (
            "µs/packet", lambda: _timed(Engine(policy), fresh, False, 1)),
        "DNS answer, a new name each, name table full (fail_mode = closed: rewritten)": (
            "µs/packet", lambda: _timed(full_engine(), fresh, False, 1)),
    }
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(rounds):
        for name, (_, measure) in scenarios.items():
            samples[name].append(measure())
    return [row(f"in process: {name}", "CPU", statistics.median(samples[name]), unit,
                note=f"Engine.handle only (no kernel, no NetfilterQueue, no log line), default policy; "
                     f"{rounds} rounds x {n:,}", spread=samples[name], section="engine")
            for name, (unit, _) in scenarios.items()]
