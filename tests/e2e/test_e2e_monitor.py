"""Monitor mode for a roll-out, with a real registry and real clients: the organisation publishes a
policy with `mode = "monitor"` (real nginx, signed with the real minisign); skopeo pulls from a
registry that policy does not allow, and curl fetches from it, and both succeed while every such
connection and DNS answer is logged as "would-block". Version 2 switches to enforce: the same
pulls fail at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2eclients import ALLOWED, BLOCKED, oci_blob, skopeo
from harness import NETGUARD, Runner, curl, until

from netguard.lab import registry as rl
from netguard.lab.policyserver import PolicyServer, Signer, expires_in

pytestmark = pytest.mark.root

POLICY = 'name = "rollout"\nallow = ["dockerhub"]\n'
INTERVAL = 2.0
FAST = 2.0  # seconds: a blocked skopeo fails at once (NXDOMAIN or reset)


@pytest.fixture(scope="module")
def org(reg: rl.RegistryLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PolicyServer, Signer]]:
    """nginx on www.example.test:8443 (an unknown host: allowed; the registry holds 443 there)."""
    server = PolicyServer(reg.lab, tmp_path_factory.mktemp("nginx"), host=reg.lab.host("www.example.test"))
    server.start()
    try:
        yield server, Signer(tmp_path_factory.mktemp("key"))
    finally:
        server.stop()


def version_in_force(reg: rl.RegistryLab) -> int | None:
    r = reg.lab.client_run([NETGUARD, "status", "--json"])
    f = json.loads(r.stdout)["fleet"]["in_force"] if r.returncode == 0 else None
    return None if f is None else int(f["version"])


def test_monitor_then_enforce(reg: rl.RegistryLab, org: tuple[PolicyServer, Signer], tmp_path: Path) -> None:
    server, signer = org
    server.publish(POLICY + 'mode = "monitor"\n', signer, f"version=1 expires={expires_in(3600)}")
    args = ("--policy-url", server.url(), "--trusted-key", str(signer.public), "--policy-ca", str(reg.lab.ca_file),
            "--state-dir", str(tmp_path / "state"), "--poll-interval", str(INTERVAL),
            "--source-config", str(tmp_path / "none.toml"))
    runner = Runner(reg.lab, tmp_path, args=args).start()
    try:
        until(lambda: version_in_force(reg) == 1, 10)
        for route in ("dns", "v4", "v6"):
            r = skopeo(reg, reg.lab.client, BLOCKED, route, "inspect")
            assert r.code == 0, (route, r.out)
            assert json.loads(r.out)["Digest"] == reg.image.manifest_digest
        out = tmp_path / "pulled"
        r = skopeo(reg, reg.lab.client, BLOCKED, "v4", "copy", f"oci:{out}:{rl.TAG}")
        assert r.code == 0, r.out
        assert oci_blob(out, reg.image.layer_digest) == reg.image.layer  # the whole image, byte for byte
        assert curl(reg.lab, BLOCKED, 6, timeout=5).code == 0

        events = runner.events()
        would = [e for e in events if e["verdict"] == "would-block" and e["host"] == BLOCKED]
        assert {e["source"] for e in would} >= {"dns-answer", "sni"}, events
        assert {e["dst"] for e in would if e["source"] == "sni"} >= {reg.lab.host(BLOCKED).v4, reg.lab.host(BLOCKED).v6}
        assert not [e for e in events if e["verdict"] == "block"]
        assert skopeo(reg, reg.lab.client, ALLOWED, "dns", "inspect").code == 0

        # Version 2 enforces: in force within a poll, and the same pulls fail fast.
        server.publish(POLICY, signer, f"version=2 expires={expires_in(3600)}")
        until(lambda: version_in_force(reg) == 2, INTERVAL + 1)
        r = skopeo(reg, reg.lab.client, BLOCKED, "dns", "inspect")
        assert r.code == 1 and "no such host" in r.out and r.took < FAST, r.out
        r = skopeo(reg, reg.lab.client, BLOCKED, "v4", "inspect")
        assert r.code == 1 and "connection reset by peer" in r.out and r.took < FAST, r.out
        assert skopeo(reg, reg.lab.client, ALLOWED, "v6", "inspect").code == 0
        assert [e for e in runner.events() if e["verdict"] == "block" and e["host"] == BLOCKED]
    finally:
        assert runner.stop() == 0
