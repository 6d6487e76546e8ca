"""The organisation policy end to end: real nginx serves a policy signed by the real minisign over
HTTPS (a certificate from the lab's CA) in the lab's registry namespace; `netguard run --policy-url`
in the client namespace polls it, verifies it and enforces it. First fetch, 304s, a new version in
force within the interval + 1 s (and open flows cut), each refusal with the old policy kept, the
server down, a boot offline from the kept copy, the check-in headers in nginx's log (and the
compliance report made from it), monitor mode, the policy server's host never blocked, and a local
file that may only add blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LONG_CLIENT, NETGUARD, Runner, curl, until

from netguard.fleet import checkin
from netguard.lab import lab as lab_mod
from netguard.lab.policyserver import POLICY_HOST, PolicyServer, Signer, expires_in

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HUB, GHCR, QUAY, OTHER = "registry-1.docker.io", "ghcr.io", "quay.io", "www.example.test"
INTERVAL = 2.0  # seconds between polls in these tests
WITHIN = 1.0  # a fetched policy is in force this soon
# Tells apart the organisation's policy from the embedded default (Docker Hub allowed, GHCR blocked).
GHCR_ONLY = 'name = "acme"\nallow = ["ghcr"]\n'
HUB_ONLY = 'name = "acme"\nallow = ["dockerhub"]\n'
RESET = 35  # curl: TLS handshake failed (the connection was reset)



@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_mod.Lab]:
    """The lab, with the policy server's name (policy.corp.test) among its hosts."""
    with lab_mod.build(hosts=(*lab_mod.DEFAULT_HOSTS, POLICY_HOST), workdir=tmp_path_factory.mktemp("lab")) as built:
        yield built
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not {built.client, built.dns, built.registry, built.bridge} & set(left)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Signer]:
    """The organisation's key, its next key (rotation), and a stranger's."""
    return {name: Signer(tmp_path_factory.mktemp(f"key-{name}")) for name in ("org", "next", "stranger")}


@pytest.fixture
def server(lab: lab_mod.Lab, tmp_path: Path) -> Iterator[PolicyServer]:
    srv = PolicyServer(lab, tmp_path / "nginx")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def comment(version: int, expires: float = 3600) -> str:
    return f"version={version} expires={expires_in(expires)}"


def daemon(lab: lab_mod.Lab, tmp: Path, server: PolicyServer, keys: dict[str, Signer], *, name: str = "ng",
           local: str | None = None, state: Path | None = None, wait_version: int | None = 1,
           source: Path | None = None) -> Runner:
    """`netguard run --policy-url ...` (or, given `source`, `netguard run --source-config FILE`) in the
    client namespace; waits until it enforces and (unless wait_version is None) until that
    organisation policy version is in force."""
    args: tuple[str, ...] = ("--source-config", str(source))
    if source is None:
        args = ("--policy-url", server.url(), "--trusted-key", str(keys["org"].public), "--trusted-key",
                keys["next"].key_line, "--policy-ca", str(lab.ca_file), "--state-dir", str(state or tmp / "state"),
                "--poll-interval", str(INTERVAL), "--source-config", str(tmp / "no-source.toml"))
    runner = Runner(lab, tmp, policy=local, name=name, args=args).start()
    if wait_version is not None:
        wait_for_version(lab, wait_version, 10)
    return runner


def status(lab: lab_mod.Lab) -> dict[str, Any]:
    r = lab.client_run([NETGUARD, "status", "--json"])
    assert r.returncode == 0, r.stdout + r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def in_force(lab: lab_mod.Lab) -> int | None:
    f = status(lab)["fleet"]["in_force"]
    return None if f is None else int(f["version"])


def wait_for_version(lab: lab_mod.Lab, version: int, limit: float) -> float:
    return until(lambda: in_force(lab) == version, limit)


def pull(lab: lab_mod.Lab) -> subprocess.CompletedProcess[str]:
    return lab.client_run([NETGUARD, "policy", "pull"], timeout=60)


def ghcr_allowed(lab: lab_mod.Lab) -> bool:
    return curl(lab, GHCR, 4, timeout=5).code == 0


def source_file(tmp: Path, server: PolicyServer, keys: dict[str, Signer], lab: lab_mod.Lab) -> Path:
    """The same source as a source.toml (what scripts/install-systemd writes)."""
    f = tmp / "source.toml"
    f.write_text(f'policy_url = "{server.url()}"\ntrusted_keys = ["{keys["org"].public}", "{keys["next"].key_line}"]\n'
                 f'policy_ca = "{lab.ca_file}"\nstate_dir = "{tmp / "state"}"\npoll_interval = {INTERVAL}\n')
    return f


def test_first_fetch_then_304s_and_a_new_version_within_the_interval(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish(GHCR_ONLY, keys["org"], comment(1))
    runner = daemon(lab, tmp_path, server, keys)
    try:
        # The organisation's policy, not the embedded default.
        assert curl(lab, GHCR, 4, timeout=5).code == 0
        assert curl(lab, HUB, 6, timeout=5).code == RESET
        doc = status(lab)
        assert doc["policy"] == f"acme [{server.url()}]" and doc["state"] == "enforcing"
        assert "organisation policy from" in runner.stderr() and "version 1" in runner.stderr()

        # Polls after the first: the signature is asked for with its ETag and is not modified.
        until(lambda: sum(r["status"] == "304" for r in server.requests()) >= 2, 3 * INTERVAL + 1)
        requests = [(r["request"], r["status"]) for r in server.requests() if r["machine"]]
        assert requests[:2] == [("/policy.toml.minisig", "200"), ("/policy.toml", "200")], requests
        assert set(requests[2:]) == {("/policy.toml.minisig", "304")}, requests
        assert status(lab)["fleet"]["results"]["unchanged"] >= 2

        # An open connection to GHCR, then version 2 blocks it: in force within the interval + 1 s,
        # and the open connection is cut.
        h = lab.host(GHCR)
        log = tmp_path / "long.out"
        with log.open("wb") as out:
            lab.client_popen([sys.executable, "-c", LONG_CLIENT, GHCR, h.v4, str(lab.ca_file)], stdout=out, stderr=out)
        until(lambda: "open" in log.read_text(), 10)
        published = time.monotonic()
        server.publish(HUB_ONLY, keys["org"], comment(2))
        until(lambda: curl(lab, GHCR, 4, timeout=5).code == RESET, INTERVAL + WITHIN)
        took = time.monotonic() - published
        until(lambda: "cut" in log.read_text(), WITHIN)
        assert took < INTERVAL + WITHIN
        assert curl(lab, HUB, 6, timeout=5).code == 0
        cut = [e for e in runner.events() if e.get("action") == "cut"]
        assert cut and cut[-1]["host"] == GHCR
        assert in_force(lab) == 2
        applied = status(lab)["fleet"]["last_applied"]
        assert applied["version"] == 2 and 0 <= applied["in_force"] - applied["fetched"] < WITHIN, applied
        # The document itself was fetched again, once; the policy with it.
        assert [r["request"] for r in server.requests() if r["status"] == "200"].count("/policy.toml") == 2

        # `policy pull` polls now and says what came of it.
        r = pull(lab)
        assert r.returncode == 0 and r.stdout.startswith("unchanged"), r.stdout + r.stderr
        server.publish(GHCR_ONLY, keys["org"], comment(3))
        r = pull(lab)
        assert r.returncode == 0 and r.stdout.startswith("applied: version 3"), r.stdout + r.stderr
        assert ghcr_allowed(lab)  # in force by the time pull returns
    finally:
        assert runner.stop() == 0


def test_every_refusal_keeps_the_policy_in_force(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish(GHCR_ONLY, keys["org"], comment(5))
    runner = daemon(lab, tmp_path, server, keys, wait_version=5)

    def other_documents_signature() -> None:
        other = tmp_path / "other.toml"
        other.write_text("something else\n")
        server.publish(HUB_ONLY, None, None)
        server.publish_signature(keys["org"].sign(other, comment(6)).read_bytes())

    try:
        cases: list[tuple[str, Any]] = [
            ("bad-signature", other_documents_signature),
            ("unknown-key", lambda: server.publish(HUB_ONLY, keys["stranger"], comment(6))),
            ("rollback", lambda: server.publish(HUB_ONLY, keys["org"], comment(4))),
            ("expired", lambda: server.publish(HUB_ONLY, keys["org"], comment(6, expires=-60))),
            ("invalid", lambda: server.publish('allow = ["dockerhub", "githb"]\n', keys["org"], comment(6))),
            ("malformed", lambda: server.publish(HUB_ONLY, keys["org"], "version=6")),
        ]
        for n, (kind, publish) in enumerate(cases, 1):
            publish()
            r = pull(lab)
            assert r.returncode == 1 and r.stdout.startswith("refused"), (kind, r.stdout + r.stderr)
            doc = status(lab)
            assert doc["fleet"]["refusals"][kind] == 1, (kind, doc["fleet"])
            assert doc["fleet"]["last_refusal"]["kind"] == kind
            assert in_force(lab) == 5 and ghcr_allowed(lab), kind
            assert runner.stderr().count(f"organisation policy refused ({kind})") == 1, runner.stderr()
            assert runner.stderr().count("stays in force") == n
        assert "unknown registry id 'githb'" in runner.stderr()  # the invalid policy's problems are in the log

        # The same refused pair at later polls: asked for with its ETags (304, 304), reported again,
        # neither logged nor counted again.
        before = status(lab)["fleet"]["attempts"]
        until(lambda: status(lab)["fleet"]["attempts"] >= before + 2, 3 * INTERVAL)
        fleet = status(lab)["fleet"]
        assert fleet["last"]["text"].startswith("still published: ") and fleet["refusals"]["malformed"] == 1
        assert runner.stderr().count("organisation policy refused (malformed)") == 1
        assert [r["status"] for r in server.requests()[-2:]] == ["304", "304"]

        # Key rotation, published in two steps: the next key's signature of version 6 first (refused:
        # it does not match the document still there), then the document; the next poll takes it.
        v6 = tmp_path / "v6.toml"
        v6.write_text(HUB_ONLY + "# version 6\n")
        server.publish_signature(keys["next"].sign(v6, comment(6)).read_bytes())
        r = pull(lab)
        assert r.returncode == 1 and "bad-signature" in status(lab)["fleet"]["last_refusal"]["kind"], r.stdout
        server.publish(v6.read_text(), None, None)
        r = pull(lab)
        assert r.returncode == 0 and r.stdout.startswith("applied: version 6"), r.stdout + r.stderr
        assert not ghcr_allowed(lab) and status(lab)["fleet"]["in_force"]["key_id"] in keys["next"].public.read_text()
    finally:
        assert runner.stop() == 0


def test_server_down_then_boot_offline_from_the_kept_copy(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish(GHCR_ONLY, keys["org"], comment(3))
    runner = daemon(lab, tmp_path, server, keys, wait_version=3)
    try:
        server.stop()
        r = pull(lab)
        assert r.returncode == 1 and r.stdout.startswith("error"), r.stdout + r.stderr
        assert status(lab)["fleet"]["consecutive_errors"] >= 1
        assert in_force(lab) == 3 and ghcr_allowed(lab)  # the last good policy stays
        assert "organisation policy error" in runner.stderr()
    finally:
        assert runner.stop() == 0

    # Restart with the server still down: the kept copy is enforced from the first packet.
    runner = daemon(lab, tmp_path, server, keys, name="offline", wait_version=None)
    try:
        assert "organisation policy version 3 kept in" in runner.stderr()
        assert in_force(lab) == 3 and ghcr_allowed(lab)
        assert curl(lab, HUB, 4, timeout=5).code == RESET
        assert status(lab)["policy"] == f"acme [{server.url()}]"
        # The server comes back: the next poll sends the kept ETag and gets a 304.
        server.start()
        r = pull(lab)
        assert r.returncode == 0 and r.stdout.startswith("unchanged"), r.stdout + r.stderr
        assert server.requests()[-1]["status"] == "304"
    finally:
        assert runner.stop() == 0

    # Without the kept copy the same start enforces the embedded default until a fetch succeeds.
    server.stop()
    runner = daemon(lab, tmp_path, server, keys, name="fresh", state=tmp_path / "empty", wait_version=None)
    try:
        doc = status(lab)
        assert doc["policy"] == "default policy [embedded]" and doc["state"] == "degraded"
        assert not ghcr_allowed(lab)
    finally:
        assert runner.stop() == 0


def test_checkin_headers_reach_the_log_and_make_the_report(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish(GHCR_ONLY, keys["org"], comment(1))
    runner = daemon(lab, tmp_path, server, keys)
    try:
        assert curl(lab, HUB, 4, timeout=5).code == RESET  # a block, reported with the next poll
        assert pull(lab).returncode == 0
    finally:
        assert runner.stop() == 0
    log = server.requests()
    mine = [r for r in log if r["machine"]]
    machine_id = checkin.app_specific_id(checkin.parse_machine_id(Path("/etc/machine-id").read_text()) or b"")
    assert {r["machine"] for r in mine} == {machine_id}
    first, last = mine[0], mine[-1]
    assert (first["policy_version"], first["policy_sha256"], first["state"], first["last_block"]) == (
        "none", "none", "degraded", "none")
    sha = __import__("hashlib").sha256((server.www / "policy.toml").read_bytes()).hexdigest()
    assert (last["policy_version"], last["policy_sha256"], last["state"]) == ("1", sha, "enforcing")
    assert last["last_block"].endswith("Z") and last["last_block"] != "none"
    assert {r["netguard"] for r in mine} == {__import__("netguard").__version__}

    report = subprocess.run([sys.executable, str(REPO / "scripts" / "compliance-report"), "--json",
                             str(server.access_log)], capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["machines"]
    assert [(m["machine"], m["policy_version"], m["state"]) for m in rows] == [(machine_id, "1", "enforcing")]
    text = subprocess.run([sys.executable, str(REPO / "scripts" / "compliance-report"), str(server.access_log)],
                          capture_output=True, text=True, timeout=60)
    assert machine_id in text.stdout and "enforcing" in text.stdout


def test_monitor_mode_logs_would_block_and_blocks_nothing(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish(HUB_ONLY + 'mode = "monitor"\nblock_action = "tls-alert"\n', keys["org"], comment(1))
    runner = daemon(lab, tmp_path, server, keys)
    try:
        for family in (4, 6):
            assert curl(lab, GHCR, family, timeout=5).code == 0  # by SNI: would block
        assert curl(lab, GHCR, 4, pin=False, timeout=5).code == 0  # by DNS: the answer is not rewritten
        would = [e for e in runner.events() if e["verdict"] == "would-block" and e["host"] == GHCR]
        assert {e["source"] for e in would} >= {"sni", "dns-answer"}, runner.events()
        assert all(e["rule"] == "ghcr is not in allow" for e in would)
        assert not [e for e in runner.events() if e["verdict"] == "block"]
        doc = status(lab)
        assert (doc["mode"], doc["state"]) == ("monitor", "monitor") and doc["counts"]["would_block"] >= 3
        assert pull(lab).returncode == 0
        assert server.requests()[-1]["state"] == "monitor"

        # Switching to enforce: new connections are blocked within the interval + 1 s, and the one
        # opened under monitor mode is cut.
        h = lab.host(GHCR)
        log = tmp_path / "long.out"
        with log.open("wb") as out:
            lab.client_popen([sys.executable, "-c", LONG_CLIENT, GHCR, h.v6, str(lab.ca_file)], stdout=out, stderr=out)
        until(lambda: "open" in log.read_text(), 10)
        server.publish(HUB_ONLY, keys["org"], comment(2))
        until(lambda: curl(lab, GHCR, 4, timeout=5).code == RESET, INTERVAL + WITHIN)
        until(lambda: "cut" in log.read_text(), WITHIN)
        assert status(lab)["state"] == "enforcing"
        # Cut: the open one (the last let through to GHCR's IPv6 address), and those curl closed
        # moments ago that conntrack still tracks.
        cut = [e for e in runner.events() if e.get("action") == "cut"]
        let_through = [e for e in runner.events() if e["verdict"] == "would-block" and e["dst"] == h.v6]
        assert let_through[-1]["sport"] in {e["sport"] for e in cut if e["dst"] == h.v6}
        assert {(e["verdict"], e["host"]) for e in cut} == {("block", GHCR)}
    finally:
        assert runner.stop() == 0


def test_policy_server_is_never_blocked(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    # A strict allow-list that does not name the policy server, and even blocks it.
    strict = f'name = "strict"\nallow = ["dockerhub"]\nunknown_hosts = "deny"\nblock = ["{POLICY_HOST.name}"]\n'
    server.publish(strict, keys["org"], comment(1))
    runner = daemon(lab, tmp_path, server, keys)
    try:
        assert curl(lab, OTHER, 4, timeout=5).code == RESET  # unknown hosts are denied
        server.publish(strict + "# v2\n", keys["org"], comment(2))
        r = pull(lab)  # the policy server is still reachable, by DNS and by SNI
        assert r.returncode == 0 and r.stdout.startswith("applied: version 2"), r.stdout + r.stderr
        assert "the policy server policy.corp.test would be blocked" in runner.stderr()
        r = lab.client_run([NETGUARD, "policy", "explain", "--source-config",
                            str(source_file(tmp_path, server, keys, lab)), f"{POLICY_HOST.name}:{server.port}"])
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert f"'policy server {POLICY_HOST.name}:{server.port}'  <- decides" in lines[2], r.stdout
        assert "'block = policy.corp.test'" not in r.stdout  # replaced by the pin (the warning says so)
    finally:
        assert runner.stop() == 0


def test_local_file_may_only_add_blocks(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish('name = "acme"\nallow = ["dockerhub", "ghcr"]\n', keys["org"], comment(1))
    local = 'block = ["registry-1.docker.io"]\nallow = ["quay"]\nunknown_hosts = "deny"\n'
    source = source_file(tmp_path, server, keys, lab)
    runner = daemon(lab, tmp_path, server, keys, local=local, source=source)
    try:
        assert curl(lab, HUB, 4, timeout=5).code == RESET  # the local block
        assert curl(lab, QUAY, 4, timeout=5).code == RESET  # the local allow is left out
        assert curl(lab, GHCR, 4, timeout=5).code == 0
        assert curl(lab, OTHER, 4, timeout=5).code == 0  # the local unknown_hosts is ignored
        err = runner.stderr()
        assert "left out" in err and "allow = quay" in err and "ignored" in err and "unknown_hosts" in err
        block = next(e for e in runner.events() if e["host"] == HUB)
        assert block["reason"].endswith(f"(from {runner.policy_path})")

        r = lab.client_run([NETGUARD, "policy", "show", "--json", "--source-config", str(source),
                            "--policy", str(runner.policy_path)])
        table = {row["pattern"]: row for row in json.loads(r.stdout)["table"]}
        assert table["registry-1.docker.io"]["from"] == str(runner.policy_path)
        assert table["ghcr.io"]["from"] == server.url()
        assert table[f"{POLICY_HOST.name}:{server.port}"]["rule"] == f"policy server {POLICY_HOST.name}:{server.port}"

        # The organisation permits local allows from version 2 on.
        server.publish('name = "acme"\nallow = ["dockerhub", "ghcr"]\nlocal_allow = true\n', keys["org"], comment(2))
        assert pull(lab).returncode == 0
        assert curl(lab, QUAY, 4, timeout=5).code == 0
        assert curl(lab, HUB, 4, timeout=5).code == RESET
    finally:
        assert runner.stop() == 0


# A policy server that accepts connections and never answers (the TLS handshake hangs).
SILENT_SERVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(8)
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)
    print("accepted", flush=True)
"""


def test_a_hanging_policy_server_never_slows_enforcement(
        lab: lab_mod.Lab, tmp_path: Path, server: PolicyServer, keys: dict[str, Signer]) -> None:
    server.publish(GHCR_ONLY, keys["org"], comment(1))
    runner = daemon(lab, tmp_path, server, keys)
    server.stop()
    log = tmp_path / "silent.out"
    with log.open("wb") as out:
        silent = subprocess.Popen(["ip", "netns", "exec", lab.registry, sys.executable, "-c", SILENT_SERVER,
                                   str(server.port)], stdout=out, stderr=out, start_new_session=True)
    lab.procs.append(silent)
    try:
        puller = lab.client_popen([NETGUARD, "policy", "pull", "--timeout", "30"], stdout=subprocess.DEVNULL)
        until(lambda: "accepted" in log.read_text(), 5)  # the poll is now waiting for the server
        for round_ in range(3):
            ok, blocked = curl(lab, GHCR, 4, timeout=5), curl(lab, HUB, 6, timeout=5)
            assert ok.code == 0 and blocked.code == RESET
            assert ok.seconds < WITHIN and blocked.seconds < WITHIN, (ok, blocked)
            if round_ == 0:  # checked early: on a loaded machine three rounds can outlast fetch.TIMEOUT
                assert puller.poll() is None  # still waiting: the fetch hangs, enforcement does not
        assert puller.wait(timeout=40) == 1
        last = status(lab)["fleet"]["last"]
        assert last["result"] == "error" and "timed out" in last["text"], last
        assert in_force(lab) == 1
    finally:
        lab_mod.stop(silent)
        assert runner.stop() == 0
