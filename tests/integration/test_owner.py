"""The block log names the local process and user of a blocked connection (real sockets, real
/proc, the daemon in a lab namespace), and names none for a connection it cannot trace to a socket."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from harness import Runner, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

BLOCKED = "ghcr.io"


def curl_argv(lab: lab_mod.Lab, family: int) -> list[str]:
    h = lab.host(BLOCKED)
    addr = h.v4 if family == 4 else h.v6
    # --insecure: nobody cannot read the lab's CA file, and the block comes before any certificate.
    return ["curl", "-sS", "-m", "5", "--insecure", f"-{family}", "--resolve", f"{BLOCKED}:443:{addr}",
            f"https://{BLOCKED}/"]


@pytest.mark.parametrize("family", [4, 6])
def test_block_log_names_process_and_user(lab: lab_mod.Lab, tmp_path: Path, family: int) -> None:
    runner = Runner(lab, tmp_path, name=f"owner{family}").start()
    try:
        as_root = lab.client_popen(curl_argv(lab, family))
        as_root.wait(timeout=scaled(15))
        # The daemon's /proc walks share a budget per wall-clock second (owner.WALK_BUDGET); on a
        # loaded machine the first walk can spend it. The second block comes in a second of its own.
        time.sleep(1.05 - time.time() % 1)
        as_nobody = lab.client_popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      *curl_argv(lab, family)])
        as_nobody.wait(timeout=scaled(15))
        assert as_root.returncode != 0 and as_nobody.returncode != 0
        events = runner.events()  # no waiting: a block is logged before the client sees its reset
        owners = [(e["host"], e.get("uid"), e.get("pid"), e.get("process")) for e in events]
        # setpriv execs curl: same pid, so both are named by the pid we started.
        assert owners == [(BLOCKED, 0, as_root.pid, "curl"), (BLOCKED, 65534, as_nobody.pid, "curl")], owners
    finally:
        runner.stop(signal.SIGTERM)


FINDER = """
import ipaddress, json, os, socket, sys
from netguard.engine import FlowKey
from netguard.daemon import owner

def key(proto, s):
    (la, lp, *_), (ra, rp, *_) = s.getsockname(), s.getpeername()
    return FlowKey(proto, ipaddress.ip_address(la).packed, lp, ipaddress.ip_address(ra).packed, rp)

finder, out = owner.OwnerFinder(), {}
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen()
    tcp = socket.create_connection(listener.getsockname()[:2])
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.connect((host, 443))
    # Each lookup in a second of its own: on a slow machine one walk can spend a whole second's budget.
    out[f"tcp{family}"] = finder.find(key(6, tcp), 100.0)
    out[f"udp{family}"] = finder.find(key(17, udp), 101.0)
    finder._walked = owner.WALK_BUDGET  # this second's budget used up
    out[f"spent{family}"] = finder.find(key(6, tcp), 101.5)
    out[f"next{family}"] = finder.find(key(6, tcp), 102.0)
    k = key(6, tcp)
    out[f"none{family}"] = finder.find(k._replace(sport=k.sport ^ 1), 103.0)
me = {"uid": os.getuid(), "pid": os.getpid(), "process": open("/proc/self/comm").read().strip()}
print(json.dumps({"me": me, **{k: None if v is None else v.record() for k, v in out.items()}}))
"""


def test_owner_finder_tcp_udp_both_families_and_the_walk_budget() -> None:
    with netns.scratch("owner") as ns:
        r = netns.run(ns, [sys.executable, "-c", FINDER], check=False)
        assert r.returncode == 0, r.stderr
        found = json.loads(r.stdout)
        for family in (socket.AF_INET, socket.AF_INET6):
            mine = found[f"tcp{family}"]
            assert mine == found["me"]  # the child found its own sockets
            assert found[f"udp{family}"] == mine
            assert found[f"spent{family}"] == {"uid": 0, "pid": None, "process": None}
            assert found[f"next{family}"] == mine
            assert found[f"none{family}"] is None
