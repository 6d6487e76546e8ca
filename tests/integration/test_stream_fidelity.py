"""The bytes netguard judges are the bytes the server's TCP stack delivers (issue 10, classes 2 and 4),
on the real kernel: netguard run in a namespace lab with each iptables backend and both families.
Real clients (Python sockets) send an urgent byte before or inside a real ClientHello, and keep an
undecided connection alive with keepalive probes; raw-socket attacks (decoy.py) send a decoy the
lab's Linux server drops, or a trick on the stream, before the real hello. The decoys carry an
allowed name and the real hello a blocked one: the connection must end blocked. The same decoys
the other way round (a blocked decoy, then an allowed hello) must connect: ignored, not "odd, so
blocked"."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import NETGUARD, Runner, backends_here, curl, daemon_for_raw_clients

from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
DECOY = str(Path(__file__).with_name("decoy.py"))
# Decoys the lab server drops (or tricks it ignores), each followed by the real hello.
# Seconds an idle client lets TCP keepalive probes run (TCP_KEEPIDLE = TCP_KEEPINTVL = 1 s: six).
KEEPALIVE_WAIT = 6.5
DECOYS = ("badsum", "md5", "noack", "futack", "oldack", "pawsold", "syn2", "tfo", "spoof", "farseq")

# A TLS client that first sends one urgent byte (MSG_OOB), or a raw ClientHello with an urgent byte
# inside it; prints what came of it.
OOB_CLIENT = """
import json, os, socket, ssl, sys
from netguard.lab.lab import python_client_hello
addr, name, family, at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
s.connect((addr, 443))
try:
    if at < 0:
        s.send(b"!", socket.MSG_OOB)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        print(json.dumps({"result": "connected", "version": ctx.wrap_socket(s, server_hostname=name).version()}))
    else:
        hello = python_client_hello(name)
        s.send(hello[:at])
        s.send(b"!", socket.MSG_OOB)
        s.send(hello[at:])
        print(json.dumps({"result": "answered" if s.recv(4096) else "closed"}))
except OSError as e:
    print(json.dumps({"result": type(e).__name__}))
"""
# A TLS client that connects, lets TCP keepalive probes (and the server's answers) run for a while
# before it says anything, then sends its ClientHello.
KEEPALIVE_CLIENT = """
import json, os, socket, ssl, sys, time
addr, name, family, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.settimeout(10 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
s.connect((addr, 443))
time.sleep(wait)
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
try:
    print(json.dumps({"result": "connected", "version": ctx.wrap_socket(s, server_hostname=name).version()}))
except OSError as e:
    print(json.dumps({"result": type(e).__name__}))
"""


@pytest.fixture(scope="module", params=backends_here())
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    with daemon_for_raw_clients(lab, tmp_path_factory.mktemp("fidelity"), request.param) as runner:
        yield runner


def client(lab: lab_mod.Lab, code: str, *args: str) -> dict[str, str]:
    r = lab.client_run([sys.executable, "-c", code, *args], timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def attacks(lab: lab_mod.Lab, daemon: Runner, family: int, *specs: str) -> dict[str, dict[str, object]]:
    backend = daemon.args[daemon.args.index("--backend") + 1]
    src = lab.client_v4 if family == 4 else lab.client_v6
    r = lab.client_run([sys.executable, DECOY, backend, src, lab.address(ALLOWED, family), *specs], timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert not any("error" in o for o in out), out
    return {f"{o['attack']}:{i}": o for i, o in enumerate(out)}


def dropped(lab: lab_mod.Lab) -> dict[str, int]:
    """The daemon's count of client segments it dropped as their server would, by reason."""
    r = lab.client_run([NETGUARD, "status", "--json"])
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout)["counts"]["dropped"])


def stopped(result: dict[str, object]) -> bool:
    """The server took no ClientHello (no ServerHello came back) and the client was reset or refused."""
    return result["server_bytes"] == 0 and bool(result["rst"] or result["rejected"])


@pytest.mark.parametrize("family", [4, 6])
def test_real_clients_checksums_are_complete_in_the_queue(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # Locally sent packets (OUTPUT) and a container's (FORWARD, through a veth) carry checksums
    # the NIC would fill in (CHECKSUM_PARTIAL); NFQUEUE without the GSO flag completes them, so
    # checking them drops nothing of a real client's.
    if not lab.containers:
        lab_mod.add_container(lab)
    before = dropped(lab)
    assert curl(lab, ALLOWED, family).code == 0
    assert curl(lab, ALLOWED, family, ns=lab.containers[0]).code == 0
    assert curl(lab, BLOCKED, family, ns=lab.containers[0]).code == 35
    assert dropped(lab) == before


@pytest.mark.parametrize("family", [4, 6])
def test_an_urgent_byte_before_the_client_hello(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # send(b"!", MSG_OOB), then a real TLS handshake: the server's application never reads the
    # urgent byte, so neither does netguard; the hello's name decides.
    address = lab.address(BLOCKED, family)
    assert client(lab, OOB_CLIENT, address, BLOCKED, str(family), "-1")["result"] == "ConnectionResetError"
    events = [e for e in daemon.events() if e["dst"] == address]
    assert events and events[-1]["source"] == "sni" and events[-1]["host"] == BLOCKED
    ok = client(lab, OOB_CLIENT, lab.address(ALLOWED, family), ALLOWED, str(family), "-1")
    assert ok["result"] == "connected", ok


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("at", [1, 60, 200])
def test_an_urgent_byte_inside_the_client_hello(lab: lab_mod.Lab, daemon: Runner, family: int, at: int) -> None:
    blocked = client(lab, OOB_CLIENT, lab.address(BLOCKED, family), BLOCKED, str(family), str(at))
    assert blocked["result"] == "ConnectionResetError", blocked
    allowed = client(lab, OOB_CLIENT, lab.address(ALLOWED, family), ALLOWED, str(family), str(at))
    assert allowed["result"] == "answered", allowed  # the server read a whole hello: the byte was taken out


@pytest.mark.parametrize("family", [4, 6])
def test_decoys_the_server_drops_end_blocked(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    baseline = attacks(lab, daemon, family, f"none:{ALLOWED}:{ALLOWED}", f"none:{ALLOWED}:{BLOCKED}")
    assert baseline["none:0"]["server_bytes"] and stopped(baseline["none:1"]), baseline
    before = dropped(lab)
    got = attacks(lab, daemon, family, *(f"{a}:{ALLOWED}:{BLOCKED}" for a in DECOYS))
    after = dropped(lab)
    assert {k: stopped(v) for k, v in got.items()} == {f"{a}:{i}": True for i, a in enumerate(DECOYS)}, got
    # Conntrack finds these out of window or malformed: they are not even queued (no connection
    # entry, so no connmark rule matches), pass, and the server drops them.
    assert [got[k]["decoy_queued"] for k in ("futack:3", "noack:2", "farseq:9")] == [0, 0, 0], got
    # These reach the engine, which drops them as the server would.
    assert all(got[k]["decoy_queued"] == 1 for k in ("badsum:0", "md5:1", "oldack:4", "pawsold:5")), got
    assert {k: after[k] - before.get(k, 0) for k in after} == {
        "bad TCP checksum": 1, "a TCP MD5 or AO signature the server does not expect": 1,
        "an acknowledgment of bytes before the server's first": 1,
        "a timestamp older than one the server has (PAWS)": 1}


@pytest.mark.parametrize("family", [4])
def test_dropped_decoys_are_ignored_not_blocked(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # A blocked decoy the server drops, then an allowed hello: the connection goes through (one
    # family: what is asked here is what netguard reads, not how the packets travel).
    decoys = [a for a in DECOYS if a not in ("syn2", "spoof", "farseq")]
    got = attacks(lab, daemon, family, *(f"{a}:{BLOCKED}:{ALLOWED}" for a in decoys))
    assert {k: int(str(v["server_bytes"])) > 100 for k, v in got.items()} == {
        f"{a}:{i}": True for i, a in enumerate(decoys)}, got


@pytest.mark.parametrize("family", [4, 6])
def test_floods_end_in_the_fail_verdict(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # Retransmitted copies count against the flow's budget; data-less segments that stay in the
    # kernel still count in its byte window, past which closed mode rejects. Either way the
    # allowed hello that follows never reaches the server undecided.
    got = attacks(lab, daemon, family, f"flood:{ALLOWED}:{ALLOWED}", f"ackflood:{ALLOWED}:{BLOCKED}")
    assert stopped(got["flood:0"]) and stopped(got["ackflood:1"]), got
    limits = [e for e in daemon.events() if e["rule"] == "fail_mode = closed" and "bytes of packets" in e["reason"]]
    assert limits, daemon.events()[-3:]


@pytest.mark.parametrize("family", [4, 6])
def test_keepalive_probes_do_not_make_a_flow_judged_by_address(lab: lab_mod.Lab, daemon: Runner,
                                                                family: int) -> None:
    # Probes and the server's answers to them are no server data: the flow waits for its hello,
    # whose name decides (the address is unknown here: judged by address it would be allowed).
    # Six probes, one a second (before, the fourth one queued made the flow judged by address).
    address = lab.address(BLOCKED, family)
    got = client(lab, KEEPALIVE_CLIENT, address, BLOCKED, str(family), str(KEEPALIVE_WAIT))
    assert got["result"] == "ConnectionResetError", got
    events = [e for e in daemon.events() if e["dst"] == address]
    assert events and events[-1]["source"] == "sni"
    allowed = client(lab, KEEPALIVE_CLIENT, lab.address(ALLOWED, family), ALLOWED, str(family), "2.5")
    assert allowed["result"] == "connected", allowed
