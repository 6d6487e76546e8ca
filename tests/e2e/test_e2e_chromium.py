"""Headless Chromium against the real registry under an allowed name and a blocked one, with
netguard run's default policy in the client namespace. Chromium's ClientHello carries a post-quantum
key share (about 2 KB) and spans two TCP segments, so netguard must reassemble it before deciding.
Chromium exits 0 even when the page failed: the verdict is read from what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2eclients import (
    ALLOWED,
    BLOCKED,
    address,
    blocks,
    capture,
    chromium,
    client_payloads,
    hello_segments,
    pre_text,
    rules,
)
from harness import Runner, scaled

from netguard.lab import registry as rl

pytestmark = pytest.mark.root

FAST = scaled(5.0)  # seconds: a blocked page fails at once; Chromium alone takes about 1 s to start and exit
TAGS = f"/v2/{rl.REPO}/tags/list"


@pytest.mark.parametrize("route", ["dns", "v4", "v6"])
def test_allowed_page(reg: rl.RegistryLab, daemon: Runner, chromium_home: Path, route: str) -> None:
    r = chromium(reg.lab.client, chromium_home, f"https://{ALLOWED}{TAGS}", rules(reg, ALLOWED, route))
    assert r.code == 0, r.out
    text = pre_text(r.stdout)
    assert text is not None, r.out
    assert json.loads(text) == {"name": rl.REPO, "tags": [rl.TAG]}
    assert blocks(daemon.events(), ALLOWED) == []


def test_blocked_by_dns(reg: rl.RegistryLab, daemon: Runner, chromium_home: Path) -> None:
    r = chromium(reg.lab.client, chromium_home, f"https://{BLOCKED}/v2/")
    assert r.code == 0, r.out  # Chromium exits 0 even when the page failed: its output tells
    assert "net::ERR_NAME_NOT_RESOLVED" in r.out, r.out
    assert pre_text(r.stdout) is None, r.stdout
    assert r.took < FAST
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "dns-answer"]
    assert events and events[-1]["registry"] == "ghcr", daemon.events()


@pytest.mark.parametrize("route", ["v4", "v6"])
def test_blocked_by_sni(reg: rl.RegistryLab, daemon: Runner, chromium_home: Path, route: str) -> None:
    r = chromium(reg.lab.client, chromium_home, f"https://{BLOCKED}/v2/", rules(reg, BLOCKED, route))
    assert r.code == 0, r.out
    assert "net::ERR_CONNECTION_RESET" in r.out, r.out
    assert pre_text(r.stdout) is None, r.stdout
    assert r.took < FAST
    dst = address(reg, BLOCKED, route)
    events = [e for e in blocks(daemon.events(), BLOCKED) if e["source"] == "sni" and e["dst"] == dst]
    assert events and events[-1]["registry"] == "ghcr", daemon.events()


@pytest.mark.parametrize("name", [ALLOWED, BLOCKED])
def test_client_hello_spans_two_segments(reg: rl.RegistryLab, daemon: Runner, chromium_home: Path, tmp_path: Path,
                                         name: str) -> None:
    # What reaches the registry: the allowed ClientHello whole, in two segments (netguard had to
    # reassemble it); of the blocked one never all of it.
    addr = address(reg, name, "v4")
    with capture(reg.lab.registry, tmp_path / "hello.pcap", f"tcp and dst host {addr} and dst port 443") as pcap:
        r = chromium(reg.lab.client, chromium_home, f"https://{name}/v2/", rules(reg, name, "v4"))
    flows = client_payloads(pcap)
    if name == ALLOWED:
        assert pre_text(r.stdout) == "{}", r.out
        assert flows
        for payloads in flows.values():
            need, sizes = hello_segments(payloads)
            assert len(sizes) >= 2 and sum(sizes) == need, (need, sizes)
    else:
        assert "net::ERR_CONNECTION_RESET" in r.out, r.out
        for payloads in flows.values():
            need, sizes = hello_segments(payloads)
            assert sum(sizes) < need, (need, sizes)
