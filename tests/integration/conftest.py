"""Fixtures for the integration tests: one namespace lab (netguard.lab.lab) per module, checked
gone (namespaces and their /etc/netns files) after its teardown."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netguard.lab import lab as lab_mod


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_mod.Lab]:
    with lab_mod.build(workdir=tmp_path_factory.mktemp("lab")) as built:
        yield built
    names = [built.client, built.dns, built.registry, built.bridge, *built.containers]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not set(names) & set(left), f"lab namespaces left behind: {set(names) & set(left)}"
    assert not any(Path("/etc/netns", n).exists() for n in names)
