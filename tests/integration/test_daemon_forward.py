"""Traffic routed through the host (a container behind it) crosses FORWARD: its DNS answers and new
connections are judged like the host's own; and the iptables-legacy backend enforces the same."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FROM_PORT_53, Runner, curl, netguard_rules, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

FAST = scaled(1.0)  # seconds: a blocked client fails at once (a reset or an alert), not by a timeout

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"


@pytest.fixture(scope="module")
def container(lab: lab_mod.Lab) -> str:
    return lab_mod.add_container(lab)


@pytest.fixture
def runner(lab: lab_mod.Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runner]:
    args = tuple(getattr(request, "param", ()))
    if args == ("--policy", "TLS_ALERT"):
        policy = tmp_path / "alert.toml"
        policy.write_text('allow = ["dockerhub"]\nblock_action = "tls-alert"\n')
        args = ("--policy", str(policy))
    r = Runner(lab, tmp_path, args=args).start()
    try:
        yield r
    finally:
        assert r.stop() == 0


@pytest.mark.parametrize("family", [4, 6])
def test_container_traffic_is_judged_in_forward(lab: lab_mod.Lab, container: str, runner: Runner,
                                                family: int) -> None:
    _, code, out = curl(lab, ALLOWED, family, ns=container, pin=False)
    assert code == 0 and out.strip() == f"hello from {ALLOWED}", out
    took, code, out = curl(lab, BLOCKED, family, ns=container)
    assert code == 35 and "reset" in out.lower() and took < FAST, out
    r = netns.run(container, ["dig", "+time=2", "+tries=1", BLOCKED, "A" if family == 4 else "AAAA"])
    assert "status: NXDOMAIN" in r.stdout and "EDE: 15" in r.stdout, r.stdout
    src = "10.78.0.2" if family == 4 else "fd78::2"
    assert any(e["source"] == "sni" and e["src"] == src and e["host"] == BLOCKED for e in runner.events())
    # A connection from the container's port 53 crosses FORWARD's DNS chain too: it must not pass as DNS.
    target = lab.host("www.example.test")
    r = netns.run(container, [sys.executable, "-c", FROM_PORT_53, target.v4 if family == 4 else target.v6, BLOCKED,
                              str(family)], check=False)
    assert r.stdout.strip() == "ConnectionResetError", r.stdout + r.stderr
    # The container's resolver is the lab DNS over IPv4, whatever it asks for.
    assert any(e["source"] == "dns-answer" and e["src"] == "10.78.0.2" and e["host"] == BLOCKED
               for e in runner.events())


@pytest.mark.parametrize("runner", [("--backend", "iptables-legacy")], indirect=True)
@pytest.mark.parametrize("family", [4, 6])
def test_legacy_backend(lab: lab_mod.Lab, runner: Runner, family: int) -> None:
    assert netguard_rules(lab) and all(line.startswith("legacy") for line in netguard_rules(lab))
    assert "backend iptables-legacy" in runner.stderr()
    assert curl(lab, ALLOWED, family, ns=lab.client).code == 0
    took, code, out = curl(lab, BLOCKED, family, ns=lab.client)
    assert code == 35 and took < FAST, out


def test_legacy_rules_removed_on_sigterm(lab: lab_mod.Lab, tmp_path: Path) -> None:
    r = Runner(lab, tmp_path, args=("--backend", "iptables-legacy")).start()
    assert netguard_rules(lab)
    assert r.stop(signal.SIGTERM) == 0
    assert netguard_rules(lab) == []


@pytest.mark.parametrize("runner", [("--policy", "TLS_ALERT")], indirect=True)
def test_masqueraded_container_gets_the_tls_alert(lab: lab_mod.Lab, container: str, runner: Runner) -> None:
    # The alert is addressed to the container; the NATed connection's conntrack entry knows the host's
    # address in its reply direction, so the alert must skip conntrack (raw table) to get through.
    nat = ["POSTROUTING", "-s", "10.78.0.0/24", "-o", "eth0", "-j", "MASQUERADE"]
    netns.run(lab.client, ["iptables", "-t", "nat", "-A", *nat])
    try:
        took, code, out = curl(lab, BLOCKED, 4, ns=container)
        assert code == 35 and "alert access denied" in out and took < FAST, out
        assert curl(lab, ALLOWED, 4, ns=container).code == 0
    finally:
        netns.run(lab.client, ["iptables", "-t", "nat", "-D", *nat])
