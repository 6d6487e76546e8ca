"""QUIC on the real kernel: netguard run in a namespace lab with each iptables backend, a real QUIC
server and client (aioquic, tests/integration/quicpeer.py) on a host of the lab's bridge, and
hand-made datagrams to a UDP echo. Blocked names fail on port 443 and elsewhere, in v1 and v2, with
the ClientHello in one datagram or two; allowed ones pass; a second connection on the same socket
(same 5-tuple, new connection IDs) to a blocked name is stopped after an allowed first one; a
version netguard cannot read, coalesced Initials, a GSO batch and a second ClientHello for one
connection; the traffic of an allowed connection stays in the kernel; a container's QUIC (FORWARD)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Runner, daemon_with

from netguard.daemon import firewall, netns
from netguard.lab import lab as lab_mod
from netguard.lab.lab import python_client_hello

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "wire"))
from wirecorpus import crypto_frame, protect_initial

pytestmark = pytest.mark.root

ALLOWED, BLOCKED, UNKNOWN = "registry-1.docker.io", "ghcr.io", "www.example.test"
PEER = str(Path(__file__).with_name("quicpeer.py"))
HOST = {4: lab_mod.NET4 + "120", 6: lab_mod.NET6 + "120"}
QUIC_PORTS = (443, 4433)
ECHO_PORT = 4434  # a plain UDP echo on the QUIC host: a hand-made datagram that reaches it comes back
READY_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def container(lab: lab_mod.Lab) -> Iterator[str]:
    """Starts the QUIC host (a namespace on the lab's bridge: server on QUIC_PORTS, echo on
    ECHO_PORT) and yields a container namespace behind the client (its traffic crosses the client's
    FORWARD chain) that reaches it too."""
    ns = lab_mod.add_host(lab, HOST[4], HOST[6])
    container = lab_mod.add_container(lab)
    netns.run(ns, ["ip", "route", "add", f"{lab_mod.CONTAINER_NET4}0/24", "via", lab.client_v4])
    netns.run(ns, ["ip", "-6", "route", "add", f"{lab_mod.CONTAINER_NET6}/64", "via", lab.client_v6])
    cert, key = lab.workdir / "server.crt", lab.workdir / "server.key"
    argv = [sys.executable, PEER, "serve", str(cert), str(key), *map(str, QUIC_PORTS), "--echo", str(ECHO_PORT)]
    proc = subprocess.Popen(netns.exec_argv(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lab.procs.append(proc)  # type: ignore[arg-type]
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
        yield container
    finally:
        lab_mod.stop(proc)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=firewall.IPTABLES_BACKENDS)
def daemon(lab: lab_mod.Lab, container: str, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    with daemon_with(lab, tmp_path_factory.mktemp("quic"), request.param) as runner:
        yield runner


def connect(lab: lab_mod.Lab, *names: str, port: int = 443, family: int = 4, version: int = 1, big: bool = False,
            ns: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, PEER, "connect", HOST[family], str(port), *names, "--version", str(version),
            "--cafile", str(lab.ca_file), *(["--big"] if big else [])]
    r = netns.run(ns or lab.client, argv, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def raw(lab: lab_mod.Lab, *datagrams: bytes, port: int = ECHO_PORT, address: str | None = None,
        gso: int = 0) -> list[str]:
    argv = [sys.executable, PEER, "raw", address or HOST[4], str(port), *(d.hex() for d in datagrams)]
    r = lab.client_run([*argv, *(["--gso", str(gso)] if gso else [])], timeout=60)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def blocks(runner: Runner, host: str | None = None) -> list[dict[str, Any]]:
    return [e for e in runner.events() if e["verdict"] == "block" and (host is None or e["host"] == host)]


def connmark(lab: lab_mod.Lab, family: int, sport: int) -> int:
    """netguard's bits of the connection mark of the client's UDP flow from sport."""
    r = netns.run(lab.client, ["conntrack", "-L", "-f", "ipv4" if family == 4 else "ipv6", "-p", "udp",
                               "--sport", str(sport)], check=False)
    [line] = [line for line in r.stdout.splitlines() if "mark=" in line]
    return int(line.split("mark=")[1].split()[0]) & 0x700000


def hello(name: str) -> bytes:
    return python_client_hello(name)[5:]


@pytest.mark.parametrize(("port", "version", "big", "family"), [
    (443, 1, False, 4), (4433, 1, True, 4), (443, 2, True, 6), (4433, 2, False, 4), (4433, 1, True, 6)])
def test_a_real_client_to_a_blocked_name_fails_and_to_an_allowed_one_passes(
        lab: lab_mod.Lab, daemon: Runner, port: int, version: int, big: bool, family: int) -> None:
    ok = connect(lab, ALLOWED, port=port, family=family, version=version, big=big)
    assert ok["connections"] == [{"name": ALLOWED, "handshake": True, "echo": True}]
    # The verdict is in the connection mark (with a held first datagram too: its conntrack entry is
    # the one the kernel keeps).
    assert connmark(lab, family, ok["sport"]) == 0x100000
    before = len(blocks(daemon, BLOCKED))
    stopped = connect(lab, BLOCKED, port=port, family=family, version=version, big=big)
    assert stopped["connections"] == [{"name": BLOCKED, "handshake": False, "echo": False}]
    event = blocks(daemon, BLOCKED)[before]
    assert (event["source"], event["proto"], event["dport"], event["sport"]) == ("quic-sni", "udp", port,
                                                                                stopped["sport"])


@pytest.mark.parametrize("big", [False, True])
def test_a_second_connection_on_the_same_socket_is_judged(lab: lab_mod.Lab, daemon: Runner, big: bool) -> None:
    # Two allowed names: both connections work, and so does the first one afterwards.
    both = connect(lab, ALLOWED, UNKNOWN, port=4433, big=big)
    assert [c["echo"] for c in both["connections"]] == [True, True] and both["first_again"] is True
    # An allowed first connection, then one to a blocked name from the same socket: it is stopped,
    # and the whole 5-tuple with it.
    out = connect(lab, ALLOWED, BLOCKED, port=4433, big=big)
    assert [(c["name"], c["handshake"]) for c in out["connections"]] == [(ALLOWED, True), (BLOCKED, False)]
    assert out["connections"][0]["echo"] is True and out["first_again"] is False
    [event] = [e for e in blocks(daemon, BLOCKED) if e["sport"] == out["sport"]]
    assert event["source"] == "quic-sni" and event["dport"] == 4433


def queued(lab: lab_mod.Lab, backend: str) -> int:
    """Packets the UDP/QUIC queue rules sent to the queue so far (both families)."""
    total = 0
    for tool in ("iptables", "ip6tables"):
        out = netns.run(lab.client, [f"{tool}-{backend.removeprefix('iptables-')}-save", "-c", "-t", "filter"]).stdout
        total += sum(int(line[1:].split(":", 1)[0]) for line in out.splitlines()
                     if line.startswith("[") and "NFQUEUE" in line
                     and ("-A NETGUARD-UDP" in line or "-A NETGUARD-QUIC" in line))
    return total


def test_an_allowed_connection_leaves_the_queue_after_its_handshake(lab: lab_mod.Lab, daemon: Runner) -> None:
    backend = daemon.args[-1]
    before = queued(lab, backend)
    one = connect(lab, ALLOWED, port=4433)
    after_one = queued(lab, backend) - before
    # Three echoes on three connections cost three times one: the streams (short-header packets)
    # never reach the queue, only each connection's long-header packets do.
    three = connect(lab, ALLOWED, ALLOWED, ALLOWED, port=4433)
    after_three = queued(lab, backend) - before - after_one
    assert one["connections"][0]["echo"] and all(c["echo"] for c in three["connections"])
    assert 1 <= after_one <= 6 and after_three <= 3 * after_one


def test_a_version_netguard_cannot_read(lab: lab_mod.Lab, daemon: Runner) -> None:
    message = hello(BLOCKED)
    draft = protect_initial(b"D" * 8, crypto_frame(0, message))
    draft = draft[:1] + (0xFF00001D).to_bytes(4, "big") + draft[5:]
    v1 = protect_initial(b"E" * 8, crypto_frame(0, hello(ALLOWED)))
    registry = lab.address(ALLOWED, 4)  # the lab registry's UDP echo on 443
    # On 443: the fail verdict for that datagram (dropped); the socket may go on with v1.
    assert raw(lab, draft, v1, port=443, address=registry) == ["TimeoutError", "echo"]
    assert any("0xff00001d" in e["reason"] for e in blocks(daemon))
    # Elsewhere an unknown version is not taken for QUIC (ESP-in-UDP and others look the same) ...
    assert raw(lab, draft) == ["echo"]
    # ... except on a flow already judged by its QUIC Initials: there a long header of any version
    # may open a connection netguard cannot read.
    assert raw(lab, v1, draft) == ["echo", "TimeoutError"]


def test_hand_made_attacks(lab: lab_mod.Lab, daemon: Runner) -> None:
    allowed, blocked = hello(ALLOWED), hello(BLOCKED)
    # Coalesced: an Initial to an allowed name, then a second connection's to a blocked one.
    coalesced = protect_initial(b"A" * 8, crypto_frame(0, allowed), pad_to=0) + \
        protect_initial(b"B" * 8, crypto_frame(0, blocked), pad_to=0)
    # (Blocked with its first datagram, the flow's conntrack entry is never confirmed, so the next
    # datagram is queued and blocked again rather than refused by the kernel at once.)
    outcomes = raw(lab, coalesced + bytes(1200 - len(coalesced) % 1200), coalesced)
    assert outcomes[0] == "TimeoutError" and outcomes[1] in ("TimeoutError", "PermissionError")
    # The rest of a ClientHello under another connection ID, protected with the first one's keys
    # (what a server reads as the same connection): held, then blocked with it.
    first = protect_initial(b"C" * 8, crypto_frame(0, blocked[:100]))
    rest = protect_initial(b"S" * 8, crypto_frame(100, blocked[100:]), key_dcid=b"C" * 8)
    assert raw(lab, first, rest) == ["TimeoutError", "TimeoutError"]
    # A connection judged allowed, then a second ClientHello for the same connection ID.
    decoy = protect_initial(b"D" * 8, crypto_frame(0, allowed))
    real = protect_initial(b"D" * 8, crypto_frame(0, blocked), pn=1)
    assert raw(lab, decoy, real) == ["echo", "TimeoutError"]
    assert [e for e in blocks(daemon) if e["rule"] == "overlap"]
    # Split, second half first: held until the first half decides, then both go (allowed).
    head, tail = (protect_initial(b"F" * 8, crypto_frame(a, allowed[a:b]), pn=a)
                  for a, b in ((0, 120), (120, len(allowed))))
    assert raw(lab, tail, head) == ["TimeoutError", "echo"]


@pytest.mark.parametrize("family", [4, 6])
def test_a_gso_batch_cannot_hide_an_initial(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # One send, two 1200-byte datagrams (UDP_SEGMENT): u32 sees only the first, a short header.
    junk = b"\x41" + bytes(1199)
    initial = protect_initial(b"G" * 8, crypto_frame(0, hello(BLOCKED)))
    assert len(initial) == 1200
    assert raw(lab, junk, initial, gso=1200, address=HOST[family]) == ["echo", "TimeoutError"]
    # The same two datagrams sent one by one: the same outcome.
    assert raw(lab, junk, initial, address=HOST[family])[1] != "echo"


def test_a_containers_quic_is_judged_on_the_forward_path(lab: lab_mod.Lab, daemon: Runner, container: str) -> None:
    ok = connect(lab, ALLOWED, port=4433, big=True, ns=container)
    assert ok["connections"] == [{"name": ALLOWED, "handshake": True, "echo": True}]
    stopped = connect(lab, BLOCKED, port=443, big=True, ns=container)
    assert stopped["connections"][0]["handshake"] is False
    assert [e for e in blocks(daemon, BLOCKED) if e["src"] == f"{lab_mod.CONTAINER_NET4}2"]
