"""The benchmark's NFQUEUE floor (scripts/bench_sections/nfqueue_floor.c) stands where netguard stands:
with netguard's rules it passes an allowed connection and queues exactly the packets netguard queues
(the SYN, the server's SYN-ACK and the first data packet), so "netguard / floor" compares two consumers of one queue."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from netguard.lab import lab as lab_mod

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
# Imported by name: the section imports tests.integration.harness, which mypy already knows as `harness`.
netpath: Any = importlib.import_module("bench_sections.netpath")

pytestmark = pytest.mark.root


def test_floor_passes_connections_and_queues_what_netguard_queues(lab: lab_mod.Lab, tmp_path: Path) -> None:
    started = len(lab.procs)
    netpath.start_floor(lab, netpath.build_floor(tmp_path))
    hello = lab_mod.python_client_hello("registry-1.docker.io")
    try:
        tools = netpath.build_tools(tmp_path)
        payload = tmp_path / "hello.bin"
        payload.write_bytes(hello)
        netpath.start_server(lab, tools, len(hello))
        before = netpath.queued_packets(lab)
        took, failed = netpath.latencies(lab, tools, payload, lab.hosts[0].v4, 20)
        queued = netpath.queued_packets(lab) - before
        assert failed == 0 and len(took) == 20
        assert queued == 3 * 20, f"{queued} packets queued for 20 connections"
    finally:
        for proc in lab.procs[started:]:  # the floor and the server (the lab ends them too, at module end)
            lab_mod.stop(proc)
