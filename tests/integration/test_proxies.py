"""Proxies and what servers take around a ClientHello, on the real kernel with both iptables
backends: real proxies from Debian packages in the lab's registry namespace (microsocks, Dante,
OpenSSH's SOCKS forwarding, tinyproxy, Squid; netguard.lab.proxies), real clients in the client
namespace (curl's --socks5, --socks5-hostname, --socks4, --socks4a and -x with a kept-alive
connection to two targets; openssl s_client through a CONNECT proxy and to a server that sends a
HelloRetryRequest, the lab server's OpenSSL on its HRR port; hand-made clients where curl would
rewrite what the test must send) and netguard run with the default policy (Docker Hub allowed, GHCR blocked).
Without netguard every proxy takes the client to the blocked registry (checked first)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import NETGUARD, Runner, backends_here

from netguard.lab import lab as lab_mod
from netguard.lab import proxies

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
PROXY = lab_mod.Host("proxy.test", lab_mod.NET4 + "110", lab_mod.NET6 + "110")
FAST = 2.0  # seconds: a blocked client fails at once (a reset), not by a timeout
HRRCLIENT = str(Path(__file__).with_name("hrrclient.py"))
RAWPROXY = str(Path(__file__).with_name("rawproxy.py"))
AUTH = f"{proxies.USER}:{proxies.PASSWORD}@"
# Requests that real proxies take although a strict parser does not (seen in the lab: each reaches
# ghcr.io): (proxy port, bytes).
LENIENT = [
    (proxies.SQUID, b"GET\thttp://ghcr.io/\tHTTP/1.1\r\n\r\n"),
    (proxies.SQUID, b"GET http://ghcr.io/\r\n\r\n"),
    (proxies.SQUID, b"Connect ghcr.io:80 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: ghcr.io\r\n\r\n"),
    (proxies.TINYPROXY, b"\tGET http://ghcr.io/ HTTP/1.1\r\n\r\n"),
    (proxies.TINYPROXY, b"GET http://ghcr.io/ http/1.1\r\n\r\n"),
]
# ghcr.io's lab address, 10.77.0.103, as inet_aton and a proxy's getaddrinfo read it.
LITERALS = ["0x0a4d0067", "172818535", "10.77.103", "012.0115.0.0147", "[::ffff:10.77.0.103]"]


def curl(lab: lab_mod.Lab, *args: str, timeout: int = 8) -> tuple[float, int, str]:
    argv = ["curl", "-sS", "-m", str(timeout), "--cacert", str(lab.ca_file), *args]
    start = time.monotonic()
    r = lab.client_run(argv, timeout=timeout + 10)
    return time.monotonic() - start, r.returncode, r.stdout + r.stderr


def proxy(family: int, port: int, user: str = "") -> str:
    host = PROXY.v4 if family == 4 else f"[{PROXY.v6}]"
    return f"{user}{host}:{port}"


def hrr(lab: lab_mod.Lab, family: int, first: str, second: str) -> str:
    address = lab.address(ALLOWED, family)
    r = lab.client_run([sys.executable, HRRCLIENT, address, str(proxies.HRR_TLS), first, second], timeout=20)
    return r.stdout.strip() or r.stderr


def raw(lab: lab_mod.Lab, port: int, mode: str, target: str) -> tuple[float, int, str]:
    """rawproxy.py through the proxy on port: the host field reaches the proxy as written."""
    start = time.monotonic()
    r = lab.client_run([sys.executable, RAWPROXY, PROXY.v4, str(port), mode, target], timeout=20)
    out = r.stdout.strip() or r.stderr
    return time.monotonic() - start, 0 if out.startswith("hello from") else 1, out


def control(lab: lab_mod.Lab) -> None:
    """Without netguard, every proxy (and the HRR server) takes a client to the blocked registry."""
    blocked = f"https://{BLOCKED}/"
    pin = ["--resolve", f"{BLOCKED}:443:{lab.address(BLOCKED, 4)}"]
    for args in (["--socks5-hostname", proxy(4, proxies.MICROSOCKS), blocked],
                 ["--socks5-hostname", proxy(6, proxies.MICROSOCKS_AUTH, AUTH), blocked],
                 ["--socks4a", proxy(4, proxies.SSH_SOCKS), blocked],
                 ["--socks4", proxy(4, proxies.DANTE), *pin, blocked],
                 ["-x", f"http://{proxy(4, proxies.SQUID)}", f"http://{ALLOWED}/", f"http://{BLOCKED}/"],
                 ["-x", f"http://{proxy(6, proxies.TINYPROXY)}", blocked]):
        _, code, out = curl(lab, *args)
        assert code == 0 and "hello from" in out, (args, out)
    for port, data in LENIENT:
        assert raw(lab, port, "hex", data.hex())[2] == f"hello from {BLOCKED}", data
    for literal in LITERALS:  # the proxies' getaddrinfo reads every form as ghcr.io's address
        assert raw(lab, proxies.TINYPROXY, "http", literal)[2] == f"hello from {literal}", literal
        if not literal.startswith("["):
            assert raw(lab, proxies.MICROSOCKS, "socks5", literal)[2] == f"hello from {literal}", literal
    assert hrr(lab, 4, ALLOWED, BLOCKED) == "server-hello"  # OpenSSL takes another name in the second hello


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_mod.Lab]:
    if proxies.missing():
        pytest.fail(f"scripts/bootstrap --test installs these; missing: {', '.join(proxies.missing())}")
    with lab_mod.build(hosts=(*lab_mod.DEFAULT_HOSTS, PROXY), workdir=tmp_path_factory.mktemp("plab")) as built:
        proxies.start(built)
        control(built)
        yield built


@pytest.fixture(scope="module", params=backends_here())
def daemon(plab: lab_mod.Lab, request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    backend = request.param
    runner = Runner(plab, tmp_path_factory.mktemp(backend), name=backend, args=("--backend", backend)).start()
    try:
        yield runner
    finally:
        runner.stop()


def blocks_since(daemon: Runner, start: float, host: str, source: str | None = None) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e["time"] >= start - 1 and e["verdict"] == "block" and e["host"] == host
            and (source is None or e["source"] == source)]


def assert_blocked(daemon: Runner, result: tuple[float, int, str], start: float, source: str,
                   host: str = BLOCKED) -> None:
    took, code, out = result
    assert code != 0 and "hello from" not in out, out
    assert took < FAST, out
    events = blocks_since(daemon, start, host, source)
    assert events and events[-1]["registry"] == "ghcr", (daemon.events()[-5:], out)


# -- SOCKS -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("port, user", [(proxies.MICROSOCKS, ""), (proxies.MICROSOCKS_AUTH, AUTH),
                                        (proxies.DANTE, ""), (proxies.SSH_SOCKS, "")])
def test_socks5_remote_names(plab: lab_mod.Lab, daemon: Runner, family: int, port: int, user: str) -> None:
    _, code, out = curl(plab, "--socks5-hostname", proxy(family, port, user), f"https://{ALLOWED}/")
    assert code == 0 and out.strip() == f"hello from {ALLOWED}", out
    start = time.time()
    result = curl(plab, "--socks5-hostname", proxy(family, port, user), f"https://{BLOCKED}/")
    assert_blocked(daemon, result, start, "socks5")


@pytest.mark.parametrize("family", [4, 6])
def test_socks4a_and_socks4(plab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    _, code, out = curl(plab, "--socks4a", proxy(family, proxies.SSH_SOCKS), f"https://{ALLOWED}/")
    assert code == 0 and out.strip() == f"hello from {ALLOWED}", out
    start = time.time()
    assert_blocked(daemon, curl(plab, "--socks4a", proxy(family, proxies.SSH_SOCKS), f"https://{BLOCKED}/"),
                   start, "socks4")
    # SOCKS4 carries an IPv4 address the client resolved (here pinned past DNS, so netguard never
    # learned it): the tunnel's ClientHello names the registry.
    pin = ["--resolve", f"{BLOCKED}:443:{plab.address(BLOCKED, 4)}"]
    for port in (proxies.DANTE, proxies.SSH_SOCKS):
        start = time.time()
        assert_blocked(daemon, curl(plab, "--socks4", proxy(family, port), *pin, f"https://{BLOCKED}/"), start,
                       "tunnel-sni")


@pytest.mark.parametrize("family", [4, 6])
def test_socks5_with_addresses(plab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    via = ["--socks5", proxy(family, proxies.MICROSOCKS_AUTH, AUTH)]
    for target_family in (4, 6):
        # An address netguard never saw in a DNS answer: the tunnel's ClientHello decides.
        pin = ["--resolve", f"{BLOCKED}:443:{plab.address(BLOCKED, target_family)}"]
        start = time.time()
        assert_blocked(daemon, curl(plab, *via, *pin, f"https://{BLOCKED}/"), start, "tunnel-sni")
    # Once DNS named the address (the answer itself is turned into NXDOMAIN), the request decides.
    plab.client_run(["dig", "+short", BLOCKED, "A", BLOCKED, "AAAA"])
    for target_family in (4, 6):
        address = plab.address(BLOCKED, target_family)
        url_host = address if target_family == 4 else f"[{address}]"
        start = time.time()
        assert_blocked(daemon, curl(plab, *via, f"http://{url_host}/"), start, "dns-table")


# -- HTTP proxies --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_every_request_on_a_kept_alive_proxy_connection(plab: lab_mod.Lab, daemon: Runner, family: int,
                                                        tmp_path: Path) -> None:
    squid = f"http://{proxy(family, proxies.SQUID)}"
    _, code, out = curl(plab, "-v", "-x", squid, f"http://{ALLOWED}/", "http://www.example.test/")
    assert code == 0 and "hello from www.example.test" in out and "Re-using existing connection" in out, out
    start = time.time()
    took, code, out = curl(plab, "-v", "-x", squid, f"http://{ALLOWED}/", f"http://{BLOCKED}/")
    assert f"hello from {ALLOWED}" in out and "Re-using existing connection" in out, out  # one connection
    assert code != 0 and f"hello from {BLOCKED}" not in out and took < FAST, out
    assert blocks_since(daemon, start, BLOCKED, "http-host"), daemon.events()[-3:]
    # Bodies are skipped by their framing: head-shaped bytes inside them are not requests, the next
    # request after them is. Content-Length, then chunked.
    body = tmp_path / "body"
    body.write_bytes(f"GET http://{BLOCKED}/ HTTP/1.1\r\nHost: {BLOCKED}\r\n\r\n".encode() * 200)
    for framing in ([], ["-H", "Transfer-Encoding: chunked"]):
        start = time.time()
        took, code, out = curl(plab, "-v", "-x", squid, "--data-binary", f"@{body}", *framing, f"http://{ALLOWED}/",
                               "--next", "-x", squid, f"http://{BLOCKED}/")
        assert f"hello from {ALLOWED}" in out and "Re-using existing connection" in out, out
        assert code != 0 and took < FAST and blocks_since(daemon, start, BLOCKED, "http-host"), out


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("port", [proxies.SQUID, proxies.TINYPROXY])
def test_connect_and_its_tunnel(plab: lab_mod.Lab, daemon: Runner, family: int, port: int) -> None:
    via = ["-x", f"http://{proxy(family, port)}"]
    _, code, out = curl(plab, *via, f"https://{ALLOWED}/")
    assert code == 0 and out.strip() == f"hello from {ALLOWED}", out
    start = time.time()
    assert_blocked(daemon, curl(plab, *via, f"https://{BLOCKED}/"), start, "http-connect")
    start = time.time()
    assert_blocked(daemon, curl(plab, "-p", *via, f"http://{BLOCKED}/"), start, "http-connect")  # CONNECT :80
    # An allowed CONNECT target, and the blocked name in the ClientHello inside the tunnel.
    start = time.time()
    r = plab.client_run(["openssl", "s_client", "-proxy", proxy(family, port), "-connect", f"{ALLOWED}:443",
                         "-servername", BLOCKED, "-brief"], timeout=20, input=b"")
    took = time.time() - start
    assert r.returncode != 0 and "CONNECTION ESTABLISHED" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert took < FAST + 1 and blocks_since(daemon, start, BLOCKED, "tunnel-sni"), daemon.events()[-3:]


@pytest.mark.parametrize("literal", LITERALS)
def test_address_literals_through_a_proxy(plab: lab_mod.Lab, daemon: Runner, literal: str) -> None:
    plab.client_run(["dig", "+short", BLOCKED])  # netguard learns the address (the answer becomes NXDOMAIN)
    start = time.time()
    assert_blocked(daemon, raw(plab, proxies.TINYPROXY, "http", literal), start, "dns-table")
    if not literal.startswith("["):  # a SOCKS5 name field holds no brackets
        start = time.time()
        assert_blocked(daemon, raw(plab, proxies.MICROSOCKS, "socks5", literal), start, "dns-table")


@pytest.mark.parametrize("port, data", LENIENT, ids=lambda v: v.hex()[:16] if isinstance(v, bytes) else str(v))
def test_requests_only_lenient_proxies_take(plab: lab_mod.Lab, daemon: Runner, port: int, data: bytes) -> None:
    start = time.time()
    took, code, out = raw(plab, port, "hex", data.hex())
    assert code != 0 and out in ("reset", "closed") and took < FAST, out
    events = [e for e in daemon.events() if e["time"] >= start - 1 and e["verdict"] == "block"]
    assert events and events[-1]["dport"] == port, daemon.events()[-3:]
    # Unreadable (fail_mode closed) or, where netguard does read it, the name.
    assert events[-1]["source"] in ("none", "http-connect", "http-host"), events[-1]


# -- TLS: the second ClientHello after a HelloRetryRequest -------------------------------------------

def status(lab: lab_mod.Lab) -> dict[str, Any]:
    r = lab.client_run([NETGUARD, "status", "--json"])
    return dict(json.loads(r.stdout))


@pytest.mark.parametrize("family", [4, 6])
def test_a_second_hello_is_judged(plab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    start = time.time()
    assert hrr(plab, family, ALLOWED, BLOCKED) == "reset"
    events = blocks_since(daemon, start, BLOCKED, "sni")
    assert events and events[-1]["dport"] == proxies.HRR_TLS, daemon.events()[-3:]
    assert hrr(plab, family, ALLOWED, "www.example.test") == "server-hello"  # an allowed second name passes


@pytest.mark.parametrize("family", [4, 6])
def test_an_ordinary_hello_retry_request_still_works(plab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # openssl s_client sends an X25519 key share; the server wants P-256 and asks again. netguard
    # reads the second hello (the allowed count grows by two: first hello, second hello).
    before = status(plab)["counts"]["allowed"]
    address = plab.address(ALLOWED, family)
    host = address if family == 4 else f"[{address}]"
    r = plab.client_run(["openssl", "s_client", "-connect", f"{host}:{proxies.HRR_TLS}", "-servername", ALLOWED,
                         "-groups", "X25519:P-256", "-CAfile", str(plab.ca_file), "-brief"], timeout=20, input=b"")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Verification: OK" in out and "prime256v1" in out, out
    assert status(plab)["counts"]["allowed"] == before + 2
    # Without an HRR the same connection is one decision: nothing more is queued.
    before = status(plab)["counts"]["allowed"]
    r = plab.client_run(["openssl", "s_client", "-connect", f"{host}:{proxies.HRR_TLS}", "-servername", ALLOWED,
                         "-groups", "P-256", "-CAfile", str(plab.ca_file), "-brief"], timeout=20, input=b"")
    assert r.returncode == 0, r.stdout + r.stderr
    assert status(plab)["counts"]["allowed"] == before + 1
