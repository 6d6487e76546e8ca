"""`netguard status` against a real daemon in a namespace lab: what it reports, who sees the recent
blocks, that the answer belongs to the namespace, and that a second daemon there refuses to start."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from harness import NETGUARD, Runner, curl, default_backend, netguard_rules, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

BLOCKED = "ghcr.io"
# Connects to the status socket with the system interpreter (the checkout may not be readable by nobody).
RAW_QUERY = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(b"\\0netguard-status")
sys.stdout.write(s.makefile("rb").read().decode())
"""


def status(lab: lab_mod.Lab, *args: str) -> tuple[int, str]:
    r = lab.client_run([NETGUARD, "status", *args])
    return r.returncode, r.stdout + r.stderr


def test_status_of_a_running_daemon(lab: lab_mod.Lab, tmp_path: Path) -> None:
    code, out = status(lab)
    assert code == 3 and "not running" in out, out
    runner = Runner(lab, tmp_path, name="status").start()
    try:
        assert curl(lab, BLOCKED, 4, timeout=5).code != 0

        code, out = status(lab, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert runner.proc is not None and doc["running"] and doc["pid"] == runner.proc.pid
        assert doc["policy"] == "default policy [embedded]" and doc["fail_mode"] == "closed"
        assert doc["empty_segments"] == "kernel"  # this kernel has xt u32
        assert doc["counts"]["blocked"] >= 1 and doc["counts"]["packets"] >= 1
        hosts = [b["host"] for b in doc["recent_blocks"]]
        assert hosts[-1] == BLOCKED and doc["recent_blocks"][-1]["dst"] == lab.address(BLOCKED, 4)

        code, out = status(lab)
        assert code == 0 and f"pid {runner.proc.pid}" in out and BLOCKED in out and "ghcr is not in allow" in out

        # Another user sees the counters, not other people's connections.
        r = lab.client_run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                            "-c", RAW_QUERY])
        other = json.loads(r.stdout)
        assert other["counts"]["blocked"] == doc["counts"]["blocked"] and "recent_blocks" not in other

        # The status socket belongs to this network namespace.
        elsewhere = netns.run(lab.dns, [NETGUARD, "status"], check=False)
        assert elsewhere.returncode == 3, elsewhere.stdout + elsewhere.stderr

        # A second daemon in the same namespace refuses before touching the first one's rules.
        rules = netguard_rules(lab)
        second = lab.client_run([NETGUARD, "run"], timeout=scaled(30))
        refusal = f"already running in this network namespace (pid {runner.proc.pid})"
        assert second.returncode == 2 and refusal in second.stderr, second.stderr
        assert netguard_rules(lab) == rules
        # So does `rules remove`: it would end enforcement behind the daemon's back.
        removal = lab.client_run([NETGUARD, "rules", "remove"])
        assert removal.returncode == 2 and f"(pid {runner.proc.pid})" in removal.stderr, removal.stderr
        assert netguard_rules(lab) == rules
        code, out = status(lab, "--json")
        assert code == 0 and json.loads(out)["pid"] == runner.proc.pid
    finally:
        runner.stop(signal.SIGKILL)
    code, out = status(lab)
    assert code == 3 and "but its rules are installed" in out, out
    assert lab.client_run([NETGUARD, "rules", "remove"]).returncode == 0
    code, out = status(lab)
    assert code == 3 and "rules are installed" not in out, out


# Opens FLOWS UDP flows to ADDR:443 from the client namespace, one datagram each: every one is the
# first of a new flow, so netguard's rules queue it.
UDP_FLOWS = """
import socket, sys
addr, flows = sys.argv[1], int(sys.argv[2])
for _ in range(flows):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\\xc0\\x00\\x00\\x00\\x01" + b"x" * 59, (addr, 443))  # a QUIC v1 long header: queued
"""
QUEUE_OVERFLOW = 6000  # datagrams: more than the queue holds (nfqueue.QUEUE_MAXLEN = 4096)


def test_status_checks_the_kernel(lab: lab_mod.Lab, tmp_path: Path) -> None:
    """Exit 0 with every check named; a stopped daemon (it holds its socket but answers nothing):
    exit 1, "does not answer"; packets dropped at the full queue meanwhile: exit 1, "queue drops"."""
    import sys
    import time

    from netguard.daemon.nfqueue import QUEUE_MAXLEN

    assert QUEUE_OVERFLOW > QUEUE_MAXLEN
    runner = Runner(lab, tmp_path, name="checks").start()
    try:
        code, out = status(lab)
        assert code == 0, out
        for check in ("daemon: answers", f"rules: installed as expected in IPv4 and IPv6 ({default_backend()})",
                      "queue: queue 7413 bound by the daemon", "fail-open: off, as fail_mode closed says",
                      "queue drops: queue_dropped 0 (queue full), user_dropped 0"):
            assert f"ok         {check}" in out, out
        code, out = status(lab, "--json")
        doc = json.loads(out)
        assert code == 0 and doc["ok"] and doc["exit"] == 0 and all(c["ok"] for c in doc["checks"])

        runner.send_signal(signal.SIGSTOP)
        try:
            r = lab.client_run([sys.executable, "-c", UDP_FLOWS, lab.address("www.example.test", 4),
                                str(QUEUE_OVERFLOW)], timeout=60)
            assert r.returncode == 0, r.stderr
            code, out = status(lab)
            assert code == 1 and "does not answer" in out and f"pid {runner.proc.pid}" in out, out  # type: ignore[union-attr]
        finally:
            runner.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while (code := status(lab)[0]) not in (0, 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        code, out = status(lab)
        assert code == 1, out
        drops = next(line for line in out.splitlines() if "queue drops:" in line)
        assert drops.lstrip().startswith("FAIL") and "the last within 300 s" in drops, out
        dropped = int(drops.split("queue_dropped ")[1].split()[0])
        assert dropped >= QUEUE_OVERFLOW - QUEUE_MAXLEN - 100, drops  # (a few may be judged before the stop)
        assert "ok         rules:" in out and "ok         queue: queue 7413" in out, out
    finally:
        runner.stop()
