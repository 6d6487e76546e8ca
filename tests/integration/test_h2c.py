"""HTTP/2 cleartext with prior knowledge (red-team pass on issue 10): the host of every request is
in its HPACK-coded :authority. curl --http2-prior-knowledge to a plain-HTTP registry pinned with
--resolve (no DNS answer tells the address) must end blocked for a blocked name and reach the
server for an allowed one; netguard in a namespace lab with each iptables backend and both families.
The server is a small h2c server made with the `h2` library (h2cserver.py) in the registry namespace.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Runner, backends_here, daemon_with, scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
PORT = 5080  # an insecure registry's port, plain HTTP/2
SERVER = str(Path(__file__).with_name("h2cserver.py"))
CURL_RESET = 56  # "Failure when receiving network data": the connection was reset


@pytest.fixture(scope="module")
def h2c(lab: lab_mod.Lab) -> Iterator[None]:
    proc = subprocess.Popen(["ip", "netns", "exec", lab.registry, sys.executable, SERVER, str(PORT)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module", params=backends_here())
def daemon(lab: lab_mod.Lab, h2c: None, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    with daemon_with(lab, tmp_path_factory.mktemp("h2c"), request.param) as runner:
        yield runner


def fetch(lab: lab_mod.Lab, name: str, family: int) -> tuple[int, str]:
    timeout = scaled(10)
    r = netns.run(lab.client, ["curl", "-sS", "-m", f"{timeout:g}", f"-{family}", "--http2-prior-knowledge",
                               "--resolve", f"{name}:{PORT}:{lab.address(name, family)}",
                               f"http://{name}:{PORT}/v2/"], check=False, timeout=timeout + scaled(10))
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("family", [4, 6])
def test_h2c_prior_knowledge_is_judged_by_its_authority(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    code, out = fetch(lab, BLOCKED, family)
    assert code == CURL_RESET, out
    events = [e for e in daemon.events() if e["dst"] == lab.address(BLOCKED, family)]
    assert events and events[-1]["source"] == "h2-authority" and events[-1]["verdict"] == "block", events[-1:]
    assert fetch(lab, ALLOWED, family) == (0, f"h2c {ALLOWED}:{PORT}\n")
