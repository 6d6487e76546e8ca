"""netguard run's life cycle in a namespace lab: rules removed on SIGTERM, stale rules of a killed
run replaced by exactly one set, and what the kernel does while no daemon listens (fail_mode
closed: nothing new gets through; open: traffic flows)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import (
    NETGUARD,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    Runner,
    curl,
    default_backend,
    filter_rules,
    netguard_rules,
    nft_table,
    scaled,
)

from netguard.daemon import firewall
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
OPEN_POLICY = 'name = "open"\nallow = ["dockerhub"]\nfail_mode = "open"\n'


def all_rules(lab: lab_mod.Lab) -> list[str]:
    return [*(f"{b}{f} {line}" for b in ("nft", "legacy") for f in (4, 6) for line in filter_rules(lab, f, b)),
            *(f"nft-native{f} {line}" for f in (4, 6) for line in nft_table(lab, f))]


def rules_remove(lab: lab_mod.Lab) -> str:
    r = lab.client_run([NETGUARD, "rules", "remove"])
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_sigterm_leaves_no_rules_and_kill9_restart_leaves_one_set(lab: lab_mod.Lab, tmp_path: Path) -> None:
    before = all_rules(lab)
    first = Runner(lab, tmp_path, name="first").start()
    one_set = netguard_rules(lab)
    # Queue rules in both families, with the backend doctor chose (iptables-nft's chains or nft's tables).
    assert any("NFQUEUE" in line or "queue" in line.split() for line in one_set), one_set
    assert any(line.startswith(("nft6 ", "nft-native6 ")) for line in one_set), one_set
    assert first.stop(signal.SIGTERM) == 0
    assert all_rules(lab) == before
    assert lab.client_run([NETGUARD, "rules", "show"]).returncode == 1

    killed = Runner(lab, tmp_path, name="killed").start()
    killed.stop(signal.SIGKILL)
    assert netguard_rules(lab) == one_set  # a crash leaves the rules behind
    restarted = Runner(lab, tmp_path, name="restarted").start()
    try:
        assert "replaced stale netguard rules in one step" in restarted.stderr()
        assert netguard_rules(lab) == one_set
        shown = lab.client_run([NETGUARD, "rules", "show"])
        assert shown.returncode == 0 and "NETGUARD-FLOW" in shown.stdout
        _, code, out = curl(lab, ALLOWED, 4)
        assert code == 0, out
    finally:
        assert restarted.stop(signal.SIGINT) == 0
    assert all_rules(lab) == before


@pytest.mark.parametrize("family", [4, 6])
def test_fail_closed_while_the_daemon_is_dead(lab: lab_mod.Lab, tmp_path: Path, family: int) -> None:
    runner = Runner(lab, tmp_path).start()
    runner.stop(signal.SIGKILL)
    try:
        _, code, out = curl(lab, BLOCKED, family, timeout=2)
        assert code == 28, out  # timed out: the SYN waits in a queue nobody reads
        _, code, out = curl(lab, ALLOWED, family, timeout=2)
        assert code == 28, out
        r = lab.client_run(["dig", "+time=1", "+tries=1", f"{ALLOWED}"])
        assert "timed out" in r.stdout, r.stdout  # DNS answers are queued too
    finally:
        assert "removed" in rules_remove(lab)
    _, code, out = curl(lab, BLOCKED, family)
    assert code == 0, out  # no netguard, no enforcement: the lab server answers


@pytest.mark.parametrize("family", [4, 6])
def test_fail_open_while_the_daemon_is_dead(lab: lab_mod.Lab, tmp_path: Path, family: int) -> None:
    runner = Runner(lab, tmp_path, policy=OPEN_POLICY).start()
    try:
        _, code, out = curl(lab, BLOCKED, family)
        assert code != 0 and "reset" in out.lower(), out  # enforcing while alive
    finally:
        runner.stop(signal.SIGKILL)
    try:
        assert netguard_rules(lab)
        for name in (ALLOWED, BLOCKED):
            _, code, out = curl(lab, name, family, timeout=5)
            # A flow decided "blocked" before the crash stays blocked in the connection mark; a new
            # one passes the queue (--queue-bypass) and reaches the server.
            assert code == 0 and out.strip() == f"hello from {name}", out
        r = lab.client_run(["dig", "+short", f"+time={round(scaled(1))}", "+tries=1", ALLOWED])
        assert r.stdout.split() == [lab.host(ALLOWED).v4]
    finally:
        rules_remove(lab)


def test_run_refuses_a_bad_policy(lab: lab_mod.Lab, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('allow = ["dockerhub"]\nfail_mode = "sometimes"\n')
    r = lab.client_run([NETGUARD, "run", "--policy", str(bad)])
    assert r.returncode == 2 and "bad.toml" in r.stderr, r.stderr
    assert netguard_rules(lab) == []


XTABLES_LOCK = "/run/xtables.lock"  # iptables-legacy's lock: one file, whatever the network namespace


def hold_xtables_lock(seconds: float) -> subprocess.Popen[bytes]:
    """flock(1) holding the lock, as dockerd does while it writes its rules at boot; returns once held."""
    holder = subprocess.Popen(["flock", "-o", XTABLES_LOCK, "sh", "-c", f"echo held; sleep {seconds}"],
                              stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def test_start_and_stop_wait_for_the_xtables_lock(lab: lab_mod.Lab, tmp_path: Path) -> None:
    # Not scaled: what matters is that it stays below the daemon's own wait.
    held = firewall.START_LOCK_WAIT / 2
    holder = hold_xtables_lock(held)
    try:
        start = time.monotonic()
        runner = Runner(lab, tmp_path, args=("--backend", "iptables-legacy")).start()
        assert time.monotonic() - start >= held * 0.9, "the lock was not held while netguard started"
    finally:
        holder.wait()
    try:
        _, code, out = curl(lab, BLOCKED, 4)
        assert code == 35 and "reset" in out.lower(), out
    finally:
        # The stop waits for it: not scaled (the daemon's wait is not), and within STOP_TIMEOUT.
        holder = hold_xtables_lock(firewall.START_LOCK_WAIT / 4)
        try:
            assert runner.stop(signal.SIGTERM) == 0, runner.stderr()
        finally:
            holder.wait()
    assert netguard_rules(lab) == []


def test_a_lock_held_past_the_wait_is_named_and_not_taken_for_a_kernel_without_u32(lab: lab_mod.Lab,
                                                                                   tmp_path: Path) -> None:
    holder = hold_xtables_lock(2 * firewall.START_LOCK_WAIT + scaled(10))
    try:
        runner = Runner(lab, tmp_path, args=("--backend", "iptables-legacy")).start(wait=False)
        assert runner.proc is not None
        # One wait for the rules; a second where stale rules are left to remove on the way out.
        assert runner.proc.wait(timeout=2 * firewall.START_LOCK_WAIT + scaled(8)) == 2, runner.stderr()
    finally:
        holder.kill()
        holder.wait()
    err = runner.stderr()
    assert "another program held the xtables lock" in err and "Traceback" not in err, err
    assert "u32" not in err and "IPv4 only" not in err, err  # no fallback drawn from a busy lock
    assert netguard_rules(lab) == []


def test_a_closed_block_log_does_not_stop_enforcement(lab: lab_mod.Lab, tmp_path: Path) -> None:
    err = tmp_path / "err"
    # Buffered stdout, as under systemd or a shell: the exit status must not depend on it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with err.open("wb") as e:
        proc = lab.client_popen([NETGUARD, "run"], stdout=subprocess.PIPE, stderr=e, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "enforcing" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "enforcing" in err.read_text(), err.read_text()
        assert proc.stdout is not None
        proc.stdout.close()  # whoever read the log went away
        for _ in range(2):
            _, code, out = curl(lab, BLOCKED, 4)
            assert code == 35 and "reset" in out.lower(), out
        assert curl(lab, ALLOWED, 4).code == 0
        assert proc.poll() is None and "cannot write the block log" in err.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0
    assert netguard_rules(lab) == []


CONNECT = """
import os, socket, sys
T = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)  # harness.scaled(), in the client
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(5 * T)
try:
    s.connect((sys.argv[1], 443))
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


@pytest.mark.parametrize("family", [4, 6])
def test_rules_after_netguards_still_apply_to_queued_packets(lab: lab_mod.Lab, tmp_path: Path, family: int) -> None:
    # An operator's rule placed after netguard's jump: netguard queues the SYN first, and its
    # verdict must not let the packet skip this rule (a bare accept would).
    target = lab.host("www.example.test")
    addr = target.v4 if family == 4 else target.v6
    tool = "iptables" if family == 4 else "ip6tables"
    rule = ["OUTPUT", "-p", "tcp", "--syn", "-d", addr, "--dport", "443", "-j", "REJECT", "--reject-with", "tcp-reset"]
    runner = Runner(lab, tmp_path).start()
    lab.client_run([tool, "-A", *rule])
    try:
        r = lab.client_run([sys.executable, "-c", CONNECT, addr])
        assert r.stdout.strip() == "ConnectionRefusedError", r.stdout + r.stderr
        other = lab.host(ALLOWED)
        r = lab.client_run([sys.executable, "-c", CONNECT, other.v4 if family == 4 else other.v6])
        assert r.stdout.strip() == "connected", r.stdout + r.stderr
    finally:
        lab.client_run([tool, "-D", *rule])
        assert runner.stop() == 0


@pytest.mark.skipif(default_backend() == "nft", reason="this kernel has the nft queue statement: nft is the "
                    "default backend here, run by the other tests")
def test_backend_nft_where_the_kernel_has_no_nft_queue_refuses_cleanly(lab: lab_mod.Lab, tmp_path: Path) -> None:
    """`--backend nft` overrides doctor; where the kernel refuses the set (this CI machine has xt
    NFQUEUE but no nft queue statement) run says so with the kernel's words, exits 2 and leaves no
    rules behind."""
    before = all_rules(lab)
    runner = Runner(lab, tmp_path, name="nft-here", args=("--backend", "nft")).start(wait=False)
    assert runner.proc is not None
    code = runner.proc.wait(timeout=READY_TIMEOUT)
    assert code == 2, runner.stderr()
    assert "the kernel refused netguard's rules (nft (ip netguard): Error:" in runner.stderr()
    assert "queue" in runner.stderr() and "Traceback" not in runner.stderr()
    assert all_rules(lab) == before and nft_table(lab, 4) == [] and nft_table(lab, 6) == []
