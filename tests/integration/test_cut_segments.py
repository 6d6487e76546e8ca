"""Segments longer than the queue copies (issue 10, class 2, found by a red-team pass), on the real
kernel: netguard in a namespace lab with each iptables backend and both families, the client's and
the registry's links raised to jumbo frames (9000 bytes, as on many cloud networks; loopback's 64 KiB
is the same case), so that one segment carries more than NetfilterQueue copies (~4 KB). A ClientHello
padded to 6.5 KB in one segment keeps its name past the copied part: the flow must get the fail
verdict, not wait for the server's answer and be judged by address. A first request whose body is
cut must not hide the next request on the kept-alive connection.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from harness import Runner, backends_here, daemon_with

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
JUMBO = 9000  # a jumbo-frame MTU (cloud VPCs use 9001)
PADDING = 6000  # hello padding: the hello's end (and a body's) lies past what the queue copies
# The links of the lab's client and registry, in their namespaces and the bridge's.
LINKS = (("client", "eth0"), ("registry", "eth0"), ("bridge", "c0"), ("bridge", "r0"), ("bridge", "br0"))

# A client that sends a padded ClientHello in one segment and says whether the server answered it.
BIG_HELLO = """
import json, os, socket, sys
from netguard.lab.lab import padded_client_hello
addr, name, family, padding = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
s.connect((addr, 443))
try:
    s.sendall(padded_client_hello(name, padding))
    answer = s.recv(4096)
    print(json.dumps({"result": "answered" if answer[:1] == b"\\x16" else "alert" if answer else "closed"}))
except OSError as e:
    print(json.dumps({"result": type(e).__name__}))
"""
# A client that sends, on one kept-alive plain HTTP connection, a POST whose head and body go in one
# segment, then a GET for another host; prints the responses' first lines.
KEEPALIVE = """
import json, os, socket, sys, time
addr, first, second, family, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))  # harness.scaled()
s.connect((addr, 80))
lines = []
try:
    s.sendall(f"POST /v2/ HTTP/1.1\\r\\nHost: {first}\\r\\nContent-Length: {size}\\r\\n\\r\\n".encode() + bytes(size))
    lines.append(s.recv(65536).split(b"\\r\\n", 1)[0].decode())
    s.sendall(f"GET /v2/ HTTP/1.1\\r\\nHost: {second}\\r\\n\\r\\n".encode())
    answer = s.recv(65536)
    lines.append(answer.split(b"\\r\\n", 1)[0].decode() if answer else "closed")
except OSError as e:
    lines.append(type(e).__name__)
print(json.dumps(lines))
"""


@pytest.fixture(scope="module")
def jumbo(lab: lab_mod.Lab) -> Iterator[None]:
    spaces = {"client": lab.client, "registry": lab.registry, "bridge": lab.bridge}
    for where, link in LINKS:
        netns.run(spaces[where], ["ip", "link", "set", link, "mtu", str(JUMBO)])
    yield
    for where, link in reversed(LINKS):
        netns.run(spaces[where], ["ip", "link", "set", link, "mtu", "1500"], check=False)


@pytest.fixture(scope="module", params=backends_here())
def daemon(lab: lab_mod.Lab, jumbo: None, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    with daemon_with(lab, tmp_path_factory.mktemp("cut"), request.param) as runner:
        yield runner


def run(lab: lab_mod.Lab, code: str, *args: str) -> object:
    r = lab.client_run([sys.executable, "-c", code, *args], timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("family", [4, 6])
def test_a_hello_longer_than_the_queue_copies_is_not_judged_by_address(lab: lab_mod.Lab, daemon: Runner,
                                                                       family: int) -> None:
    address = lab.address(BLOCKED, family)
    got = run(lab, BIG_HELLO, address, BLOCKED, str(family), str(PADDING))
    assert got == {"result": "ConnectionResetError"}, got
    events = [e for e in daemon.events() if e["dst"] == address]
    assert events and "not copied" in events[-1]["reason"], events[-1:]
    # The same hello that fits what the queue copies is read and judged by its name.
    assert run(lab, BIG_HELLO, lab.address(ALLOWED, family), ALLOWED, str(family), "2000") == {"result": "answered"}


@pytest.mark.parametrize("family", [4, 6])
def test_a_cut_body_does_not_hide_the_next_request(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    address = lab.address(ALLOWED, family)
    got = run(lab, KEEPALIVE, address, ALLOWED, BLOCKED, str(family), str(PADDING))
    assert got == ["HTTP/1.1 200 OK", "ConnectionResetError"], got
    assert run(lab, KEEPALIVE, address, ALLOWED, ALLOWED, str(family), str(PADDING)) == ["HTTP/1.1 200 OK"] * 2
