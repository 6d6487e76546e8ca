"""A slow client is not cut by netguard's own timers (issue 10, class 8): netguard run in a namespace
lab with the idle time after which it forgets a data-less flow cut to one second, and a real client
that sends the first part of a ClientHello, pauses for several such idle times, then the rest. The
connection goes through; before, a flow that had sent bytes got the fail verdict after that idle
time. A module of its own: one daemon per namespace."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from harness import Runner

from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED = "registry-1.docker.io"
IDLE = 1.0  # engine.core.FLOW_IDLE for this daemon (60 s in production)
PAUSE = 4 * IDLE + 1  # longer than the idle time and several of the daemon's expiry ticks
# Sends the first 100 bytes of a ClientHello, pauses, sends the rest; prints whether the server
# answered (a ServerHello) or what went wrong.
SLOW_CLIENT = """
import json, os, socket, sys, time
from netguard.lab.lab import python_client_hello
addr, name, family, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
hello = python_client_hello(name)
s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
s.connect((addr, 443))
try:
    s.sendall(hello[:100])
    time.sleep(pause)
    s.sendall(hello[100:])
    print(json.dumps({"result": "answered" if s.recv(4096) else "closed"}))
except OSError as e:
    print(json.dumps({"result": type(e).__name__}))
"""


@pytest.fixture(scope="module")
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    runner = Runner(lab, tmp_path_factory.mktemp("slow"),
                    prelude=f"import netguard.engine.core as core\ncore.FLOW_IDLE = {IDLE}").start()
    try:
        yield runner
    finally:
        assert runner.stop() == 0


@pytest.mark.parametrize("family", [4, 6])
def test_a_client_hello_in_two_parts_with_a_long_pause_goes_through(lab: lab_mod.Lab, daemon: Runner,
                                                                    family: int) -> None:
    r = lab.client_run([sys.executable, "-c", SLOW_CLIENT, lab.address(ALLOWED, family), ALLOWED, str(family),
                        str(PAUSE)], timeout=30)
    assert json.loads(r.stdout) == {"result": "answered"}, r.stdout + r.stderr
    assert not [e for e in daemon.events() if "idle" in e["reason"]]
