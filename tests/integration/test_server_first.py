"""A server that speaks first (SMTP, SSH banners) to a client that never sends a byte: netguard run in
a namespace lab with unknown_hosts = "deny". The server's payload on an undecided flow is queued
(NETGUARD-REPLY), and the engine judges the flow by address on its first banner instead of letting
it run undecided; the blocked banner reaches the client as a reset. The client's ACKs decide nothing
and stay in the kernel. A module of its own: one daemon per namespace, and test_empty_segments keeps
one running per module."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Runner, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

BANNER_PORT = 2525
# Sends a banner line every 20 ms to each connection (a server that speaks first, like SMTP).
BANNER_SERVER = """
import socket, sys, threading, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
def talk(c):
    try:
        for _ in range(250):
            c.sendall(b"220 banner.example.test ESMTP\\r\\n")
            time.sleep(0.02)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=talk, args=(c,), daemon=True).start()
"""
# Connects and only reads (its kernel ACKs the banners), for at most 3 s; prints bytes and reset (the
# reset may come before connect() returns: the first banner arrives as soon as the handshake ends).
BANNER_CLIENT = """
import json, socket, sys, time
got, reset, end = 0, False, time.monotonic() + 3
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    while time.monotonic() < end:
        data = c.recv(4096)
        if not data:
            break
        got += len(data)
except ConnectionResetError:
    reset = True
except TimeoutError:
    pass
print(json.dumps({"bytes": got, "reset": reset}))
"""


@pytest.fixture
def banner_server(lab: lab_mod.Lab) -> Iterator[None]:
    proc = subprocess.Popen(netns.exec_argv(lab.registry, [sys.executable, "-c", BANNER_SERVER, str(BANNER_PORT)]),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield
    finally:
        lab_mod.stop(proc)


@pytest.mark.parametrize("unknown, blocked", [("deny", True), ("allow", False)])
@pytest.mark.parametrize("where", ["host", "container"])
@pytest.mark.parametrize("family", [4, 6])
def test_a_server_that_speaks_first_is_judged_by_address(lab: lab_mod.Lab, tmp_path: Path, banner_server: None,
                                                         family: int, where: str, unknown: str,
                                                         blocked: bool) -> None:
    # The client never sends a byte; the server's first banner reaches the engine (from INPUT, or
    # FORWARD for a container behind the host), which judges the address: unknown here, so denied
    # (the banner becomes a reset: no banner byte arrives) or allowed (every banner arrives).
    if where == "container" and not lab.containers:
        lab_mod.add_container(lab)
    ns = lab.containers[0] if where == "container" else None
    runner = Runner(lab, tmp_path, policy=f'allow = ["dockerhub"]\nunknown_hosts = "{unknown}"\n').start()
    try:
        host = lab.host("www.example.test")
        address = host.v4 if family == 4 else host.v6
        argv = [sys.executable, "-c", BANNER_CLIENT, address, str(BANNER_PORT)]
        limit = scaled(10)
        r = lab.client_run(argv, timeout=limit) if ns is None else netns.run(ns, argv, check=False, timeout=limit)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        if blocked:
            assert got["reset"] and got["bytes"] == 0, got
        else:
            assert not got["reset"] and got["bytes"] > 20 * 32, got
        events = [e for e in runner.events() if e["dst"] == address and e["dport"] == BANNER_PORT]
        if blocked:
            assert events and events[-1]["source"] == "address" and events[-1]["rule"] == "unknown_hosts = deny"
        else:
            assert not events  # an allowed flow is not logged
    finally:
        assert runner.stop() == 0
