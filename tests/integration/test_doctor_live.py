"""doctor on this machine, for real: the kernel is probed in scratch namespaces.

This machine (testbed notes): kernel 6.18 with xt NFQUEUE (iptables-nft and iptables-legacy) but no
nft `queue` statement. doctor must say so, pick iptables-nft, and leave nothing behind: no namespace
and no change to the root namespace's rules (compared by reading them only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netguard.daemon import netns
from netguard.doctor import probe
from netguard.doctor.probe import probe_backend
from netguard.doctor.report import assess

pytestmark = pytest.mark.root

NETGUARD = str(Path(sys.executable).parent / "netguard")


def root_rules() -> dict[str, str]:
    """The root namespace's rule sets, read only, without the timestamp comments."""
    out: dict[str, str] = {}
    for argv in (["iptables-save"], ["ip6tables-save"], ["iptables-legacy-save"], ["nft", "list", "ruleset"]):
        text = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        out[argv[0]] = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return out


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def test_live_probe_finds_xt_nfqueue_but_no_nft_queue_and_leaves_nothing() -> None:
    rules_before = root_rules()
    report = assess()
    after = namespaces()
    assert report.probes["xt_nfqueue_nft"].present is True
    assert report.probes["xt_nfqueue_legacy"].present is True
    assert report.probes["nft_queue"].present is False
    assert report.probes["queue_roundtrip"].present is True, report.probes["queue_roundtrip"].detail
    assert report.verdict == "ok", report.reasons
    assert report.backend == "iptables-nft"
    assert report.backends == ("iptables-nft", "iptables-legacy")
    assert len(report.namespaces) == 4 and all(ns.startswith("ng-doctor-") for ns in report.namespaces)
    assert not set(report.namespaces) & after
    assert root_rules() == rules_before


def test_kernel_config_is_shown_beside_the_probe() -> None:
    report = assess()
    assert report.config is not None
    assert report.config["CONFIG_NETFILTER_XT_TARGET_NFQUEUE"] == "y"
    assert report.config.get("CONFIG_NFT_QUEUE", "n") == "n"


def test_probe_backend() -> None:
    assert probe_backend() == "iptables-nft"


def test_cli_json_exit_code_and_no_leftovers() -> None:
    rules_before = root_rules()
    done = subprocess.run([NETGUARD, "doctor", "--json"], capture_output=True, text=True, timeout=30)
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["verdict"] == "ok" and out["backend"] == "iptables-nft"
    assert not set(out["namespaces"]) & namespaces()
    assert root_rules() == rules_before


def test_root_without_cap_sys_admin_says_why_and_makes_no_namespace() -> None:
    """Root in a sandbox that dropped CAP_SYS_ADMIN (like the systemd unit) cannot make namespaces:
    doctor says so for every probe instead of failing half-way through `ip netns add`."""
    before = namespaces()
    done = subprocess.run(["setpriv", "--bounding-set=-sys_admin", NETGUARD, "doctor", "--json"],
                          capture_output=True, text=True, timeout=30)
    out = json.loads(done.stdout)
    probed = {f["name"]: f for f in out["features"]}
    assert probed["cap_net_admin"]["present"] is True
    assert probed["xt_nfqueue_nft"]["present"] is None
    assert probed["xt_nfqueue_nft"]["detail"] == "no CAP_SYS_ADMIN: the probes need to create network namespaces"
    assert out["namespaces"] == [] and namespaces() == before
    assert done.returncode == 2 and any("no CAP_SYS_ADMIN" in r for r in out["reasons"])


def test_queue_child_refuses_outside_its_namespace() -> None:
    """Started by hand in the root namespace, the child installs nothing."""
    rules_before = root_rules()
    done = subprocess.run([sys.executable, "-m", "netguard.doctor.probe", "queue-child", "iptables-nft",
                           "ng-doctor-notmine"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "refusing" in done.stderr
    assert root_rules() == rules_before


def test_nft_rules_parse_and_only_queue_is_refused() -> None:
    """The nft texts are valid: this kernel refuses only the `queue` statement (ENOENT), never the
    syntax; the ct/reject set loads."""
    argv, stdin = probe._roundtrip_rule("nft-queue")
    assert stdin is not None
    with netns.scratch("doctor") as ns:
        for text in (stdin, probe.NFT_QUEUE_RULES):
            refused = probe._in_ns(ns, argv, text)
            assert refused.present is False and "No such file or directory" in refused.detail, refused
        assert probe._in_ns(ns, argv, probe.NFT_CT_RULES).present is True
        for text in (stdin, probe.NFT_QUEUE_RULES):
            loaded = probe._in_ns(ns, argv, text.replace(f"queue num {probe.PROBE_QUEUE}", "accept")
                                  .replace(" bypass", "").replace("ng_probe", "ng_probe_accept"))
            assert loaded.present is True, loaded


@pytest.mark.parametrize(("backend", "roundtrip"), [
    ("iptables-nft", True), ("iptables-legacy", True),
    ("nft-queue", False),  # this kernel refuses the rule: the round trip must say so
    (None, None),  # no backend: bind only
])
def test_queue_round_trip_per_backend(backend: str | None, roundtrip: bool | None) -> None:
    spaces = probe._Namespaces()
    found = probe._queue_group(backend, spaces)
    assert found["nfnetlink_queue"].present is True
    assert found["queue_roundtrip"].present is roundtrip, found["queue_roundtrip"].detail
    assert not set(spaces.names) & namespaces()
