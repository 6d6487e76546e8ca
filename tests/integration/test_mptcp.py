"""Multipath TCP on the real kernel: the lab's server listens with IPPROTO_MPTCP (as Go 1.24 and
later do by default) and the client connects with it. Without netguard the two speak Multipath TCP,
whose server reads what the subflows' mappings put together, not one connection's stream; with
netguard every SYN reaches the server without the MP_CAPABLE option, so the connection is plain
TCP (the server's kernel counts no MP_CAPABLE SYN), allowed names still connect and blocked ones
are reset."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Runner, backends_here, daemon_with, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod
from netguard.lab.server import MPTCP_PORT

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"

# One HTTPS request over an MPTCP socket; prints the first line of the answer, or the error's class.
CLIENT = """
import socket, ssl, sys
host, addr, port, ca, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
raw = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
raw.settimeout(timeout)
try:
    raw.connect((addr, port))
    with ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET / HTTP/1.1\\r\\nHost: " + host.encode() + b"\\r\\n\\r\\n")
        body = b""
        while b"hello from" not in body:
            chunk = tls.recv(4096)
            if not chunk:
                break
            body += chunk
        print(body.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip())
except OSError as e:
    print(type(e).__name__)
"""


def mptcp_get(lab: lab_mod.Lab, name: str, family: int) -> str:
    r = lab.client_run([sys.executable, "-c", CLIENT, name, lab.address(name, family), str(MPTCP_PORT),
                        str(lab.ca_file), str(scaled(5))], timeout=scaled(30))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def mp_capable_syns(lab: lab_mod.Lab) -> int:
    """SYNs with MP_CAPABLE the registry namespace's kernel has taken (its MIB counter)."""
    lines = [line.split() for line in netns.run(lab.registry, ["cat", "/proc/net/netstat"]).stdout.splitlines()
             if line.startswith("MPTcpExt:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["MPCapableSYNRX"])


@pytest.fixture(scope="module", params=backends_here())
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    with daemon_with(lab, tmp_path_factory.mktemp("mptcp"), request.param) as runner:
        yield runner


@pytest.mark.parametrize("family", [4, 6])
def test_without_netguard_the_lab_speaks_multipath_tcp(lab: lab_mod.Lab, family: int) -> None:
    # The control: the client's and the server's kernels negotiate MPTCP; the test below means something.
    before = mp_capable_syns(lab)
    assert mptcp_get(lab, BLOCKED, family) == f"hello from {BLOCKED}"
    assert mp_capable_syns(lab) == before + 1


@pytest.mark.parametrize("family", [4, 6])
def test_with_netguard_the_connection_is_plain_tcp_and_judged(lab: lab_mod.Lab, daemon: Runner, family: int,
                                                               tmp_path: Path) -> None:
    before = mp_capable_syns(lab)
    assert mptcp_get(lab, ALLOWED, family) == f"hello from {ALLOWED}"
    assert mptcp_get(lab, BLOCKED, family) == "ConnectionResetError"
    assert mp_capable_syns(lab) == before  # no SYN reached the server with the option
    blocked = [e for e in daemon.events() if e.get("host") == BLOCKED]
    assert blocked and blocked[-1]["dport"] == MPTCP_PORT, daemon.events()[-3:]
