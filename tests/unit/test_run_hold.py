"""The run loop's side of HOLD: a held packet gets no verdict until a later one settles it, and then
before the packet that settled it; expiry gives up held packets. Fake queue packets (the real
queue: tests/integration/test_quic.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from scapy.all import IP, UDP, raw  # type: ignore[attr-defined]

from netguard.daemon.run import HOOK_OUTPUT, Daemon
from netguard.engine import core
from netguard.lab.lab import python_client_hello

sys.path.insert(0, str(Path(__file__).resolve().parent / "wire"))
from wirecorpus import crypto_frame, protect_initial

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"


class FakePacket:
    """What run.Daemon uses of a netfilterqueue Packet; verdicts go to a shared log."""

    hook = HOOK_OUTPUT

    def __init__(self, name: str, data: bytes, log: list[tuple[str, str, int]]) -> None:
        self.name, self.data, self.log, self.mark = name, data, log, 0

    def get_payload(self) -> bytes:
        return self.data

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def repeat(self) -> None:
        self.log.append((self.name, "repeat", self.mark))

    def drop(self) -> None:
        self.log.append((self.name, "drop", self.mark))


def halves(name: str, sport: int) -> list[bytes]:
    message = python_client_hello(name)[5:]
    dcid = sport.to_bytes(8, "big")
    return [bytes(raw(IP(src="10.0.0.10", dst="10.0.0.102") / UDP(sport=sport, dport=443)
                      / protect_initial(dcid, crypto_frame(offset, message[offset:end]), pn=offset)))
            for offset, end in ((0, 100), (100, len(message)))]


def daemon() -> Daemon:
    return Daemon(policy_path=None, backend="iptables-nft", out=io.StringIO(), err=io.StringIO())


def test_a_held_datagram_goes_before_the_one_that_decides() -> None:
    d = daemon()
    log: list[tuple[str, str, int]] = []
    first, second = (FakePacket(n, p, log) for n, p in zip(("first", "second"), halves(ALLOWED, 40000), strict=True))
    d._on_packet(first)  # type: ignore[arg-type]
    assert log == []  # held: no verdict yet, it waits in the kernel's queue
    d._on_packet(second)  # type: ignore[arg-type]
    m = d._marks
    assert log == [("first", "repeat", m.allowed), ("second", "repeat", m.allowed)]
    assert d._held == {}


def test_a_held_datagram_of_a_blocked_connection_is_dropped() -> None:
    d = daemon()
    log: list[tuple[str, str, int]] = []
    first, second = (FakePacket(n, p, log) for n, p in zip(("first", "second"), halves(BLOCKED, 40001), strict=True))
    d._on_packet(first)  # type: ignore[arg-type]
    d._on_packet(second)  # type: ignore[arg-type]
    assert log == [("first", "drop", 0), ("second", "repeat", d._marks.blocked)]
    assert BLOCKED in d.out.getvalue()  # type: ignore[attr-defined]


def test_expiry_gives_up_a_held_datagram() -> None:
    d = daemon()
    log: list[tuple[str, str, int]] = []
    first = FakePacket("first", halves(ALLOWED, 40002)[0], log)
    d._on_packet(first)  # type: ignore[arg-type]
    for token, action in d.engine.expire(d.clock() + core.FLOW_IDLE + 1):
        d._settle(token, action)
    assert log == [("first", "drop", 0)] and d._held == {}
