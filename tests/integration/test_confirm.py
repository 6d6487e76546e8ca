"""A TLS flow allowed by its ClientHello becomes final in the kernel, at the server's first TLS record
(NETGUARD-CONFIRM), so an ordinary TLS connection queues its SYN, the server's SYN-ACK and its hello,
nothing more: netguard run in a namespace lab with each backend this kernel has, curl against the
lab's TLS server, the rule counters (iptables) and the connection mark read after each connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Runner, backends_here, daemon_with, scaled

from netguard.daemon import firewall
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED = "registry-1.docker.io"


@pytest.fixture(scope="module", params=backends_here())
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    with daemon_with(lab, tmp_path_factory.mktemp("confirm"), request.param) as runner:
        yield runner


def queued(lab: lab_mod.Lab, runner: Runner, family: int) -> dict[str, int] | None:
    """Packets each netguard chain's NFQUEUE rules sent to the queue so far, and (as "CONFIRM") the
    packets NETGUARD-CONFIRM's record test matched; None for the nft backend (its rules count nothing)."""
    if runner.backend == "nft":
        return None
    tool = f"{'iptables' if family == 4 else 'ip6tables'}-{str(runner.backend).removeprefix('iptables-')}-save"
    out = lab.client_run([tool, "-c", "-t", "filter"]).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if not line.startswith("[") or " -A NETGUARD" not in line:
            continue
        packets = int(line[1:].split(":", 1)[0])
        chain = line.split(" -A ", 1)[1].split()[0]
        if "NFQUEUE" in line:
            counts[chain] = counts.get(chain, 0) + packets
        elif chain == firewall.CHAIN_CONFIRM and "-m u32" in line:
            counts["CONFIRM"] = counts.get("CONFIRM", 0) + packets
    return counts


def mark_of(lab: lab_mod.Lab, family: int, sport: int) -> int:
    r = lab.client_run(["conntrack", "-L", "-f", "ipv4" if family == 4 else "ipv6", "-p", "tcp", "--sport", str(sport)])
    marks = [int(w.removeprefix("mark=")) for w in r.stdout.split() if w.startswith("mark=")]
    assert len(marks) == 1, r.stdout + r.stderr
    return marks[0]


@pytest.mark.parametrize("family", [4, 6])
def test_a_tls_connection_queues_three_packets_and_the_kernel_makes_it_allowed(lab: lab_mod.Lab, daemon: Runner,
                                                                                family: int) -> None:
    address = lab.address(ALLOWED, family)
    before = queued(lab, daemon, family)
    # A port of its own per backend and family: the last one's may wait in TIME_WAIT.
    sport = 45000 + 10 * firewall.BACKENDS.index(str(daemon.backend)) + family
    # --resolve: no DNS answer to count; a fixed local port to find the connection's entry; two
    # requests, so that client data follows the server's first record on the same connection.
    r = lab.client_run(["curl", "-sS", "-m", str(scaled(10)), f"-{family}", "--local-port", str(sport),
                        "--cacert", str(lab.ca_file), "--resolve", f"{ALLOWED}:443:{address}",
                        f"https://{ALLOWED}/", f"https://{ALLOWED}/v2/"], timeout=scaled(30))
    assert r.returncode == 0, r.stderr
    after = queued(lab, daemon, family)
    if before is not None and after is not None:
        grown = {chain: after.get(chain, 0) - before.get(chain, 0) for chain in after}
        # The SYN and the hello (client side), the SYN-ACK (server side); the server's record matched
        # once, and then nothing of the flow met a queue rule again.
        assert {c: n for c, n in grown.items() if n} == {firewall.CHAIN_FLOW: 2, firewall.CHAIN_REPLY: 1,
                                                          "CONFIRM": 1}
    # Allowed in the kernel: the flow's server packets were never queued (NETGUARD-REPLY takes only
    # undecided flows'), so only the record test can have set it; the flow's mark was "unconfirmed".
    marks = firewall.Options().marks
    assert mark_of(lab, family, sport) & marks.mask == marks.allowed
    assert [e for e in daemon.events() if e["host"] == ALLOWED and not e["allowed"]] == []

