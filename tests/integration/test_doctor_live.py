"""doctor on this machine, for real: the kernel is probed in scratch namespaces.

The kernel's facts are not assumed (CI's 6.18 has xt NFQUEUE but no nft `queue`; Debian's 6.1 and
6.12 have both, scripts/kernels boots them): the test finds them itself first, with rules of its
own in a namespace of its own (`kernel`), and doctor must agree, name the backend `run` will use
(the best one among firewall.BACKENDS), and leave nothing behind: no namespace and no change to the
root namespace's rules (compared by reading them only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import scaled

from netguard.daemon import firewall, netns
from netguard.doctor import probe
from netguard.doctor.probe import probe_backend
from netguard.doctor.report import assess

pytestmark = pytest.mark.root

NETGUARD = str(Path(sys.executable).parent / "netguard")


def root_rules() -> dict[str, str]:
    """The root namespace's rule sets, read only, without the timestamp comments."""
    out: dict[str, str] = {}
    for argv in (["iptables-save"], ["ip6tables-save"], ["iptables-legacy-save"], ["nft", "list", "ruleset"]):
        text = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(10)).stdout
        out[argv[0]] = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return out


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=scaled(10)).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


class KernelFacts:
    """What this kernel takes, found by this test's own rules (not doctor's code) in a namespace
    it makes: the xt NFQUEUE target through each iptables tool, and the nft queue statement."""

    def __init__(self) -> None:
        ns = f"ng-kfacts-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=scaled(10))
        try:
            def takes(argv: list[str], stdin: str | None = None) -> bool:
                done = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                                      text=True, timeout=scaled(30))
                # A refusal must be the kernel's "not there", never a mistake in the rule itself.
                assert done.returncode == 0 or any(
                    why in done.stderr for why in ("No such file or directory", "not supported", "by that name")
                ), done.stderr
                return done.returncode == 0

            rule = ["-A", "OUTPUT", "-d", "192.0.2.7", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "3"]
            self.xt_nft = takes(["iptables-nft", *rule])
            self.xt_legacy = takes(["iptables-legacy", "-w", "5", *rule])
            self.nft_queue = takes(["nft", "-f", "-"], "table ip kfacts {\n chain o {\n  type filter hook output "
                                                       "priority 0;\n  ip daddr 192.0.2.7 queue num 3\n }\n}\n")
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=scaled(10))

    def backends(self) -> tuple[str, ...]:
        """Every backend this kernel can queue with, best first (doctor's order)."""
        return tuple(b for b, ok in (("nft", self.nft_queue), ("iptables-nft", self.xt_nft),
                                     ("iptables-legacy", self.xt_legacy)) if ok)

    def run_backend(self) -> str | None:
        """The one `netguard run` will use: the best that it supports."""
        return next((b for b in self.backends() if b in firewall.BACKENDS), None)


@pytest.fixture(scope="module")
def kernel() -> KernelFacts:
    return KernelFacts()


def test_live_probe_agrees_with_the_kernel_and_leaves_nothing(kernel: KernelFacts) -> None:
    assert kernel.run_backend() is not None, "this suite needs a kernel that can queue (scripts/kernels)"
    rules_before = root_rules()
    report = assess()
    after = namespaces()
    assert report.probes["xt_nfqueue_nft"].present is kernel.xt_nft
    assert report.probes["xt_nfqueue_legacy"].present is kernel.xt_legacy
    assert report.probes["nft_queue"].present is kernel.nft_queue
    assert report.probes["queue_roundtrip"].present is True, report.probes["queue_roundtrip"].detail
    assert report.verdict == "ok", report.reasons
    assert report.backend == kernel.run_backend()
    assert report.backends == kernel.backends()
    assert len(report.namespaces) == 4 and all(ns.startswith("ng-doctor-") for ns in report.namespaces)
    assert not set(report.namespaces) & after
    assert root_rules() == rules_before


def test_kernel_config_is_shown_beside_the_probe(kernel: KernelFacts) -> None:
    report = assess()
    assert report.config is not None
    # Built in (y) or a module (m) where the kernel takes the rule; left out where it does not.
    assert (report.config.get("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "n") in ("y", "m")) is kernel.xt_nft
    assert (report.config.get("CONFIG_NFT_QUEUE", "n") in ("y", "m")) is kernel.nft_queue


def test_probe_backend(kernel: KernelFacts) -> None:
    assert probe_backend() == kernel.run_backend()


def test_cli_json_exit_code_and_no_leftovers(kernel: KernelFacts) -> None:
    rules_before = root_rules()
    done = subprocess.run([NETGUARD, "doctor", "--json"], capture_output=True, text=True, timeout=scaled(30))
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["verdict"] == "ok" and out["backend"] == kernel.run_backend()
    assert not set(out["namespaces"]) & namespaces()
    assert root_rules() == rules_before


def test_root_without_cap_sys_admin_says_why_and_makes_no_namespace() -> None:
    """Root in a sandbox that dropped CAP_SYS_ADMIN (like the systemd unit) cannot make namespaces:
    doctor says so for every probe instead of failing half-way through `ip netns add`."""
    before = namespaces()
    done = subprocess.run(["setpriv", "--bounding-set=-sys_admin", NETGUARD, "doctor", "--json"],
                          capture_output=True, text=True, timeout=scaled(30))
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
                           "ng-doctor-notmine"], capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 2 and "refusing" in done.stderr
    assert root_rules() == rules_before


def test_nft_rules_parse_and_only_queue_is_refused(kernel: KernelFacts) -> None:
    """The nft texts are valid: a kernel without nft queue refuses only the `queue` statement
    (ENOENT), never the syntax; one with it takes them; the ct/reject set loads."""
    argv, stdin = probe._roundtrip_rule("nft")
    assert stdin is not None
    with netns.scratch("doctor") as ns:
        for text in (stdin, probe.NFT_QUEUE_RULES):
            queue = probe._in_ns(ns, argv, text)
            if kernel.nft_queue:
                assert queue.present is True, queue
            else:
                assert queue.present is False and "No such file or directory" in queue.detail, queue
        assert probe._in_ns(ns, argv, probe.NFT_CT_RULES).present is True
        for text in (stdin, probe.NFT_QUEUE_RULES):
            loaded = probe._in_ns(ns, argv, text.replace(f"queue num {probe.PROBE_QUEUE}", "accept")
                                  .replace(" bypass", "").replace("ng_probe", "ng_probe_accept"))
            assert loaded.present is True, loaded


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nft", None])
def test_queue_round_trip_per_backend(kernel: KernelFacts, backend: str | None) -> None:
    """Where the kernel takes the backend's rule the datagram arrives; where it refuses the rule
    the round trip says so (False); without a backend only the bind is tried (None)."""
    roundtrip = None if backend is None else backend in kernel.backends()
    spaces = probe._Namespaces()
    found = probe._queue_group(backend, spaces)
    assert found["nfnetlink_queue"].present is True
    assert found["queue_roundtrip"].present is roundtrip, found["queue_roundtrip"].detail
    assert not set(spaces.names) & namespaces()
