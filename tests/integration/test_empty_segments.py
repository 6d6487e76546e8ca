"""Data-less TCP segments stay in the kernel, data (and an urgent pointer) never does: netguard run in
a namespace lab, with each iptables backend and both families, hand-made segments (segments.py) and
the rule counters read after each. The same steps against the fallback rule set (no xt u32) show what
the test tells apart."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Runner, daemon_for_raw_clients, scaled

from netguard.daemon import firewall, netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
SEGMENTS = str(Path(__file__).with_name("segments.py"))
RAWHELLO = str(Path(__file__).with_name("rawhello.py"))


@pytest.fixture(scope="module", params=firewall.IPTABLES_BACKENDS)
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    backend = request.param
    with daemon_for_raw_clients(lab, tmp_path_factory.mktemp("empty"), backend) as runner:
        yield runner


def backend_of(runner: Runner) -> firewall.Backend:
    backend = runner.backend
    assert backend in firewall.BACKENDS
    return backend


def steps(lab: lab_mod.Lab, runner: Runner, family: int, *spec: str) -> list[tuple[str, int, int]]:
    src = lab.client_v4 if family == 4 else lab.client_v6
    host = lab.host(ALLOWED)
    r = lab.client_run([sys.executable, SEGMENTS, backend_of(runner), src, host.v4 if family == 4 else host.v6,
                        *spec], timeout=scaled(30))
    assert r.returncode == 0, r.stderr
    return [(str(s), int(q), int(k)) for s, q, k in json.loads(r.stdout)]


@pytest.mark.parametrize("family", [4, 6])
def test_pure_acks_and_fins_stay_in_the_kernel_data_is_queued(lab: lab_mod.Lab, daemon: Runner,
                                                              family: int) -> None:
    assert "data-less TCP segments stay in the kernel" in daemon.stderr()
    # (step, queued, skipped): the SYN and every segment with bytes go to the daemon, whatever the
    # TCP header length; a segment with 4 bytes and offset 5 has the IP length of a pure ACK with
    # offset 6. Pure ACKs of any header length stay in the kernel.
    got = steps(lab, daemon, family, "S", "A5", "A8", "A15", "D1/5", "D2/8", "D3/15", "D4/5")
    assert got == [("S", 1, 0), ("A5", 0, 1), ("A8", 0, 1), ("A15", 0, 1), ("D1/5", 1, 0), ("D2/8", 1, 0),
                   ("D3/15", 1, 0), ("D4/5", 1, 0)]
    assert steps(lab, daemon, family, "S", "A5", "F") == [("S", 1, 0), ("A5", 0, 1), ("F", 0, 1)]


@pytest.mark.parametrize("family", [4, 6])
def test_acks_stay_in_the_kernel_after_the_server_spoke_too(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # Data-less client segments decide nothing whatever the server did (its own payload is what
    # makes netguard judge a flow by address), so they never need the queue; URG ones do (an urgent
    # pointer changes which bytes the server's application reads).
    got = steps(lab, daemon, family, "S", "A8", "D1/5", "W", "A8", "F")
    assert got == [("S", 1, 0), ("A8", 0, 1), ("D1/5", 1, 0), ("W", 0, 0), ("A8", 0, 1), ("F", 0, 1)]
    assert steps(lab, daemon, family, "S", "A5", "U") == [("S", 1, 0), ("A5", 0, 1), ("U", 1, 0)]


# A daemon on a kernel without the xt u32 match: its u32 tests replaced by one the tool cannot parse
# (as in test_apply_preferred_falls_back_when_the_kernel_refuses_u32), so it falls back to the rule
# set that queues every segment and keeps that set in place. (Swapping the set in behind a running
# daemon's back does not work: its self-healing puts its own set back within a second.)
NO_U32 = ("import sys; from netguard.daemon import firewall; "
          "firewall.empty_segment_tests = lambda family: ['no-such-test']; "
          "from netguard.cli import main; main(sys.argv[1:])")


@pytest.mark.parametrize("family", [4, 6])
def test_without_u32_every_segment_is_queued(lab: lab_mod.Lab, daemon: Runner, family: int,
                                             tmp_path: Path) -> None:
    backend = backend_of(daemon)
    started = daemon.stderr().count("enforcing")
    daemon.stop()  # one daemon per namespace
    fallback = Runner(lab, tmp_path, name="no-u32", args=("--backend", backend),
                      command=(sys.executable, "-c", NO_U32))
    try:
        fallback.start()
        assert "every TCP segment of an undecided or followed flow is queued" in fallback.stderr()
        got = steps(lab, fallback, family, "S", "A5", "D1/5")
    finally:
        fallback.stop()
        daemon.start(wait=False)
        daemon.wait_for("enforcing", count=started + 1)
    assert got == [("S", 1, 0), ("A5", 1, 0), ("D1/5", 1, 0)]


@pytest.mark.parametrize("family", [4, 6])
def test_client_hello_in_one_byte_segments(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    src = lab.client_v4 if family == 4 else lab.client_v6
    host = lab.host(ALLOWED)
    addr = host.v4 if family == 4 else host.v6

    def send(name: str) -> dict[str, object]:
        r = lab.client_run([sys.executable, RAWHELLO, src, addr, name, "1", "shuffle"], timeout=scaled(60))
        return dict(json.loads(r.stdout))

    ok = send(ALLOWED)
    assert ok["pieces"] == ok["hello_len"] and int(str(ok["server_bytes"])) > 100 and not ok["rst"], ok
    bad = send(BLOCKED)
    assert bad["server_bytes"] == 0 and bad["rst"], bad


@pytest.mark.parametrize("backend", firewall.IPTABLES_BACKENDS)
def test_apply_preferred_falls_back_when_the_kernel_refuses_u32(backend: firewall.Backend,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with netns.scratch("empty") as ns:
        opts, why = firewall.apply_preferred(backend, firewall.Options(), ns=ns)
        assert opts.skip_empty and why is None
        for family in firewall.FAMILIES:
            lines = firewall.installed(backend, family, ns)
            exact = [line for line in lines if line.startswith("-A NETGUARD-EMPTY") and "-m u32" in line]
            assert len(exact) == len(firewall.TCP_DATA_OFFSETS), lines
        # A u32 test the tool cannot parse stands in for a kernel without the match.
        monkeypatch.setattr(firewall, "empty_segment_tests", lambda family: ["no-such-test"])
        opts, why = firewall.apply_preferred(backend, firewall.Options(), ns=ns)
        assert not opts.skip_empty and why is not None and "restore" in why
        for family in firewall.FAMILIES:
            lines = firewall.installed(backend, family, ns)
            assert any("NFQUEUE" in line for line in lines) and not any("-m u32" in line for line in lines)

