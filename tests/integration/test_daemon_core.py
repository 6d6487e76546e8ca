"""netguard run in a namespace lab, default policy: real clients (curl, openssl s_client, Python,
dig, a raw segment sender) to an allowed registry (registry-1.docker.io), a blocked one (ghcr.io),
a CNAME alias of the blocked one (dl.allowed.test), over IPv4 and IPv6."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FROM_PORT_53, Runner, curl, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED, ALIAS = "registry-1.docker.io", "ghcr.io", "dl.allowed.test"
FAST = scaled(1.0)  # seconds: a blocked client must fail faster than this (a reset, not a timeout)
RAWHELLO = str(Path(__file__).with_name("rawhello.py"))


@pytest.fixture(scope="module")
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    runner = Runner(lab, tmp_path_factory.mktemp("core")).start()
    try:
        yield runner
    finally:
        runner.stop()


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def timed(lab: lab_mod.Lab, argv: list[str], timeout: float = 20) -> tuple[float, int, str]:
    start = time.monotonic()
    r = lab.client_run(argv, timeout=scaled(timeout))
    return time.monotonic() - start, r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("family", [4, 6])
def test_curl_allowed_and_blocked(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    _, code, out = curl(lab, ALLOWED, family)
    assert code == 0, out
    assert out.strip() == f"hello from {ALLOWED}"
    took, code, out = curl(lab, BLOCKED, family)
    assert code != 0 and "reset" in out.lower(), out
    assert took < FAST
    blocks = [e for e in daemon.events() if e["host"] == BLOCKED and e["source"] == "sni"
              and e["dst"] == lab.address(BLOCKED, family)]
    assert blocks and blocks[-1]["registry"] == "ghcr" and blocks[-1]["verdict"] == "block"


@pytest.mark.parametrize("family", [4, 6])
def test_curl_by_name_through_dns(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    took, code, out = timed(lab, ["curl", "-sS", "-m", f"{scaled(10):g}", f"-{family}", "--cacert", str(lab.ca_file),
                                  f"https://{ALLOWED}/"])
    assert code == 0 and out.strip() == f"hello from {ALLOWED}", out
    took, code, out = timed(lab, ["curl", "-sS", "-m", f"{scaled(10):g}", f"-{family}", f"https://{BLOCKED}/"])
    assert code == 6 and "resolve" in out, out  # NXDOMAIN: the name does not resolve
    assert took < FAST


@pytest.mark.parametrize("family", [4, 6])
def test_openssl_s_client(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    def s_client(name: str) -> tuple[float, int, str]:
        addr = _url_host(lab.address(name, family))
        return timed(lab, ["openssl", "s_client", "-connect", f"{addr}:443", "-servername", name,
                           "-CAfile", str(lab.ca_file), "-verify_return_error", "-brief"], timeout=20)

    _, code, out = s_client(ALLOWED)
    assert code == 0 and "Verification: OK" in out, out
    took, code, out = s_client(BLOCKED)
    assert code != 0 and ("errno=104" in out or "reset" in out.lower()), out
    assert took < FAST


PY_CLIENT = """
import os, socket, ssl, sys, time
T = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)  # harness.scaled(), in the client
host, addr, ca = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
start = time.monotonic()
try:
    with socket.create_connection((addr, 443), timeout=10 * T) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"GET / HTTP/1.1\\r\\nHost: " + host.encode() + b"\\r\\n\\r\\n")
            print("ok", tls.recv(4096).decode().split("\\r\\n\\r\\n")[-1].strip())
except OSError as e:
    print("error", type(e).__name__, round(time.monotonic() - start, 3))
"""


@pytest.mark.parametrize("family", [4, 6])
def test_python_ssl(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    def py(name: str) -> list[str]:
        r = lab.client_run([sys.executable, "-c", PY_CLIENT, name, lab.address(name, family), str(lab.ca_file)])
        return r.stdout.split()

    assert py(ALLOWED) == ["ok", "hello", "from", ALLOWED]
    out = py(BLOCKED)
    assert out[:2] == ["error", "ConnectionResetError"], out
    assert float(out[2]) < FAST


@pytest.mark.parametrize("server", [4, 6])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_dig_blocked_name_is_nxdomain_with_ede(lab: lab_mod.Lab, daemon: Runner, transport: str, qtype: str,
                                               server: int) -> None:
    flag = "+tcp" if transport == "tcp" else "+notcp"
    at = "@" + (lab.dns_v4 if server == 4 else lab.dns_v6)
    r = lab.client_run(["dig", at, flag, "+time=2", "+tries=1", BLOCKED, qtype])
    assert "status: NXDOMAIN" in r.stdout, r.stdout
    assert "EDE: 15 (Blocked): (netguard" in r.stdout, r.stdout
    if transport == "udp":
        assert "ghcr.io is blocked by default policy [embedded] (ghcr is not in allow)" in r.stdout, r.stdout
    # Over TCP the answer keeps its length (the stream's sequence numbers depend on it), so the text
    # is the longest that fits.
    ok = lab.client_run(["dig", at, flag, "+short", ALLOWED, qtype]).stdout.split()
    assert ok == [lab.address(ALLOWED, 4 if qtype == "A" else 6)]


@pytest.mark.parametrize("family", [4, 6])
def test_cname_alias_of_blocked_registry(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    r = lab.client_run(["dig", "+time=2", "+tries=1", ALIAS, "A" if family == 4 else "AAAA"])
    assert "status: NXDOMAIN" in r.stdout and "ghcr.io is blocked" in r.stdout, r.stdout
    # Pinned to the blocked registry's address, the SNI says dl.allowed.test (unknown, so allowed by
    # name), but the address was learned from the alias' answer, whose chain ends at ghcr.io.
    took, code, out = timed(lab, ["curl", "-sS", "-m", f"{scaled(10):g}", f"-{family}", "--cacert", str(lab.ca_file),
                                  "--resolve", f"{ALIAS}:443:{lab.address(BLOCKED, family)}", f"https://{ALIAS}/"])
    assert code != 0 and "reset" in out.lower(), out
    assert took < FAST
    events = [e for e in daemon.events() if e["dst"] == lab.address(BLOCKED, family) and e["source"] == "dns-table"]
    assert events and events[-1]["host"] == BLOCKED


@pytest.mark.parametrize("family", [4, 6])
def test_ip_literal_and_no_sni_to_learned_blocked_address(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    lab.client_run(["dig", "+short", BLOCKED, "A" if family == 4 else "AAAA"])  # netguard learns the address
    addr = lab.address(BLOCKED, family)
    took, code, out = timed(lab, ["curl", "-sS", "-m", "10", "-k", f"https://{_url_host(addr)}/"])
    assert code != 0 and "reset" in out.lower(), out
    assert took < FAST
    took, code, out = timed(lab, ["openssl", "s_client", "-connect", f"{_url_host(addr)}:443", "-noservername",
                                  "-brief"], timeout=20)
    assert code != 0 and ("errno=104" in out or "reset" in out.lower()), out
    events = [e for e in daemon.events() if e["dst"] == addr and e["source"] == "dns-table"]
    assert events and events[-1]["host"] == BLOCKED
    # The allowed registry's address by IP literal stays reachable.
    _, code, out = timed(lab, ["curl", "-sS", "-m", "10", "-k", f"https://{_url_host(lab.address(ALLOWED, family))}/"])
    assert code == 0, out


@pytest.fixture(scope="module")
def raw_resets_dropped(lab: lab_mod.Lab, daemon: Runner) -> Iterator[None]:
    # The hand-made connections have no socket: drop the kernel's resets to the server's replies.
    rule = ["OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "--dport", "443", "-j", "DROP"]
    for tool in ("iptables", "ip6tables"):
        netns.run(lab.client, [tool, "-t", "raw", "-A", *rule])
    try:
        yield
    finally:
        for tool in ("iptables", "ip6tables"):
            netns.run(lab.client, [tool, "-t", "raw", "-D", *rule], check=False)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["inorder", "shuffle"])
def test_client_hello_in_one_byte_segments(lab: lab_mod.Lab, daemon: Runner, raw_resets_dropped: None,
                                           family: int, mode: str) -> None:
    src = lab.client_v4 if family == 4 else lab.client_v6
    # Both to the allowed registry's address: only the SNI can tell them apart.
    addr = lab.address(ALLOWED, family)

    def send(name: str) -> dict[str, object]:
        r = lab.client_run([sys.executable, RAWHELLO, src, addr, name, "1", mode], timeout=scaled(60))
        return dict(json.loads(r.stdout))

    ok = send(ALLOWED)
    assert ok["pieces"] == ok["hello_len"] and int(str(ok["server_bytes"])) > 100 and not ok["rst"], ok
    bad = send(BLOCKED)
    assert bad["server_bytes"] == 0 and bad["rst"], bad
    events = [e for e in daemon.events() if e["dst"] == addr and e["source"] == "sni"]
    assert events and events[-1]["host"] == BLOCKED


@pytest.mark.parametrize("family", [4, 6])
def test_plain_http_host_and_connect(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # Both to the allowed registry's address: only the request names the blocked registry.
    addr = _url_host(lab.address(ALLOWED, family))
    _, code, out = timed(lab, ["curl", "-sS", "-m", "10", f"http://{addr}/", "-H", f"Host: {ALLOWED}"])
    assert code == 0 and out.strip() == f"hello from {ALLOWED}", out
    took, code, out = timed(lab, ["curl", "-sS", "-m", "10", f"http://{addr}/", "-H", f"Host: {BLOCKED}"])
    assert code != 0 and "reset" in out.lower(), out
    assert took < FAST
    # CONNECT through the lab server acting as a proxy.
    _, code, out = timed(lab, ["curl", "-sS", "-m", "10", "-p", "-x", f"http://{addr}:80",
                               f"http://{ALLOWED}:443/"])
    assert "reset" not in out.lower(), out
    took, code, out = timed(lab, ["curl", "-sS", "-m", "10", "-p", "-x", f"http://{addr}:80",
                                  f"http://{BLOCKED}:443/"])
    assert code != 0 and "reset" in out.lower(), out
    assert took < FAST
    sources = {e["source"] for e in daemon.events() if e["host"] == BLOCKED and e["dport"] == 80}
    assert {"http-host", "http-connect"} <= sources


@pytest.mark.parametrize("family", [4, 6])
def test_overlapping_segments_with_other_bytes_are_blocked(lab: lab_mod.Lab, daemon: Runner,
                                                           raw_resets_dropped: None, family: int) -> None:
    src = lab.client_v4 if family == 4 else lab.client_v6
    addr = lab.address(ALLOWED, family)
    r = lab.client_run([sys.executable, RAWHELLO, src, addr, ALLOWED, "0", "overlap"], timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["server_bytes"] == 0 and result["rst"], result
    events = [e for e in daemon.events() if e["dst"] == addr and e["rule"] == "overlap"]
    assert events and events[-1]["verdict"] == "block"


MALFORMED_HELLO = """
import os, socket, sys, time
T = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)  # harness.scaled(), in the client
addr = sys.argv[1]
start = time.monotonic()
with socket.create_connection((addr, 443), timeout=5 * T) as s:
    # A handshake record that holds an alert-typed message: not a ClientHello, not readable.
    s.sendall(bytes([22, 3, 1, 0, 8, 2, 0, 0, 4, 1, 2, 3, 4]))
    try:
        print("data", len(s.recv(100)), round(time.monotonic() - start, 3))
    except OSError as e:
        print(type(e).__name__, round(time.monotonic() - start, 3))
"""


@pytest.mark.parametrize("family", [4, 6])
def test_unreadable_client_hello_gets_the_fail_verdict(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    addr = lab.address(ALLOWED, family)
    r = lab.client_run([sys.executable, "-c", MALFORMED_HELLO, addr])
    kind, took = r.stdout.split()
    assert kind == "ConnectionResetError" and float(took) < FAST, r.stdout + r.stderr
    events = [e for e in daemon.events() if e["dst"] == addr and e["source"] == "none"]
    assert events and events[-1]["rule"] == "fail_mode = closed" and "unreadable" in events[-1]["reason"]




@pytest.mark.parametrize("family", [4, 6])
def test_client_flow_from_source_port_53_is_judged(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # Not a DNS answer: a root client's own connection from port 53 to a blocked registry.
    # Two servers' addresses, so the two connections do not share a 5-tuple (and its conntrack entry).
    r = lab.client_run([sys.executable, "-c", FROM_PORT_53, lab.address(ALLOWED, family), ALLOWED, str(family)])
    assert r.stdout.strip() == "connected", r.stdout + r.stderr
    r = lab.client_run([sys.executable, "-c", FROM_PORT_53, lab.address("www.example.test", family), BLOCKED,
                        str(family)])
    assert r.stdout.strip() == "ConnectionResetError", r.stdout + r.stderr
    events = [e for e in daemon.events() if e["sport"] == 53 and e["source"] == "sni"]
    assert events and events[-1]["host"] == BLOCKED
