"""skopeo (Go) through a SOCKS5 proxy that asks for a username and password (microsocks, in the
registry namespace), to the real registry under an allowed name (registry-1.docker.io) and a
blocked one (ghcr.io): HTTPS_PROXY=socks5://user:pass@proxy:port, the client resolving nothing
itself (Go's SOCKS5 dialer hands the proxy the host name). Without netguard the blocked name serves
the image through the proxy; with netguard run's default policy in the client namespace it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2eclients import ALLOWED, BLOCKED, Result, blocks, oci_blob, ref, run
from harness import Runner

from netguard.lab import proxies
from netguard.lab import registry as rl

pytestmark = pytest.mark.root

FAST = 2.0  # seconds: a blocked skopeo fails at once (a reset); a silent drop takes 20 s
PROXY_HOST = "www.example.test"  # the proxy listens on every address of the registry namespace


@pytest.fixture(scope="module")
def proxied(reg: rl.RegistryLab) -> rl.RegistryLab:
    if proxies.missing():
        pytest.fail(f"scripts/bootstrap --test installs these; missing: {', '.join(proxies.missing())}")
    proxies.start(reg.lab)
    return reg


def skopeo_via_socks(reg: rl.RegistryLab, name: str, *args: str) -> Result:
    sub, *rest = args
    argv = rl.skopeo_argv(reg, sub, "--cert-dir" if sub == "inspect" else "--src-cert-dir", str(reg.certs),
                          f"docker://{ref(name)}", *rest)
    url = f"socks5://{proxies.USER}:{proxies.PASSWORD}@{reg.lab.address(PROXY_HOST, 4)}:{proxies.MICROSOCKS_AUTH}"
    return run(reg, reg.lab.client, argv, env={"HTTPS_PROXY": url, "https_proxy": url, "NO_PROXY": "", "no_proxy": ""})


def test_without_netguard_the_proxy_serves_the_blocked_name(proxied: rl.RegistryLab) -> None:
    r = skopeo_via_socks(proxied, BLOCKED, "inspect")
    assert r.code == 0, r.out
    assert json.loads(r.out)["Digest"] == proxied.image.manifest_digest


def test_copy_through_the_proxy(proxied: rl.RegistryLab, daemon: Runner, tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    r = skopeo_via_socks(proxied, ALLOWED, "copy", f"oci:{out}:{rl.TAG}")
    assert r.code == 0, r.out
    assert oci_blob(out, proxied.image.layer_digest) == proxied.image.layer
    assert blocks(daemon.events(), ALLOWED) == []
    log = (proxied.lab.workdir / "proxies" / "microsocks-auth.log").read_text()
    assert f"connected to {ALLOWED}:443" in log, log  # the pull went through the proxy
    r = skopeo_via_socks(proxied, BLOCKED, "copy", f"oci:{tmp_path / 'blocked'}:{rl.TAG}")
    assert r.code == 1 and "connection reset by peer" in r.out, r.out
    assert r.took < FAST, r.out
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "socks5"]
    assert events and events[-1]["registry"] == "ghcr" and events[-1]["dport"] == proxies.MICROSOCKS_AUTH, \
        daemon.events()[-3:]
