"""podman pull (Go, vfs storage in the test directory) against the real registry under an allowed
name and a blocked one, with netguard run's default policy in the client namespace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2eclients import ALLOWED, BLOCKED, address, blocks, podman_inspect, podman_pull
from harness import Runner, scaled

from netguard.lab import registry as rl

pytestmark = pytest.mark.root

# seconds: podman retries a failed pull (three attempts, about one second apart), each attempt
# ends at once on NXDOMAIN or a reset; a silent drop would take minutes.
FAST = scaled(5.0)


@pytest.mark.parametrize("route", ["dns", "v6"])
def test_pull_allowed(reg: rl.RegistryLab, daemon: Runner, route: str, tmp_path: Path) -> None:
    r = podman_pull(reg, reg.lab.client, ALLOWED, route, tmp_path)
    assert r.code == 0, r.out
    r = podman_inspect(reg, reg.lab.client, tmp_path, ALLOWED)
    assert r.code == 0, r.out
    [image] = json.loads(r.out)
    # podman checks every blob against its digest: the manifest digest and the layer's diff ID
    # being the pushed ones means the pulled bytes are the pushed bytes.
    assert image["Digest"] == reg.image.manifest_digest
    assert image["RootFS"]["Layers"] == [reg.image.diff_id]
    assert blocks(daemon.events(), ALLOWED) == []


def test_pull_blocked_by_dns(reg: rl.RegistryLab, daemon: Runner, tmp_path: Path) -> None:
    r = podman_pull(reg, reg.lab.client, BLOCKED, "dns", tmp_path)
    assert r.code == 125, r.out  # podman: the command itself failed
    assert f"lookup {BLOCKED}" in r.out and "no such host" in r.out, r.out
    assert r.took < FAST, r.out
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "dns-answer"]
    assert events and events[-1]["registry"] == "ghcr", daemon.events()


@pytest.mark.parametrize("route", ["v4", "v6"])
def test_pull_blocked_by_sni(reg: rl.RegistryLab, daemon: Runner, route: str, tmp_path: Path) -> None:
    r = podman_pull(reg, reg.lab.client, BLOCKED, route, tmp_path)
    assert r.code == 125, r.out  # podman: the command itself failed
    assert "connection reset by peer" in r.out, r.out
    assert r.took < FAST, r.out
    dst = address(reg, BLOCKED, route)
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "sni" and e["dst"] == dst]
    assert events and events[-1]["registry"] == "ghcr", daemon.events()
