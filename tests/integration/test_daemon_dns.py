"""netguard run on the real kernel, DNS and learned addresses, with both iptables backends: address
conflicts (curl to an unknown or allowed name pinned, or remapped by a hosts file, to an address DNS
gave only for a blocked registry: reset, with a reason naming the conflict; a name that DNS also
gave that address passes), HTTPS records (dig, dnsmasq's raw dns-rr records) whose target is
judged and whose hints are learned, and DNS answers from a server on port 5353 (UDP and TCP)."""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Runner, curl

from netguard.daemon import firewall, netns
from netguard.lab import lab as lab_mod

pytestmark = pytest.mark.root

HUB, GHCR, GITLAB, SHADOW = "registry-1.docker.io", "ghcr.io", "registry.gitlab.com", "registry.shadow.test"
UNKNOWN = "www.unknown.test"  # no DNS record: reached only pinned with --resolve
MIRROR = "mirror.allowed.test"  # DNS gives it ghcr.io's addresses too: a shared CDN address
SVC, ALIAS = "svc.allowed.test", "alias.allowed.test"  # HTTPS records only
ALT_PORT = 5353
FAST = 1.0  # seconds: a blocked client fails faster than this (a reset, not a timeout)
POLICY = f'name = "dnstest"\nallow = ["dockerhub"]\nblock = ["{SHADOW}"]\n'

HOSTS = (*lab_mod.DEFAULT_HOSTS,
         lab_mod.Host(SHADOW, lab_mod.NET4 + "106", lab_mod.NET6 + "106"),
         lab_mod.Host(GITLAB, lab_mod.NET4 + "107", lab_mod.NET6 + "107"))


def wire_name(name: str) -> bytes:
    if name == ".":
        return b"\x00"
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def https_rdata(priority: int, target: str, v4: tuple[str, ...] = (), v6: tuple[str, ...] = ()) -> bytes:
    """SVCB/HTTPS rdata (RFC 9460): priority, TargetName, alpn "h2", then the hints."""
    import ipaddress

    out = struct.pack("!H", priority) + wire_name(target)
    if priority:
        out += struct.pack("!HH", 1, 3) + b"\x02h2"
    for key, addresses in ((4, v4), (6, v6)):
        if addresses:
            packed = b"".join(ipaddress.ip_address(a).packed for a in addresses)
            out += struct.pack("!HH", key, len(packed)) + packed
    return out


SHADOW_HOST = HOSTS[-2]
DNS_RR = ((SVC, 65, https_rdata(1, SHADOW, (SHADOW_HOST.v4,), (SHADOW_HOST.v6,))),  # hints only here
          (ALIAS, 65, https_rdata(0, GHCR)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_mod.Lab]:
    with lab_mod.build(HOSTS, workdir=tmp_path_factory.mktemp("dnslab"), shared=((MIRROR, GHCR),), dns_rr=DNS_RR,
                       alt_dns_port=ALT_PORT) as built:
        yield built


@pytest.fixture(scope="module")
def container(lab: lab_mod.Lab) -> str:
    return lab_mod.add_container(lab)


@pytest.fixture(scope="module", params=firewall.IPTABLES_BACKENDS)
def daemon(lab: lab_mod.Lab, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Runner]:
    runner = Runner(lab, tmp_path_factory.mktemp("dns"), policy=POLICY, name=request.param,
                    args=("--backend", request.param)).start()
    try:
        yield runner
    finally:
        assert runner.stop() == 0


def dig(lab: lab_mod.Lab, *args: str, ns: str | None = None) -> str:
    return netns.run(ns or lab.client, ["dig", "+time=2", "+tries=1", *args], check=False).stdout


def pinned(lab: lab_mod.Lab, name: str, address: str, *, ns: str | None = None) -> tuple[float, int, str]:
    """curl -k https://NAME/ pinned to address (SNI and Host say NAME; TLS verification off)."""
    host = f"[{address}]" if ":" in address else address
    start = time.monotonic()
    r = netns.run(ns or lab.client, ["curl", "-sS", "-k", "-m", "10", "--resolve", f"{name}:443:{host}",
                                     f"https://{name}/"], check=False, timeout=30)
    return time.monotonic() - start, r.returncode, r.stdout + r.stderr


def reset(result: tuple[float, int, str]) -> bool:
    took, code, out = result
    return code != 0 and "reset" in out.lower() and took < FAST


def conflict_event(daemon: Runner, address: str, name: str, blocked: str) -> dict[str, Any] | None:
    e: dict[str, Any]
    for e in reversed(daemon.events()):
        if (e["dst"] == address and e["verdict"] == "block" and e["source"] == "dns-table" and e["host"] == blocked
                and "address conflict" in e["reason"] and name in e["reason"]):
            return e
    return None


def qtype(family: int) -> str:
    return "A" if family == 4 else "AAAA"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", [UNKNOWN, HUB], ids=["unknown-name", "allowed-catalog-name"])
def test_a_name_pinned_to_an_address_dns_gave_only_for_a_blocked_registry(lab: lab_mod.Lab, daemon: Runner,
                                                                         name: str, family: int) -> None:
    address = lab.address(GHCR, family)
    assert "status: NXDOMAIN" in dig(lab, GHCR, qtype(family))  # rewritten, and learned
    assert reset(pinned(lab, name, address))
    event = conflict_event(daemon, address, name, GHCR)
    assert event is not None and event["registry"] == "ghcr", daemon.events()[-3:]
    # The same name pinned to an address DNS never gave for a blocked name passes (nothing else differs).
    _, code, out = pinned(lab, name, lab.address("www.example.test", family))
    assert code == 0 and "hello from" in out, out


@pytest.mark.parametrize("family", [4, 6])
def test_a_policy_block_entry_is_evidence_as_well(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    assert "status: NXDOMAIN" in dig(lab, SHADOW, qtype(family))
    address = lab.address(SHADOW, family)
    assert reset(pinned(lab, HUB, address))
    event = conflict_event(daemon, address, HUB, SHADOW)
    assert event is not None and event["registry"] is None


@pytest.mark.parametrize("family", [4, 6])
def test_a_shared_address_lets_the_name_decide(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    address = lab.address(GHCR, family)
    assert "status: NXDOMAIN" in dig(lab, GHCR, qtype(family))
    # DNS gives the mirror the same address: through DNS, verified TLS, it passes.
    _, code, out = curl(lab, MIRROR, family, pin=False)
    assert code == 0 and out.strip() == f"hello from {MIRROR}", out
    # ... while a name DNS never gave that address does not.
    assert reset(pinned(lab, UNKNOWN, address))


@pytest.mark.parametrize("family", [4, 6])
def test_a_hosts_file_remap_in_a_container_is_reset(lab: lab_mod.Lab, container: str, daemon: Runner,
                                                    family: int) -> None:
    ctr = container
    address = lab.address(GHCR, family)
    Path("/etc/netns", ctr, "hosts").write_text(f"{address} {HUB}\n")
    assert "status: NXDOMAIN" in dig(lab, GHCR, qtype(family), ns=ctr)  # through FORWARD
    start = time.monotonic()
    r = netns.run(ctr, ["curl", "-sS", "-k", "-m", "10", f"-{family}", f"https://{HUB}/"], check=False, timeout=30)
    assert r.returncode != 0 and "reset" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    assert time.monotonic() - start < FAST
    assert conflict_event(daemon, address, HUB, GHCR) is not None


@pytest.mark.parametrize("family", [4, 6])
def test_an_https_record_target_is_judged_and_its_hints_learned(lab: lab_mod.Lab, daemon: Runner,
                                                                 family: int) -> None:
    out = dig(lab, SVC, "HTTPS")
    assert "status: NXDOMAIN" in out and f"{SHADOW} is blocked by dnstest" in out, out
    # Only the HTTPS record's hints gave this address (the test asks no A or AAAA for it).
    address = lab.address(SHADOW, family)
    assert reset(pinned(lab, SVC, address))
    assert conflict_event(daemon, address, SVC, SHADOW) is not None
    out = dig(lab, ALIAS, "HTTPS")  # AliasMode
    assert "status: NXDOMAIN" in out and f"{GHCR} is blocked" in out, out


@pytest.mark.parametrize("server", [4, 6])
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_dns_from_port_5353_is_judged_and_learned(lab: lab_mod.Lab, daemon: Runner, transport: str,
                                                  server: int) -> None:
    at = "@" + (lab.dns_v4 if server == 4 else lab.dns_v6)
    out = dig(lab, at, "-p", str(ALT_PORT), transport, GITLAB, "A")
    assert "status: NXDOMAIN" in out and "EDE: 15 (Blocked)" in out, out
    # Learned although only port 5353 ever gave it: fronting to it is reset.
    assert reset(pinned(lab, HUB, lab.address(GITLAB, 4)))
    assert conflict_event(daemon, lab.address(GITLAB, 4), HUB, GITLAB) is not None
    # An allowed name's answer from there passes unchanged.
    assert dig(lab, at, "-p", str(ALT_PORT), transport, "+short", HUB, "A").split() == [lab.address(HUB, 4)]


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7777))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

UDP_CLIENT = """
import socket, sys
for i in range(50):  # 50 flows, 3 exchanges each
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((sys.argv[1], 7777))
    for _ in range(3):
        s.send(bytes(range(200)))
        assert s.recv(2048) == bytes(range(200))
    s.close()
print("ok")
"""


def header_rules(lab: lab_mod.Lab, backend: str) -> dict[str, int]:
    """Packet counters of the rules that send other ports' DNS answers to the queue: the goto that
    tests a reply, and each header test, per family."""
    counts: dict[str, int] = {}
    for family, tool in ((4, "iptables"), (6, "ip6tables")):
        kind = "nft" if backend == "iptables-nft" else "legacy"
        saved = netns.run(lab.client, [f"{tool}-{kind}-save", "-c", "-t", "filter"]).stdout
        for line in saved.splitlines():
            if line.startswith("[") and ("-g NETGUARD-DNS-ANY" in line or line.split("] ", 1)[1].startswith(
                    "-A NETGUARD-DNS-ANY")):
                which = "goto" if "-g NETGUARD-DNS-ANY" in line else line.split(" -p ")[1].split()[0]
                counts[f"{which}{family}"] = int(line[1:].split(":")[0])
    return counts


@pytest.mark.parametrize("family", [4, 6])
def test_only_dns_responses_are_queued_by_their_header(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    backend = daemon.args[1]
    server = lab.address("www.example.test", family)
    lab.procs.append(subprocess.Popen(netns.exec_argv(lab.registry, ["python3", "-c", UDP_ECHO, server]),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # killed with the lab
    time.sleep(0.3)
    before = header_rules(lab, backend)
    # TLS, plain HTTP and non-DNS UDP: their replies are tested, and none is queued.
    _, code, out = curl(lab, HUB, family, pin=False)
    assert code == 0, out
    host = f"[{server}]" if family == 6 else server
    assert netns.run(lab.client, ["curl", "-sS", "-m", "5", f"http://{host}/"], check=False).returncode == 0
    assert netns.run(lab.client, ["python3", "-c", UDP_CLIENT, server], check=False).stdout.strip() == "ok"
    after = header_rules(lab, backend)
    assert after[f"goto{family}"] > before[f"goto{family}"] + 150  # every echo reply was tested ...
    assert {k: v for k, v in after.items() if not k.startswith("goto")} == \
        {k: v for k, v in before.items() if not k.startswith("goto")}  # ... and none queued
    # A DNS answer from port 5353 is.
    at = "@" + (lab.dns_v4 if family == 4 else lab.dns_v6)
    assert dig(lab, at, "-p", str(ALT_PORT), "+short", "www.example.test", "A").split() == [lab.address(
        "www.example.test", 4)]
    assert header_rules(lab, backend)[f"udp{family}"] == after[f"udp{family}"] + 1
