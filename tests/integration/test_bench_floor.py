"""The benchmark's floors stand where netguard stands: with netguard's rules, the C NFQUEUE floor
(scripts/bench_sections/nfqueue_floor.c) and the Python floor (scripts/bench_sections/python_floor.py)
each pass an allowed connection and queue exactly the packets netguard queues (the SYN, the server's
SYN-ACK and the first data packet), so "netguard / floor" compares consumers of one queue doing the
same packets."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netguard.daemon import firewall
from netguard.lab import lab as lab_mod

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
# Imported by name: the section imports tests.integration.harness, which mypy already knows as `harness`.
netpath: Any = importlib.import_module("bench_sections.netpath")

pytestmark = pytest.mark.root

CONNECTIONS = 20
QUEUED_PER_CONNECTION = 3  # SYN, SYN-ACK, ClientHello: what netguard's rules queue (test_daemon_core)

FLOORS: dict[str, Callable[[lab_mod.Lab, Path], int]] = {
    "c": lambda lab, tmp: int(netpath.start_floor(lab, netpath.build_floor(tmp))),
    "python": lambda lab, _tmp: int(netpath.start_python_floor(lab)),
}


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_floor_passes_connections_and_queues_what_netguard_queues(lab: lab_mod.Lab, tmp_path: Path,
                                                                  floor: str) -> None:
    started = len(lab.procs)
    try:
        FLOORS[floor](lab, tmp_path)
        hello = lab_mod.python_client_hello("registry-1.docker.io")
        tools = netpath.build_tools(tmp_path)
        payload = tmp_path / "hello.bin"
        payload.write_bytes(hello)
        netpath.start_server(lab, tools, len(hello))
        before = netpath.queued_packets(lab)
        took, failed = netpath.latencies(lab, tools, payload, lab.hosts[0].v4, CONNECTIONS)
        queued = netpath.queued_packets(lab) - before
        assert failed == 0 and len(took) == CONNECTIONS
        assert queued == QUEUED_PER_CONNECTION * CONNECTIONS, f"{queued} packets queued for {CONNECTIONS} connections"
    finally:
        for proc in lab.procs[started:]:  # the floor and the server (the lab ends them too, at module end)
            lab_mod.stop(proc)
        del lab.procs[started:]
        firewall.remove(ns=lab.client)  # the next floor installs the rules afresh
