"""Fixtures for the e2e tests: one registry lab (netguard.shell.registrylab: docker-registry with an
image pushed by skopeo) per module, and `netguard run` in its client namespace (the integration
tests' Runner, imported from tests/integration/harness.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from harness import Runner

from netguard.shell import registrylab


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
