"""Fixtures for the integration tests: one namespace lab (netguard.shell.lab) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netguard.shell import lab as lab_mod


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_mod.Lab]:
    with lab_mod.build(workdir=tmp_path_factory.mktemp("lab")) as built:
        yield built

