"""NFQA_CFG_F_FAIL_OPEN, set by netguard's own nfnetlink message (NetfilterQueue does not expose
it): with the flag, packets that find the queue full are accepted; without it they are dropped.
Checked in a scratch namespace with a queue of length 1 that nobody reads."""

from __future__ import annotations

import sys

import pytest
from harness import scaled

from netguard.daemon import netns

pytestmark = pytest.mark.root

SCRIPT = """
import os, socket, subprocess, sys
from netfilterqueue import NetfilterQueue
from netguard.daemon.nfqueue import set_fail_open
q = NetfilterQueue()
q.bind(99, lambda p: None, max_len=1)
if sys.argv[1] == "open":
    set_fail_open(q.get_fd(), 99)
subprocess.run(["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5555", "-j", "NFQUEUE", "--queue-num", "99"],
               check=True)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 5555))
rx.settimeout(0.5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(4):
    tx.sendto(b"x", ("127.0.0.1", 5555))
got = 0
try:
    while True:
        rx.recv(10)
        got += 1
except TimeoutError:
    pass
print(got)
"""


@pytest.mark.parametrize("mode, replies", [("open", 3), ("closed", 0)])
def test_fail_open_flag(mode: str, replies: int) -> None:
    with netns.scratch("nfq") as ns:
        r = netns.run(ns, [sys.executable, "-c", SCRIPT, mode], check=False, timeout=scaled(60))
        assert r.returncode == 0, r.stderr
        # The first datagram waits in the queue (length 1) forever; the next three find it full.
        assert int(r.stdout.strip()) == replies
