"""Shared test settings. Tests marked `root` need root and network namespaces; they skip on a
developer machine without root, but fail under CI (CI=true), where they must run."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") and any(item.get_closest_marker("root") for item in items):
        raise pytest.UsageError("CI must run as root: the integration and e2e tests may not skip there")
    skip = pytest.mark.skip(reason="needs root and network namespaces")
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)
