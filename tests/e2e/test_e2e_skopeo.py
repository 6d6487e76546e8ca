"""skopeo (Go) against the real registry under an allowed name (registry-1.docker.io) and a blocked
one (ghcr.io), with netguard run's default policy in the client namespace: by DNS and pinned to each
address family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2eclients import ALLOWED, BLOCKED, address, blocks, oci_blob, skopeo
from harness import Runner, scaled

from netguard.lab import registry as rl

pytestmark = pytest.mark.root

FAST = scaled(2.0)  # seconds: a blocked skopeo fails at once (NXDOMAIN or reset); a silent drop takes 20 s


def test_without_netguard_the_blocked_name_serves_the_image(reg: rl.RegistryLab) -> None:
    # Runs before the daemon fixture starts: without netguard the same image is reachable under
    # both names, so a failure under netguard is netguard's doing.
    for name in (ALLOWED, BLOCKED):
        r = skopeo(reg, reg.lab.client, name, "dns", "inspect")
        assert r.code == 0, r.out
        assert json.loads(r.out)["Digest"] == reg.image.manifest_digest


@pytest.mark.parametrize("route", ["dns", "v4", "v6"])
def test_inspect_allowed(reg: rl.RegistryLab, daemon: Runner, route: str) -> None:
    r = skopeo(reg, reg.lab.client, ALLOWED, route, "inspect")
    assert r.code == 0, r.out
    info = json.loads(r.out)
    assert info["Digest"] == reg.image.manifest_digest
    assert info["Layers"] == [reg.image.layer_digest]
    assert blocks(daemon.events(), ALLOWED) == []


@pytest.mark.parametrize("route", ["dns", "v6"])
def test_copy_allowed_is_byte_identical(reg: rl.RegistryLab, daemon: Runner, route: str, tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    r = skopeo(reg, reg.lab.client, ALLOWED, route, "copy", f"oci:{out}:{rl.TAG}")
    assert r.code == 0, r.out
    assert oci_blob(out, reg.image.layer_digest) == reg.image.layer
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [reg.image.manifest_digest]


def test_blocked_by_dns(reg: rl.RegistryLab, daemon: Runner) -> None:
    r = skopeo(reg, reg.lab.client, BLOCKED, "dns", "inspect")
    assert r.code == 1, r.out  # skopeo: the command failed
    assert f"lookup {BLOCKED}" in r.out and "no such host" in r.out, r.out
    assert r.took < FAST, r.out
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "dns-answer"]
    assert events and events[-1]["registry"] == "ghcr", daemon.events()


@pytest.mark.parametrize("route", ["v4", "v6"])
def test_blocked_by_sni(reg: rl.RegistryLab, daemon: Runner, route: str) -> None:
    r = skopeo(reg, reg.lab.client, BLOCKED, route, "inspect")
    assert r.code == 1, r.out  # skopeo: the command failed
    assert "connection reset by peer" in r.out, r.out
    assert r.took < FAST, r.out
    dst = address(reg, BLOCKED, route)
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "sni" and e["dst"] == dst]
    assert events and events[-1]["registry"] == "ghcr" and events[-1]["proto"] == "tcp", daemon.events()
