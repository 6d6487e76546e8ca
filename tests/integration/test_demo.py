"""`netguard demo` end to end: it succeeds, shows an allowed and a blocked pull, and leaves nothing."""

from __future__ import annotations

import re
import subprocess

import pytest
from harness import NETGUARD, scaled

pytestmark = pytest.mark.root


def test_demo() -> None:
    r = subprocess.run([NETGUARD, "demo"], capture_output=True, text=True, timeout=scaled(120))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "hello from registry-1.docker.io" in out
    assert "Could not resolve host: ghcr.io" in out and "Connection reset by peer" in out
    assert "EDE: 15 (Blocked)" in out and "block ghcr.io (sni)" in out
    names = re.findall(r"\bng-[a-z]+-[0-9a-f]{6}\b", out.splitlines()[0])
    assert len(names) == 3
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in left for n in names)
