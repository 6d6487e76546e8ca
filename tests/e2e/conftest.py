"""Fixtures for the e2e tests: one registry lab (netguard.lab.registry: docker-registry with an
image pushed by skopeo) per module, and `netguard run` in its client namespace (the integration
tests' Runner, imported from tests/integration/harness.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from e2eclients import nss_trust
from harness import Runner

from netguard.lab import registry as registrylab

# Where skopeo and podman write as root when not pointed elsewhere; the clients run with a private
# /var/lib (registrylab.client_argv), so none of these may appear on the machine.
HOST_STATE = (Path("/var/lib/containers"), Path("/run/containers"), Path("/var/tmp/containers"))


@pytest.fixture(scope="session", autouse=True)
def no_state_left_on_the_machine() -> Iterator[None]:
    before = {p for p in HOST_STATE if p.exists()}
    yield
    after = {p for p in HOST_STATE if p.exists()}
    assert after <= before, f"the e2e clients left state on the machine: {sorted(map(str, after - before))}"


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registrylab.RegistryLab]:
    with registrylab.build(tmp_path_factory.mktemp("reglab")) as built:
        yield built


@pytest.fixture(scope="module")
def daemon(reg: registrylab.RegistryLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """netguard run with the default policy (Docker Hub allowed, GHCR blocked) in the client namespace."""
    runner = Runner(reg.lab, tmp_path_factory.mktemp("netguard")).start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def chromium_home(reg: registrylab.RegistryLab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HOME for Chromium, with an NSS db ($HOME/.pki/nssdb) that trusts the lab CA."""
    home = tmp_path_factory.mktemp("chromium-home")
    nss_trust(home, reg.lab.ca_file)
    return home
