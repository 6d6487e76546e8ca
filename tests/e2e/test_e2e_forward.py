"""Containers behind the VM's bridge (Docker's bridge network, the buildx docker-container driver):
netguard runs in the VM namespace only, the container's traffic is routed and masqueraded by the VM,
so every decision is made on the VM's FORWARD chain. A container's pull from the blocked registry
fails, from the allowed one succeeds, byte for byte."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2eclients import (
    ALLOWED,
    BLOCKED,
    address,
    blocks,
    chromium,
    oci_blob,
    podman_inspect,
    podman_pull,
    pre_text,
    rules,
    skopeo,
)
from harness import NETGUARD, Runner, scaled

from netguard.daemon import netns
from netguard.lab import registry as rl

pytestmark = pytest.mark.root

FAST = scaled(2.0)  # seconds, as for skopeo in the client namespace: a reset or NXDOMAIN, not a timeout
PODMAN_FAST = scaled(5.0)  # seconds: podman retries a failed pull three times
CHROMIUM_FAST = scaled(5.0)  # seconds: Chromium alone takes about 1 s to start and exit


@pytest.fixture(scope="module")
def vm(reg: rl.RegistryLab) -> Iterator[rl.Vm]:
    with rl.add_vm(reg.lab, containers=1) as built:
        yield built


@pytest.fixture(scope="module")
def vm_daemon(reg: rl.RegistryLab, vm: rl.Vm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """netguard run (default policy) in the VM namespace: the Runner starts it in the lab's client
    namespace, so it gets a view of the lab whose client is the VM."""
    runner = Runner(dataclasses.replace(reg.lab, client=vm.ns), tmp_path_factory.mktemp("netguard-vm")).start()
    try:
        yield runner
    finally:
        runner.stop()


def test_without_netguard_the_container_reaches_both_names(reg: rl.RegistryLab, vm: rl.Vm) -> None:
    # Before the daemon starts: routing, NAT and DNS through the VM work for both names.
    for name in (ALLOWED, BLOCKED):
        r = skopeo(reg, vm.containers[0], name, "dns", "inspect")
        assert r.code == 0, r.out
        assert json.loads(r.out)["Digest"] == reg.image.manifest_digest


def test_netguard_hooks_forward_in_the_vm(vm: rl.Vm, vm_daemon: Runner) -> None:
    shown = netns.run(vm.ns, [NETGUARD, "rules", "show"]).stdout.splitlines()
    assert "-A FORWARD -j NETGUARD-FLOW" in shown and "-A FORWARD -j NETGUARD-DNS" in shown, shown


@pytest.mark.parametrize("route", ["dns", "v6"])
def test_container_copy_allowed(reg: rl.RegistryLab, vm: rl.Vm, vm_daemon: Runner, route: str,
                                tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    r = skopeo(reg, vm.containers[0], ALLOWED, route, "copy", f"oci:{out}:{rl.TAG}")
    assert r.code == 0, r.out
    assert oci_blob(out, reg.image.layer_digest) == reg.image.layer
    assert blocks(vm_daemon.events(), ALLOWED) == []


def test_container_podman_pull_allowed(reg: rl.RegistryLab, vm: rl.Vm, vm_daemon: Runner, tmp_path: Path) -> None:
    r = podman_pull(reg, vm.containers[0], ALLOWED, "dns", tmp_path)
    assert r.code == 0, r.out
    r = podman_inspect(reg, vm.containers[0], tmp_path, ALLOWED)
    [image] = json.loads(r.out)
    assert image["Digest"] == reg.image.manifest_digest and image["RootFS"]["Layers"] == [reg.image.diff_id]


def test_container_blocked_by_dns(reg: rl.RegistryLab, vm: rl.Vm, vm_daemon: Runner) -> None:
    r = skopeo(reg, vm.containers[0], BLOCKED, "dns", "inspect")
    assert r.code == 1, r.out
    assert f"lookup {BLOCKED}" in r.out and "no such host" in r.out, r.out
    assert r.took < FAST, r.out
    # The answer is judged on its way back to the container, after the VM undid the masquerade:
    # the flow is logged as the container's query.
    events = [e for e in blocks(vm_daemon.events(), BLOCKED)
              if e["source"] == "dns-answer" and e["src"] == vm.container_v4(0) and e["dst"] == reg.lab.dns_v4]
    assert events and events[-1]["registry"] == "ghcr", vm_daemon.events()


@pytest.mark.parametrize("route", ["v4", "v6"])
def test_container_blocked_by_sni(reg: rl.RegistryLab, vm: rl.Vm, vm_daemon: Runner, route: str) -> None:
    r = skopeo(reg, vm.containers[0], BLOCKED, route, "inspect")
    assert r.code == 1, r.out
    assert "connection reset by peer" in r.out, r.out
    assert r.took < FAST, r.out
    # FORWARD sees the container's own address as the source (the masquerade comes after it).
    src = vm.container_v6(0) if route == "v6" else vm.container_v4(0)
    events = [e for e in blocks(vm_daemon.events(), BLOCKED)
              if e["source"] == "sni" and e["src"] == src and e["dst"] == address(reg, BLOCKED, route)]
    assert events and events[-1]["registry"] == "ghcr", vm_daemon.events()


def test_container_podman_pull_blocked(reg: rl.RegistryLab, vm: rl.Vm, vm_daemon: Runner, tmp_path: Path) -> None:
    r = podman_pull(reg, vm.containers[0], BLOCKED, "v4", tmp_path)
    assert r.code == 125, r.out
    assert "connection reset by peer" in r.out, r.out
    assert r.took < PODMAN_FAST, r.out


@pytest.mark.parametrize("route", ["v4", "v6"])
def test_container_chromium(reg: rl.RegistryLab, vm: rl.Vm, vm_daemon: Runner, chromium_home: Path,
                            route: str) -> None:
    # Chromium's two-segment ClientHello, reassembled on FORWARD.
    ctr = vm.containers[0]
    r = chromium(ctr, chromium_home, f"https://{ALLOWED}/v2/", rules(reg, ALLOWED, route))
    assert r.code == 0 and pre_text(r.stdout) == "{}", r.out
    r = chromium(ctr, chromium_home, f"https://{BLOCKED}/v2/", rules(reg, BLOCKED, route))
    assert r.code == 0, r.out  # Chromium exits 0 even when the page failed
    assert "net::ERR_CONNECTION_RESET" in r.out and pre_text(r.stdout) is None, r.out
    assert r.took < CHROMIUM_FAST
    src = vm.container_v6(0) if route == "v6" else vm.container_v4(0)
    events = [e for e in blocks(vm_daemon.events(), BLOCKED) if e["source"] == "sni" and e["src"] == src]
    assert events and events[-1]["registry"] == "ghcr", vm_daemon.events()


@pytest.fixture
def alert_vm(reg: rl.RegistryLab, tmp_path: Path) -> Iterator[tuple[rl.Vm, Runner]]:
    """A second VM (its own netguard, block_action = "tls-alert") beside the module's."""
    with rl.add_vm(reg.lab, containers=1, index=1) as vm:
        runner = Runner(dataclasses.replace(reg.lab, client=vm.ns), tmp_path,
                        policy='allow = ["dockerhub"]\nblock_action = "tls-alert"\n').start()
        try:
            yield vm, runner
        finally:
            runner.stop()


def test_container_gets_the_tls_alert(reg: rl.RegistryLab, alert_vm: tuple[rl.Vm, Runner]) -> None:
    vm, runner = alert_vm
    r = skopeo(reg, vm.containers[0], BLOCKED, "v4", "inspect")
    assert r.code == 1, r.out
    assert any(e["source"] == "sni" for e in blocks(runner.events(), BLOCKED)), runner.events()
    # What a client in the VM itself gets (tests/integration: test_tls_alert_before_the_reset).
    assert "remote error: tls: access denied" in r.out, r.out
