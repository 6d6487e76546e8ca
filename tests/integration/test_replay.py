"""`netguard replay` over the corpus of real client captures, and over a capture made here of a
ClientHello that crossed the wire in two TCP segments (small route MTU, GSO limited to one segment)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from harness import NETGUARD, scaled
from scapy.all import TCP, rdpcap, wrpcapng  # type: ignore[attr-defined]

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

CORPUS = Path(__file__).parents[1] / "data" / "corpus"
BLOCK_TEST = 'name = "corpus"\nallow = ["dockerhub"]\nblock = ["*.blocked.test"]\n'


def replay(path: Path, *extra: str) -> list[dict[str, object]]:
    r = subprocess.run([NETGUARD, "replay", "--json", str(path), *extra], capture_output=True, text=True,
                       timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("name, flows, family", [
    ("hello-curl-nogso", 1, 6), ("hello-openssl-nogso", 1, 6), ("hello-gnutls-nogso", 1, 6),
    ("hello-python-nogso", 1, 6), ("hello-skopeo-nogso", 5, 4)])
def test_corpus_client_hellos(name: str, flows: int, family: int) -> None:
    lines = replay(CORPUS / f"{name}.pcap")
    assert len(lines) == flows
    for line in lines:
        assert line["host"] == "registry.allowed.test" and line["source"] == "sni"
        assert line["verdict"] == "allow" and line["dport"] == 443
        assert (":" in str(line["dst"])) == (family == 6)


@pytest.mark.parametrize("name", ["dns-cname-udp", "dns-cname-tcp"])
def test_corpus_dns_cname_chain(name: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(BLOCK_TEST)
    answers = [line for line in replay(CORPUS / f"{name}.pcap", "--policy", str(policy))
               if line["source"] == "dns-answer"]
    assert len(answers) == 1
    assert answers[0]["names"] == ["dl.allowed.test", "edge.allowed.test", "registry.blocked.test"]
    # The chain reaches a blocked name: the whole answer is blocked, by that name.
    assert answers[0]["verdict"] == "block" and answers[0]["host"] == "registry.blocked.test"


def test_replay_human_lines() -> None:
    r = subprocess.run([NETGUARD, "replay", str(CORPUS / "hello-openssl-nogso.pcap")], capture_output=True,
                       text=True, timeout=scaled(60))
    assert r.returncode == 0
    [line] = r.stdout.splitlines()
    assert line.startswith("tcp [fd77::10]:") and "-> [fd77::101]:443  registry.allowed.test (sni)  allow" in line


def test_replay_rejects_a_file_that_is_not_a_capture(tmp_path: Path) -> None:
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"not a capture at all, just text")
    r = subprocess.run([NETGUARD, "replay", str(bad)], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 2 and "not a pcap or pcapng" in r.stderr


@pytest.mark.root
def test_two_segment_client_hello_capture(lab: lab_mod.Lab, tmp_path: Path) -> None:
    capture = tmp_path / "two.pcap"
    # One segment per packet (no GSO aggregation) and a 400-byte path MTU: curl's ClientHello
    # becomes two segments on the wire.
    subprocess.run(["ip", "-n", lab.client, "link", "set", "eth0", "gso_max_segs", "1"], check=True)
    netns.run(lab.client, ["ip", "route", "replace", "10.77.0.0/24", "dev", "eth0", "mtu", "400"])
    try:
        dump = lab.client_popen(["tcpdump", "-i", "eth0", "-w", str(capture), "--immediate-mode", "-U",
                                 "tcp port 443"], stderr=subprocess.DEVNULL)
        time.sleep(scaled(0.5))
        r = lab.client_run(["curl", "-sS", "-4", "--cacert", str(lab.ca_file), "--resolve",
                            f"ghcr.io:443:{lab.host('ghcr.io').v4}", "https://ghcr.io/"])
        assert r.returncode == 0, r.stderr  # no netguard running: the capture is of a real pull
        time.sleep(scaled(0.3))
        lab_mod.stop(dump)
    finally:
        netns.run(lab.client, ["ip", "route", "replace", "10.77.0.0/24", "dev", "eth0"])
        subprocess.run(["ip", "-n", lab.client, "link", "set", "eth0", "gso_max_segs", "65535"], check=True)
    packets = rdpcap(str(capture))
    first, second = [bytes(p[TCP].payload) for p in packets
                     if p.haslayer(TCP) and p[TCP].dport == 443 and len(p[TCP].payload) > 0][:2]
    record = 5 + int.from_bytes(first[3:5], "big")
    assert first[0] == 0x16 and len(first) < record <= len(first) + len(second)  # split in two
    pcapng = tmp_path / "two.pcapng"
    wrpcapng(str(pcapng), packets)
    for path in (capture, pcapng):
        [line] = replay(path)
        assert line["host"] == "ghcr.io" and line["source"] == "sni" and line["verdict"] == "block"
