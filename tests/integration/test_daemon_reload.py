"""Policy reload in a running netguard: SIGHUP and a changed file take effect for new connections
within a second, cut open connections to a registry that became blocked, and a bad policy is
rejected with the old one kept in force."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import LONG_CLIENT, Runner, curl, default_backend, nft_table, scaled, until

from netguard.daemon import nft
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
HUB_ONLY = 'name = "hub only"\nallow = ["dockerhub"]\n'
GHCR_ONLY = 'name = "ghcr only"\nallow = ["ghcr"]\n'
WITHIN = scaled(1.0)  # a reload takes effect within this (the loop checks the file every 0.25 s)



@pytest.mark.parametrize("family", [4, 6])
def test_reload_by_sighup_and_by_file_change(lab: lab_mod.Lab, tmp_path: Path, family: int) -> None:
    runner = Runner(lab, tmp_path, policy=HUB_ONLY).start()
    assert runner.policy_path is not None
    try:
        assert curl(lab, ALLOWED, family, timeout=5).code == 0
        assert curl(lab, BLOCKED, family, timeout=5).code == 35
        h = lab.host(ALLOWED)
        log = tmp_path / "long.out"
        with log.open("wb") as out:
            lab.client_popen([sys.executable, "-c", LONG_CLIENT, ALLOWED, h.v4 if family == 4 else h.v6,
                              str(lab.ca_file)], stdout=out, stderr=out)
        until(lambda: "open" in log.read_text(), scaled(10))

        runner.policy_path.write_text(GHCR_ONLY)
        sent = time.time()
        runner.send_signal(signal.SIGHUP)
        until(lambda: curl(lab, ALLOWED, family, timeout=5).code == 35, WITHIN)
        until(lambda: "cut" in log.read_text(), WITHIN)
        words = log.read_text().split()
        assert float(words[words.index("cut") + 2]) >= sent, log.read_text()
        # A reset; depending on when it lands, Python's ssl reports it as ECONNRESET or as an abrupt
        # end of stream. The lab server never closes a keep-alive connection itself.
        assert words[words.index("cut") + 1] in ("ConnectionResetError", "ConnectionError", "SSLEOFError"), \
            log.read_text()
        assert float(words[words.index("cut") + 2]) - sent < WITHIN
        assert curl(lab, BLOCKED, family, timeout=5).code == 0
        cuts = [e for e in runner.events() if e.get("action") == "cut"]
        assert cuts and cuts[-1]["host"] == ALLOWED and cuts[-1]["registry"] == "dockerhub"

        # A bad policy is rejected; the one in force stays.
        runner.policy_path.write_text('allow = ["dockerhub"]\nunknown_hosts = "maybe"\n')
        runner.send_signal(signal.SIGHUP)
        runner.wait_for("rejected", timeout=WITHIN)
        assert "ghcr only" in runner.stderr().splitlines()[-1]
        assert curl(lab, BLOCKED, family, timeout=5).code == 0
        assert curl(lab, ALLOWED, family, timeout=5).code == 35

        # A changed file is picked up without a signal.
        runner.policy_path.write_text(HUB_ONLY)
        until(lambda: curl(lab, ALLOWED, family, timeout=5).code == 0, WITHIN + scaled(0.5))
        assert curl(lab, BLOCKED, family, timeout=5).code == 35
    finally:
        assert runner.stop() == 0


def test_reload_to_fail_open_changes_the_rules_and_the_queue(lab: lab_mod.Lab, tmp_path: Path) -> None:
    runner = Runner(lab, tmp_path, policy=HUB_ONLY).start()
    assert runner.policy_path is not None
    try:
        if default_backend() == "nft":
            saved = "\n".join(nft_table(lab, 4))
            assert {nft.action(line) for line in nft_table(lab, 4) if "queue" in line.split()} == {"queue 7413"}
            assert "ct original bytes > 131072 reject" in saved
        else:
            saved = lab.client_run(["iptables-save", "-t", "filter"]).stdout
            assert "NFQUEUE" in saved and "--queue-bypass" not in saved
        runner.policy_path.write_text(HUB_ONLY + 'fail_mode = "open"\n')
        runner.send_signal(signal.SIGHUP)
        runner.wait_for("reloaded (SIGHUP)", timeout=WITHIN)
        if default_backend() == "nft":
            # The same queue rules as the iptables set below, in nft's words (the three QUIC version
            # tests are one set lookup, the two port-53 rules one): every one bypasses, and open mode
            # rejects nothing past the byte window.
            lines = nft_table(lab, 4)
            saved = "\n".join(lines)
            queues = [nft.action(line) for line in lines if "queue" in line.split()]
            assert queues == ["queue 7413 bypass"] * 12, lines
            assert "ct original bytes > 131072" not in saved
        else:
            saved = lab.client_run(["iptables-save", "-t", "filter"]).stdout
            # Every queue rule bypasses: DNS (UDP, TCP; from port 53 and by header from other ports), TCP
            # in NETGUARD-FLOW and NETGUARD-EMPTY, followed flows in NETGUARD-FOLLOW, UDP (NETGUARD-UDP's
            # GSO guard, NETGUARD-QUIC's four), server packets in NETGUARD-REPLY (every one: the ACK
            # that confirms an allow), the client data of unconfirmed TLS flows in NETGUARD-UNCONFIRMED;
            # and open mode rejects nothing past the byte window.
            assert saved.count("--queue-bypass") == saved.count("-j NFQUEUE") == 14
            assert "--connbytes 131073" not in saved
        # One set after the reload, not two.
        assert saved.count("-A OUTPUT -j NETGUARD-FLOW") == 1 or (
            default_backend() == "nft" and saved.count("chain NETGUARD-OUTPUT {") == 1)
        assert curl(lab, BLOCKED, 4, timeout=5).code == 35  # still enforcing
    finally:
        runner.stop(signal.SIGKILL)
    try:
        assert curl(lab, BLOCKED, 4, timeout=5).code == 0  # open: with the daemon gone, traffic flows
    finally:
        assert lab.client_run([sys.executable, "-c", "from netguard.cli import main; main()", "rules", "remove"]
                              ).returncode == 0


def test_a_reload_while_another_program_holds_the_xtables_lock(lab: lab_mod.Lab, tmp_path: Path) -> None:
    """iptables-legacy: a reload that needs new rules while the lock is held (dockerd writing its own)
    gives up after firewall.LOCK_WAIT and keeps the old policy and rules; the packet loop is not held
    up meanwhile (before, the restore waited for the lock for ever, with the daemon's loop)."""
    runner = Runner(lab, tmp_path, policy=HUB_ONLY, args=("--backend", "iptables-legacy")).start()
    assert runner.policy_path is not None
    before = lab.client_run(["iptables-legacy-save", "-t", "filter"]).stdout
    holder = subprocess.Popen(["flock", "-o", "/run/xtables.lock", "sh", "-c", f"echo held; sleep {scaled(30)}"],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        runner.policy_path.write_text(HUB_ONLY + 'fail_mode = "open"\n')  # other rules: queue bypass
        runner.send_signal(signal.SIGHUP)
        runner.wait_for("new rules failed", timeout=scaled(5))
        assert "the old ones kept" in runner.stderr(), runner.stderr()
        _, code, out = curl(lab, BLOCKED, 4, timeout=5)  # the loop still gives verdicts
        assert code == 35 and "reset" in out.lower(), out
    finally:
        holder.kill()
        holder.wait()
    try:
        assert lab.client_run(["iptables-legacy-save", "-t", "filter"]).stdout.count("--queue-bypass") == 0
        assert _rule_lines(lab.client_run(["iptables-legacy-save", "-t", "filter"]).stdout) == _rule_lines(before)
    finally:
        assert runner.stop() == 0


def _rule_lines(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if line.startswith(("-A", ":NETGUARD"))]
