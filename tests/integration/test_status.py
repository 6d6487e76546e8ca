"""`netguard status` against a real daemon in a namespace lab: what it reports, who sees the recent
blocks, that the answer belongs to the namespace, and that a second daemon there refuses to start."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from harness import NETGUARD, Runner, curl, netguard_rules, scaled

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
