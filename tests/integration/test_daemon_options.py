"""netguard run with the policy options that change what the kernel and the clients see: QUIC
Initials (default policy), block_action = "tls-alert", unknown_hosts = "deny", dns_block = false."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Runner, curl

from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED, UNKNOWN = "registry-1.docker.io", "ghcr.io", "www.example.test"
QUICSEND = str(Path(__file__).with_name("quicsend.py"))


@pytest.fixture
def runner(lab: lab_mod.Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runner]:
    r = Runner(lab, tmp_path, policy=getattr(request, "param", None)).start()
    try:
        yield r
    finally:
        assert r.stop() == 0


@pytest.mark.parametrize("family", [4, 6])
def test_quic_initial_split_over_two_datagrams(lab: lab_mod.Lab, runner: Runner, family: int) -> None:
    # Both to the allowed registry's address: only the ClientHello inside the Initials differs.
    def send(name: str) -> list[str]:
        r = lab.client_run([sys.executable, QUICSEND, lab.address(ALLOWED, family), name])
        return list(json.loads(r.stdout))

    # The second half alone decides nothing and is held (a server never sees part of a connection
    # netguard has not judged); the first half completes the ClientHello: allowed, both go on ...
    assert send(ALLOWED) == ["TimeoutError", "echo", "echo"]
    # ... blocked, both are stopped; later datagrams of the flow are stopped too.
    assert send(BLOCKED) == ["TimeoutError", "TimeoutError", "TimeoutError"]
    [event] = [e for e in runner.events() if e["source"] == "quic-sni"]
    assert event["host"] == BLOCKED and event["proto"] == "udp" and event["dst"] == lab.address(ALLOWED, family)


@pytest.mark.parametrize("runner", ['allow = ["dockerhub"]\nblock_action = "tls-alert"\n'], indirect=True)
@pytest.mark.parametrize("family", [4, 6])
def test_tls_alert_before_the_reset(lab: lab_mod.Lab, runner: Runner, family: int) -> None:
    _, code, out = curl(lab, BLOCKED, family)
    assert code == 35 and "alert access denied" in out, out
    r = lab.client_run(["openssl", "s_client", "-connect", f"[{lab.address(BLOCKED, family)}]:443"
                        if family == 6 else f"{lab.address(BLOCKED, family)}:443", "-servername", BLOCKED, "-brief"])
    assert r.returncode != 0 and "SSL alert number 49" in r.stderr, r.stderr
    assert curl(lab, ALLOWED, family).code == 0


@pytest.mark.parametrize("runner", ['allow = ["dockerhub"]\nunknown_hosts = "deny"\n'], indirect=True)
@pytest.mark.parametrize("family", [4, 6])
def test_unknown_hosts_deny(lab: lab_mod.Lab, runner: Runner, family: int) -> None:
    assert curl(lab, ALLOWED, family).code == 0
    _, code, out = curl(lab, UNKNOWN, family)
    assert code == 35 and "reset" in out.lower(), out
    events = [e for e in runner.events() if e["host"] == UNKNOWN and e["source"] == "sni"]
    assert events and events[-1]["rule"] == "unknown_hosts = deny"


@pytest.mark.parametrize("runner", ['allow = ["dockerhub"]\ndns_block = false\n'], indirect=True)
def test_dns_block_off_still_blocks_the_connection(lab: lab_mod.Lab, runner: Runner) -> None:
    r = lab.client_run(["dig", "+short", BLOCKED])
    assert r.stdout.split() == [lab.address(BLOCKED, 4)]
    r = lab.client_run(["curl", "-sS", "-m", "10", "-4", "--cacert", str(lab.ca_file), f"https://{BLOCKED}/"])
    assert r.returncode == 35 and "reset" in r.stderr.lower(), r.stderr
    sources = {e["source"] for e in runner.events() if e["host"] == BLOCKED}
    assert sources == {"sni"}  # the answer passed (not a block), the connection did not


CUSTOM = 'allow = ["dockerhub"]\nqueue_num = 12\nmark_mask = 0x0f000000\nmark_allowed = 0x01000000\n' \
         'mark_blocked = 0x02000000\n'


@pytest.mark.parametrize("runner", [CUSTOM], indirect=True)
def test_custom_queue_and_mark_bits(lab: lab_mod.Lab, runner: Runner) -> None:
    rules = "\n".join(lab.client_run(["iptables-save", "-t", "filter"]).stdout.splitlines())
    assert "--queue-num 12" in rules and "0x2000000/0xf000000" in rules and "7413" not in rules
    assert curl(lab, ALLOWED, 4).code == 0
    _, code, out = curl(lab, BLOCKED, 4)
    assert code == 35 and "reset" in out.lower(), out
    # The verdicts sit in the connection marks, in the configured bits.
    marks = lab.client_run(["conntrack", "-L", "-p", "tcp", "--dport", "443"]).stdout
    assert "mark=16777216" in marks and "mark=33554432" in marks, marks
