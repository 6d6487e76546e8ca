"""The engine's own CPU per queued packet, in process: Engine.handle without kernel or NetfilterQueue.

Strategy: what the daemon's queue hands the engine for a new TLS connection (the client's SYN, the
server's SYN-ACK, then the ClientHello: a real one from Python's ssl for registry-1.docker.io, with
the TCP options a Linux client and server send), the packets the netpath floods send (that
ClientHello alone on a new flow each, DNS answers as dnsmasq writes them) and a ClientHello for a
name outside every registry (most of a VM's other HTTPS), built once, then fed to a fresh Engine
with the default policy, set up as the daemon sets it (`sees_replies`, `awaits_server`, `kernel_confirms`),
the scenarios interleaved round after round so machine drift hits all alike; rows give the median
µs per flow or answer and the rounds' min/max. This is the part of the netpath verdict rows that is
netguard's Python, free of the kernel's noise (the daemon adds its NetfilterQueue callback, the
verdict call, and a log line per block).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench_sections.netpath import dns_answer, row
from netguard.daemon.policyfiles import load_policy
from netguard.engine import Action, Engine
from netguard.engine.packets import tcp_packet, udp_packet
from netguard.lab.lab import python_client_hello
from netguard.policy import Policy

CLIENT, SERVER = bytes([10, 77, 0, 10]), bytes([10, 77, 0, 53])
SYN, SYN_ACK, PSH_ACK = 0x02, 0x12, 0x18
FULL_TABLE = 1000  # names the "table full" engine may hold (filled before the clock starts)
PORTS = 50_000  # source ports per source address


def _linux_options(syn: bool, tsval: int, tsecr: int) -> bytes:
    """The TCP options Linux sends: MSS, SACK permitted, timestamps, window scale on a SYN or SYN-ACK
    (20 bytes); two NOPs and the timestamps on later segments (12 bytes)."""
    stamps = b"\x08\x0a" + tsval.to_bytes(4, "big") + tsecr.to_bytes(4, "big")
    return b"\x02\x04\x05\xb4\x04\x02" + stamps + b"\x01\x03\x03\x07" if syn else b"\x01\x01" + stamps


def connections(n: int, hello: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(client SYN, server SYN-ACK, ClientHello segment) of n new TLS connections, each from its own
    source address and port, with Linux's TCP options and distinct sequence numbers."""
    out = []
    for i in range(n):
        src, sport = bytes([10, 77, 1 + i // PORTS, 10]), 1024 + i % PORTS
        isn, server_isn = (1000 + 7919 * i) & 0xFFFFFFFF, (900_000 + 104_729 * i) & 0xFFFFFFFF
        out.append((tcp_packet(4, src, SERVER, sport, 443, isn, 0, SYN, b"", window=64240,
                               options=_linux_options(True, 111 + i, 0)),
                    tcp_packet(4, SERVER, src, 443, sport, server_isn, isn + 1, SYN_ACK, b"", window=65160,
                               options=_linux_options(True, 222 + i, 111 + i)),
                    tcp_packet(4, src, SERVER, sport, 443, isn + 1, server_isn + 1, PSH_ACK, hello, window=502,
                               options=_linux_options(False, 112 + i, 222 + i))))
    return out


def _hellos(n: int, hello: bytes) -> list[bytes]:
    """The ClientHello segments of n connections, to be fed alone (as the netpath flood sends them)."""
    return [h for _, _, h in connections(n, hello)]


def _engine(policy: Policy) -> Engine:
    """An Engine set up as the daemon sets it (netguard.daemon.run)."""
    engine = Engine(policy)
    engine.sees_replies = True  # the rules queue every undecided flow's SYN-ACK
    engine.awaits_server = True  # an allow read from client bytes waits for the server ...
    engine.kernel_confirms = True  # ... and for a ClientHello the kernel does the waiting (xt u32)
    return engine


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


def expected_verdicts(engine: Engine, connection: tuple[bytes, bytes, bytes]) -> list[Action]:
    """The actions the engine gives one connection's packets, fed as the daemon feeds them."""
    now = time.time()
    return [engine.handle(p, now, from_client).action
            for p, from_client in zip(connection, (True, False, True), strict=True)]


def _timed(engine: Engine, packets: list[tuple[bytes, bool]], per: int) -> float:
    """µs of Engine.handle per `per` packets (each with from_client, as the daemon's hook tells it)."""
    handle = engine.handle
    start = time.perf_counter()
    for p, from_client in packets:
        handle(p, time.time(), from_client)
    return (time.perf_counter() - start) / (len(packets) / per) * 1e6


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every scenario (see the module doc); `quick` measures less."""
    rounds, n = (5, 5000) if quick else (15, 20000)
    policy = load_policy(None)
    hello = python_client_hello("registry-1.docker.io")
    flows = [(p, from_client) for c in connections(n, hello) for p, from_client in zip(c, (True, False, True),
                                                                                      strict=True)]
    # What is timed must be the allowed path the daemon takes, not a drop or a fail verdict.
    got = expected_verdicts(_engine(policy), connections(1, hello)[0])
    if got != [Action.ACCEPT, Action.ACCEPT, Action.UNCONFIRMED]:
        raise RuntimeError(f"engine section: a new TLS connection got {got}, not accept, accept, unconfirmed")
    hellos = [(h, True) for h in _hellos(n, hello)]
    unknown = [(h, True) for h in _hellos(n, python_client_hello("www.example.org"))]
    same = [(a, False) for a in _answers(n, new_names=False)]
    fresh = [(a, False) for a in _answers(n, new_names=True, start=FULL_TABLE)]
    fill = _answers(FULL_TABLE, new_names=True)

    def full_engine() -> Engine:
        engine = _engine(policy)
        engine.names.max_entries = FULL_TABLE
        for p in fill:
            engine.handle(p, time.time(), False)
        return engine

    scenarios: dict[str, tuple[str, Callable[[], float]]] = {
        "new TLS connection: SYN + server's SYN-ACK + 517 B ClientHello, allowed SNI (what the daemon queues)": (
            "µs/flow", lambda: _timed(_engine(policy), flows, 3)),
        "517 B ClientHello alone on a new flow (as the verdict-capacity flood sends it)": (
            "µs/packet", lambda: _timed(_engine(policy), hellos, 1)),
        "517 B ClientHello alone on a new flow, SNI not a registry (unknown_hosts = allow)": (
            "µs/packet", lambda: _timed(_engine(policy), unknown, 1)),
        "DNS answer, registry-1.docker.io A": ("µs/packet", lambda: _timed(_engine(policy), same, 1)),
        "DNS answer, a new name each, name table has room": (
            "µs/packet", lambda: _timed(_engine(policy), fresh, 1)),
        "DNS answer, a new name each, name table full (fail_mode = closed: rewritten)": (
            "µs/packet", lambda: _timed(full_engine(), fresh, 1)),
    }
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(rounds):
        for name, (_, measure) in scenarios.items():
            samples[name].append(measure())
    return [row(f"in process: {name}", "CPU", statistics.median(samples[name]), unit,
                note=f"Engine.handle only (no kernel, no NetfilterQueue, no log line), default policy, "
                     f"sees_replies, awaits_server and kernel_confirms as the daemon sets them; "
                     f"{rounds} rounds x {n:,}", spread=samples[name], section="engine")
            for name, (unit, _) in scenarios.items()]
