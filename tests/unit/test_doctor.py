"""doctor without root: fixture trees -> environment, gates, verdict; the pure decision table.

Fixture trees cannot be probed here (a WSL or LinuxKit kernel is not this kernel), so each brings
its probe results in facts.json, written from /work/shared/reference/facts.md (see
tests/data/doctor/README.md). The live probe is covered by tests/integration/test_doctor_live.py.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from netguard.cli import main
from netguard.daemon import firewall
from netguard.doctor import probe
from netguard.doctor.report import (
    FEATURE_NAMES,
    FEATURES,
    Environment,
    KernelFiles,
    Probe,
    Report,
    assess,
    config_value,
    decide,
    detect_environment,
    gates,
    load_facts,
    parse_kernel_config,
    parse_version,
    read_kernel_config,
    render,
    to_json_text,
)

DATA = Path(__file__).parent.parent / "data" / "doctor"


def fixture_report(name: str) -> Report:
    env, probes = load_facts(DATA / name / "facts.json")
    return assess(DATA / name / "root", env, live=False, probes=probes, probe_source="facts.json")


# name: (kind, version, gate titles by status, verdict, best usable backend (a kernel fact; `run` takes the
# first of report.backends it supports), networking, config source)
Case = tuple[str, tuple[int, int, int], dict[str, list[str]], str, str | None, str | None, str]
CASES: dict[str, Case] = {
    "wsl2-4.19": ("wsl2", (4, 19, 128), {"fail": ["WSL 2 kernel 4.19 < 5.4"], "warn": ["WSL 2 kernel 4.19 < 5.15"]},
                  "cannot", None, None, "/proc/config.gz"),
    "wsl2-5.10": ("wsl2", (5, 10, 102), {"fail": [], "warn": ["WSL 2 kernel 5.10 < 5.15"]},
                  "cannot", None, "nat", "/proc/config.gz"),
    "wsl2-5.15": ("wsl2", (5, 15, 167), {"fail": [], "warn": []}, "cannot", None, "nat", "/proc/config.gz"),
    "wsl2-6.6": ("wsl2", (6, 6, 87), {"fail": [], "warn": []}, "ok", "nft", "mirrored", "/proc/config.gz"),
    "wsl2-6.18": ("wsl2", (6, 18, 33), {"fail": [], "warn": []}, "ok", "nft", None, "no kernel config"),
    "docker-desktop-6.10": ("docker-desktop", (6, 10, 14), {"fail": [], "warn": []}, "ok", "nft", None,
                            "/proc/config.gz"),
    "vagrant-ubuntu-20.04": ("vagrant", (5, 4, 0), {"fail": [], "warn": []}, "ok", "nft", None,
                             "/boot/config-5.4.0-42-generic"),
    "vagrant-ubuntu-22.04": ("vagrant", (5, 15, 0), {"fail": [], "warn": []}, "ok", "nft", None,
                             "/boot/config-5.15.0-91-generic"),
    "debian-plain": ("linux", (6, 1, 0), {"fail": [], "warn": []}, "ok", "nft", None,
                     "/boot/config-6.1.0-18-amd64"),
    "wsl1": ("wsl1", (4, 4, 0), {"fail": ["WSL 1 has no Linux kernel"], "warn": []}, "cannot", None, None,
             "no kernel config"),
    "container-podman": ("container", (6, 1, 0), {"fail": [], "warn": []}, "cannot", "nft", None,
                         "no kernel config"),
}


def test_every_fixture_has_a_case() -> None:
    on_disk = {p.name for p in DATA.iterdir() if (p / "facts.json").exists()}
    assert on_disk == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_environment_gates_verdict(name: str) -> None:
    kind, version, gate_titles, verdict, backend, networking, config_source = CASES[name]
    report = fixture_report(name)
    assert report.environment.kind == kind
    assert report.environment.version == version
    for status in ("fail", "warn"):
        assert [g.title for g in report.gates if g.status == status] == gate_titles[status], status
    assert report.verdict == verdict
    assert (report.backends[0] if report.backends else None) == backend
    assert report.backend == next((b for b in report.backends if b in firewall.BACKENDS), None)
    assert report.environment.wsl_networking == networking
    assert report.config_source.startswith(config_source)
    assert bool(report.reasons) == (verdict != "ok")
    assert report.exit_code == {"ok": 0, "degraded": 1, "cannot": 2}[verdict]


def test_wsl2_reasons_say_which_kernel_to_install() -> None:
    for name in ("wsl2-4.19", "wsl2-5.10", "wsl2-5.15"):
        reasons = " ".join(fixture_report(name).reasons)
        assert "wsl --update" in reasons and "2.5.1" in reasons and "6.6" in reasons, name
        assert reasons.count("wsl --update") == 1, name  # said once, after the reasons


NO_QUEUE = {"nft_queue": False, "xt_nfqueue_nft": False, "xt_nfqueue_legacy": False}
DEBIAN_CONFIG = {"CONFIG_NETFILTER_NETLINK_QUEUE": "m", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "m",
                 "CONFIG_IP6_NF_IPTABLES": "m", "CONFIG_IP6_NF_TARGET_REJECT": "m", "CONFIG_NF_REJECT_IPV6": "m"}
DEBIAN_MODULES = frozenset({"nfnetlink_queue", "xt_NFQUEUE", "ip6_tables", "ip6t_REJECT", "nf_reject_ipv6"})


def fixes(reasons: tuple[str, ...]) -> list[str]:
    return [r for r in reasons if r.startswith("to fix:")]


def test_linux_without_a_queue_and_no_config_is_told_both_ways() -> None:
    verdict, reasons, _ = decide(LINUX, (), with_(**NO_QUEUE))
    assert verdict == "cannot"
    assert fixes(reasons) == [
        "to fix: load the modules (`modprobe nfnetlink_queue xt_NFQUEUE`) or use a kernel with "
        "CONFIG_NETFILTER_NETLINK_QUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE (or CONFIG_NFT_QUEUE) (no kernel config "
        "was readable to tell which)"]


def test_a_kernel_built_without_the_target_is_not_told_to_modprobe() -> None:
    """The WSL-2-5.15-like kernel: the config leaves the target out, so modprobe cannot help."""
    config = {**DEBIAN_CONFIG, "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "n", "CONFIG_NETFILTER_XT_CONNMARK": "n"}
    kernel = KernelFiles(config, DEBIAN_MODULES - {"xt_NFQUEUE"}, "6.1.0-57-amd64")
    verdict, reasons, _ = decide(LINUX, (), with_(**NO_QUEUE, connmark=False), kernel=kernel)
    assert verdict == "cannot"
    assert fixes(reasons) == [
        "to fix: this kernel is built without CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NETFILTER_XT_CONNMARK "
        "(its config), so no modprobe can help: use a kernel built with them (or CONFIG_NFT_QUEUE)"]


def test_a_module_missing_from_the_tree_or_present_but_not_loaded() -> None:
    kernel = KernelFiles(DEBIAN_CONFIG, DEBIAN_MODULES - {"xt_NFQUEUE"}, "6.1.0-57-amd64")
    _, reasons, _ = decide(LINUX, (), with_(**NO_QUEUE), kernel=kernel)
    assert fixes(reasons) == ["to fix: the module xt_NFQUEUE is not in /lib/modules/6.1.0-57-amd64: install this "
                              "kernel's complete modules package"]
    _, reasons, _ = decide(LINUX, (), with_(**NO_QUEUE), kernel=KernelFiles(DEBIAN_CONFIG, DEBIAN_MODULES, "6.1"))
    assert fixes(reasons)[0].startswith("to fix: load the modules (`modprobe nfnetlink_queue xt_NFQUEUE`)")


def test_ipv6_advice_fits_what_is_missing() -> None:
    def ip6_reason(probe6: Probe, kernel: KernelFiles) -> str:
        verdict, reasons, _ = decide(LINUX, (), {**with_(nft_queue=False), "ip6tables": probe6}, kernel=kernel)
        assert verdict == "degraded"
        return next(r for r in reasons if r.startswith("ip6tables"))

    tool_missing = Probe(False, "ip6tables-nft: NFQUEUE ip6tables-nft not installed; "
                                "REJECT ip6tables-nft not installed")
    assert ip6_reason(tool_missing, KernelFiles()).endswith("or install ip6tables (apt install iptables)")
    refused = Probe(False, "ip6tables-nft: NFQUEUE rule accepted; REJECT Error: ... No such file or directory")
    no_ip6 = KernelFiles({**DEBIAN_CONFIG, "CONFIG_IP6_NF_TARGET_REJECT": "n", "CONFIG_NF_REJECT_IPV6": "n"},
                         DEBIAN_MODULES, "6.1")
    text = ip6_reason(refused, no_ip6)
    assert "install ip6tables" not in text
    assert text.endswith("or use a kernel built with CONFIG_IP6_NF_TARGET_REJECT, CONFIG_NF_REJECT_IPV6 "
                         "(this one is built without)")
    gone = KernelFiles(DEBIAN_CONFIG, DEBIAN_MODULES - {"ip6t_REJECT"}, "6.1")
    assert ip6_reason(refused, gone).endswith("install this kernel's complete modules package (ip6t_REJECT missing)")


def test_a_kernel_with_only_nft_queue_cannot_enforce_with_this_run() -> None:
    """nft queue works but no xt NFQUEUE: `run` (iptables backends only) cannot use it, and doctor
    says so instead of "can enforce" (until the native nft backend is in firewall.BACKENDS)."""
    probes = with_(xt_nfqueue_nft=False, xt_nfqueue_legacy=False)
    verdict, reasons, backend = decide(LINUX, (), probes, supported=("iptables-nft", "iptables-legacy"))
    assert (verdict, backend) == ("cannot", None)
    assert reasons[0] == ("no way to send packets to netguard: xt NFQUEUE via iptables-nft and xt NFQUEUE via "
                          "iptables-legacy are both unavailable; nft works here, but this netguard's `run` "
                          "cannot use it yet")
    assert all(r.strip() for r in reasons) and fixes(reasons)
    assert decide(LINUX, (), probes, supported=probe.BACKENDS)[:3:2] == ("ok", "nft")


def test_wsl2_5_15_names_what_is_missing() -> None:
    report = fixture_report("wsl2-5.15")
    assert report.probes["nfnetlink_queue"].present is True  # built, but nothing can send to it
    assert report.reasons[0].startswith("no way to send packets to netguard")
    assert any(r.startswith("connmark missing") for r in report.reasons)
    assert report.config is not None and report.config["CONFIG_NETFILTER_NETLINK_QUEUE"] == "y"
    assert report.config["CONFIG_NETFILTER_XT_TARGET_NFQUEUE"] == "n"


def test_container_refuses_without_cap_net_admin() -> None:
    report = fixture_report("container-podman")
    assert report.reasons[0].startswith("CAP_NET_ADMIN missing")
    assert any("/run/.containerenv" in s for s in report.environment.signals)


def test_wsl_networking_hints() -> None:
    mirrored = fixture_report("wsl2-6.6").environment.signals
    assert "/mnt/c/Users/alice/.wslconfig: networkingMode=mirrored" in mirrored
    assert "interface loopback0 (created by mirrored mode)" in mirrored
    # wsl.conf moves the Windows drives to /win/
    assert "/win/c/Users/carol/.wslconfig: networkingMode=NAT" in fixture_report("wsl2-5.15").environment.signals


def test_fixture_probes_agree_with_their_kernel_config() -> None:
    """A fixture typo guard: no feature is probed present while its config says `not set`."""
    for name in CASES:
        report = fixture_report(name)
        for feature in FEATURES:
            if report.probes[feature.name].present is True:
                assert all(config_value(report.config, s) != "n" for s in feature.config), (name, feature.name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_exit_code_and_json(name: str) -> None:
    base = DATA / name
    result = CliRunner().invoke(main, ["doctor", "--json", "--root", str(base / "root"),
                                       "--facts", str(base / "facts.json")])
    out = json.loads(result.output)
    assert result.exit_code == out["exit_code"] == {"ok": 0, "degraded": 1, "cannot": 2}[CASES[name][3]]
    assert out["environment"]["kind"] == CASES[name][0]
    assert [f["name"] for f in out["features"]] == list(FEATURE_NAMES)
    text = CliRunner().invoke(main, ["doctor", "--root", str(base / "root"), "--facts", str(base / "facts.json")])
    assert text.exit_code == result.exit_code
    verdict_line = next(line for line in text.output.splitlines() if line.startswith("verdict"))
    assert verdict_line.split(None, 1)[1].startswith(
        {"ok": "can enforce", "degraded": "degraded", "cannot": "cannot enforce"}[CASES[name][3]])


def test_cli_root_without_facts_does_not_probe_and_cannot(tmp_path: Path) -> None:
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.1.0-18-amd64\n")
    result = CliRunner().invoke(main, ["doctor", "--json", "--root", str(tmp_path)])
    out = json.loads(result.output)
    assert result.exit_code == 2
    assert out["probe_source"] == "none" and out["namespaces"] == []


# ---------------------------------------------------------------- the pure decision table

ALL_OK = {name: Probe(True, "") for name in FEATURE_NAMES}
LINUX = Environment(kind="linux", kernel="6.18.44", version=(6, 18, 44))


def with_(**changes: bool | None) -> dict[str, Probe]:
    return {**ALL_OK, **{k: Probe(v, "") for k, v in changes.items()}}


@pytest.mark.parametrize(("probes", "verdict", "backend", "first_reason"), [
    (ALL_OK, "ok", "nft", None),
    (with_(nft_queue=False), "ok", "iptables-nft", None),  # this machine
    (with_(nft_ct_reject=False), "ok", "iptables-nft", None),
    (with_(nft_queue=False, xt_nfqueue_nft=False), "ok", "iptables-legacy", None),
    (with_(nft_queue=False, xt_nfqueue_nft=False, xt_nfqueue_legacy=False), "cannot", None, "no way to send"),
    (with_(cap_net_admin=False), "cannot", "nft", "CAP_NET_ADMIN missing"),
    (with_(cap_net_admin=None), "cannot", "nft", "could not check CAP_NET_ADMIN"),
    (with_(nfnetlink_queue=False), "cannot", "nft", "nfnetlink_queue missing"),
    (with_(netfilterqueue=False), "cannot", "nft", "netfilterqueue importable missing"),
    (with_(queue_roundtrip=False), "cannot", "nft", "a queued packet did not reach netguard"),
    (with_(queue_roundtrip=None), "ok", "nft", None),  # not run (facts file): no claim either way
    (with_(nft_queue=False, connmark=False), "cannot", "iptables-nft", "connmark missing"),
    (with_(nft_queue=False, conntrack=None), "cannot", "iptables-nft", "could not check conntrack"),
    (with_(nft_queue=False, connbytes=False), "degraded", "iptables-nft", "connbytes missing"),
    (with_(nft_queue=False, reject=False), "degraded", "iptables-nft", "REJECT --reject-with tcp-reset missing"),
    (with_(nft_queue=False, ip6tables=False), "degraded", "iptables-nft", "ip6tables NFQUEUE + REJECT missing"),
    (with_(connbytes=False, reject=False), "ok", "nft", None),  # native nft has its own ct/reject
])
def test_decide(probes: dict[str, Probe], verdict: str, backend: str | None, first_reason: str | None) -> None:
    """The decision table for a netguard whose `run` supports every backend (the native nft one too)."""
    got_verdict, reasons, got_backend = decide(LINUX, gates(LINUX), probes, supported=probe.BACKENDS)
    assert (got_verdict, got_backend) == (verdict, backend)
    if first_reason is None:
        assert reasons == ()
    else:
        assert reasons[0].startswith(first_reason)


def test_missing_ip6tables_is_harmless_without_ipv6() -> None:
    assert decide(LINUX, (), with_(nft_queue=False, ip6tables=False), ipv6=False)[0] == "ok"


def test_degraded_reasons_follow_cannot_reasons() -> None:
    verdict, reasons, _ = decide(LINUX, (), with_(nft_queue=False, connbytes=False, cap_net_admin=False))
    assert verdict == "cannot"
    assert reasons[0].startswith("CAP_NET_ADMIN") and reasons[1].startswith("connbytes")


def wsl2(version: tuple[int, int, int]) -> Environment:
    return Environment(kind="wsl2", kernel="x-microsoft-standard-WSL2", version=version)


@pytest.mark.parametrize(("version", "fail", "warn"), [
    ((4, 19, 128), True, True), ((5, 3, 99), True, True), ((5, 4, 0), False, True),
    ((5, 14, 21), False, True), ((5, 15, 0), False, False), ((6, 6, 87), False, False),
])
def test_wsl2_version_gates(version: tuple[int, int, int], fail: bool, warn: bool) -> None:
    statuses = [g.status for g in gates(wsl2(version))]
    assert ("fail" in statuses) == fail
    assert ("warn" in statuses) == warn
    verdict, _, _ = decide(wsl2(version), gates(wsl2(version)), ALL_OK)
    assert verdict == ("cannot" if fail else "degraded" if warn else "ok")


def test_wsl_gates_do_not_apply_to_other_kernels() -> None:
    for kind in ("linux", "vagrant", "docker-desktop", "container"):
        env = Environment(kind=kind, kernel="4.19.0", version=(4, 19, 0))
        # The scope line and what no firewall closes (AF_PACKET frames), nothing else.
        assert [(g.status, g.title.split(": ")[-1]) for g in gates(env)] == [("info", "scope"), ("info", "raw frames")]


# ---------------------------------------------------------------- detection details

def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


OVERLAY_ROOT = "1 0 0:40 / / rw - overlay overlay rw\n"


@pytest.mark.parametrize(("files", "env", "kind"), [
    ({".dockerenv": ""}, {}, "linux"),  # a VM image built with Docker: one weak signal (this machine)
    ({".dockerenv": "", "proc/self/mountinfo": OVERLAY_ROOT}, {}, "container"),
    ({"proc/self/cgroup": "0::/system.slice/docker-0123abcd.scope\n"}, {}, "container"),
    ({"proc/self/cgroup": "0::/user.slice/dockerd-helper.service\n"}, {}, "linux"),  # words, not substrings
    ({"proc/self/cgroup": "12:pids:/kubepods/burstable/pod1/abc\n"}, {}, "container"),
    ({"run/WSL/x": ""}, {"WSL_DISTRO_NAME": "Debian"}, "wsl2"),  # custom kernel: two WSL markers
    ({"run/WSL/x": ""}, {}, "linux"),  # one marker is not enough
    ({"proc/sys/kernel/hostname": "docker-desktop\n"}, {}, "docker-desktop"),
    ({"proc/sys/kernel/osrelease": "6.10.14-linuxkit\n", ".dockerenv": "",
      "proc/self/mountinfo": OVERLAY_ROOT}, {}, "container"),  # a container on Docker Desktop
    ({"vagrant/Vagrantfile": ""}, {}, "vagrant"),
    ({}, {"SUDO_USER": "vagrant"}, "vagrant"),
    ({"proc/sys/kernel/osrelease": "4.4.0-19041-Microsoft\n"}, {}, "wsl1"),
])
def test_detect(tmp_path: Path, files: dict[str, str], env: dict[str, str], kind: str) -> None:
    files.setdefault("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n")
    assert detect_environment(tree(tmp_path, files), env).kind == kind


def test_environment_comes_from_the_mapping_not_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSL_DISTRO_NAME", "Ubuntu")
    monkeypatch.setenv("WSL_INTEROP", "/run/WSL/1_interop")
    assert detect_environment(tree(tmp_path, {"run/WSL/x": ""}), {}).kind == "linux"


def test_weak_signal_is_reported(tmp_path: Path) -> None:
    env = detect_environment(tree(tmp_path, {".dockerenv": ""}), {})
    assert env.notes == ("weak container signal only (/.dockerenv): not treated as a container",
                         "kernel release not readable (/proc/sys/kernel/osrelease)")


@pytest.mark.parametrize(("release", "version"), [
    ("4.19.128-microsoft-standard", (4, 19, 128)), ("5.10.102.1-microsoft-standard-WSL2", (5, 10, 102)),
    ("6.10.14-linuxkit", (6, 10, 14)), ("5.4.0-42-generic", (5, 4, 0)), ("6.8-rc1", (6, 8, 0)), ("", None),
])
def test_parse_version(release: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(release) == version


def test_kernel_config_sources(tmp_path: Path) -> None:
    text = "CONFIG_NFT_QUEUE=m\n# CONFIG_NETFILTER_XT_CONNMARK is not set\nCONFIG_X=\"a b\"\n"
    assert parse_kernel_config(text) == {"CONFIG_NFT_QUEUE": "m", "CONFIG_NETFILTER_XT_CONNMARK": "n",
                                         "CONFIG_X": "a b"}
    assert read_kernel_config(tmp_path, "6.1.0")[0] is None
    tree(tmp_path, {"boot/config-6.1.0": "CONFIG_NFT_QUEUE=y\n"})
    assert read_kernel_config(tmp_path, "6.1.0") == ({"CONFIG_NFT_QUEUE": "y"}, "/boot/config-6.1.0")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"CONFIG_NFT_QUEUE=m\n"))
    assert read_kernel_config(tmp_path, "6.1.0") == ({"CONFIG_NFT_QUEUE": "m"}, "/proc/config.gz")
    assert read_kernel_config(tmp_path / "nowhere", "../../etc")[0] is None


def test_config_values() -> None:
    assert [config_value(None, "CONFIG_A"), config_value({"CONFIG_A": "n"}, "CONFIG_A"),
            config_value({}, "CONFIG_A")] == ["-", "n", "?"]


def test_load_facts_rejects_unknown_features(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text(json.dumps({"probes": {"nfqueue": True}}))
    with pytest.raises(ValueError, match="unknown feature 'nfqueue'"):
        load_facts(tmp_path / "f.json")
    (tmp_path / "f.json").write_text(json.dumps({"probes": {"connmark": "yes"}}))
    with pytest.raises(ValueError, match="true, false, null"):
        load_facts(tmp_path / "f.json")


def test_render_shows_every_feature_with_config_beside_probe() -> None:
    text = render(fixture_report("wsl2-4.19"))
    for feature in FEATURES:
        assert any(line.strip().startswith(feature.label) for line in text.splitlines()), feature.label
    row = next(line for line in text.splitlines() if line.strip().startswith("xt NFQUEUE via iptables-nft"))
    assert row.split()[4:6] == ["no", "NETFILTER_XT_TARGET_NFQUEUE=n"]
    assert json.loads(to_json_text(fixture_report("wsl2-4.19")))["verdict"] == "cannot"


# ---------------------------------------------------------------- probe.py, the parts without root

def test_collapse_takes_xt_rows_from_the_backend_tool() -> None:
    yes, no = Probe(True, "rule accepted"), Probe(False, "Error: x")
    xt = {"nfqueue": yes, "conntrack": yes, "connmark": yes, "connbytes": no, "reject": yes,
          "nfqueue6": yes, "reject6": no}
    legacy = {**xt, "connbytes": yes, "reject6": yes}
    nft = {"nft_queue": no, "nft_ct_reject": yes}
    rows = probe._collapse(xt, legacy, nft)
    assert rows["connbytes"].present is False and rows["connbytes"].detail.startswith("iptables-nft")
    assert rows["ip6tables"].present is False
    rows = probe._collapse({**xt, "nfqueue": no}, legacy, nft)  # only legacy queues: its view counts
    assert rows["connbytes"].present is True and rows["ip6tables"].present is True


def test_first_line_strips_nft_location() -> None:
    assert probe._first_line("\n/dev/stdin:4:36-40: Error: Could not process rule: No such file\n  x\n") == \
        "Error: Could not process rule: No such file"
    assert probe._first_line("iptables v1.8.9 (nf_tables): Chain 'FOO' does not exist\n") == \
        "iptables v1.8.9 (nf_tables): Chain 'FOO' does not exist"


def test_probe_refuses_a_namespace_it_did_not_make() -> None:
    with pytest.raises(ValueError, match="outside a scratch namespace"):
        probe._in_ns("default", ["iptables", "-A", "OUTPUT", "-j", "ACCEPT"])


def test_queue_child_usage() -> None:
    assert probe.main(["queue-child", "pf", "ng-x"]) == 2
    assert probe.main(["queue-child"]) == 2


def test_roundtrip_rules_stay_on_lo() -> None:
    argv, stdin = probe._roundtrip_rule("iptables-legacy")
    assert argv[0] == "iptables-legacy" and argv[argv.index("-o") + 1] == "lo" and stdin is None
    argv, stdin = probe._roundtrip_rule("nft")
    assert argv == ["nft", "-f", "-"] and stdin is not None and "oif lo" in stdin


def test_u32_row_needs_both_families_and_only_adds_a_note() -> None:
    yes, no = Probe(True, "rule accepted"), Probe(False, "Error: x")
    xt = {"nfqueue": yes, "conntrack": yes, "connmark": yes, "connbytes": yes, "reject": yes,
          "nfqueue6": yes, "reject6": yes, "u32": yes, "u32_6": yes}
    nft = {"nft_queue": no, "nft_ct_reject": no}
    assert probe._collapse(xt, xt, nft)["u32"].present is True
    rows = probe._collapse({**xt, "u32_6": no}, xt, nft)
    assert rows["u32"].present is False and "ip6tables-nft: Error: x" in rows["u32"].detail
    # Without u32 netguard enforces the same, one round trip slower: no verdict change, a note.
    env = Environment("linux", "6.1.0", (6, 1, 0))
    with_u32 = {**ALL_OK, "nft_queue": no, "nft_ct_reject": no}
    without = {**with_u32, "u32": Probe(False, "Error: Couldn't load match `u32'")}
    assert decide(env, (), without) == decide(env, (), with_u32)
    report = assess(Path("/nonexistent"), {}, probes=without, probe_source="test")
    assert "no xt u32: pure ACKs of undecided flows are queued too" in render(report)
    assert "no xt u32" not in render(assess(Path("/nonexistent"), {}, probes=with_u32, probe_source="test"))


def test_a_slow_command_gets_a_second_longer_try_and_a_stuck_one_is_unknown() -> None:
    """A first module load can outlast the first limit (seen in emulation): the retry waits for it;
    a command that outlasts both is "could not tell", never "absent"."""
    slow = probe._patiently(["sh", "-c", "sleep 0.3; echo done"], None, 0.05, 10.0)
    assert slow is not None and slow.returncode == 0 and slow.stdout == "done\n"
    assert probe._patiently(["sleep", "5"], None, 0.05, 0.1) is None


def test_timed_out_queue_probes_are_unknown_and_doctor_does_not_call_them_missing() -> None:
    timed_out = Probe(None, "iptables-nft timed out twice (after 2 s, then 30 s)")
    probes = {**with_(nft_queue=False), "xt_nfqueue_nft": timed_out, "xt_nfqueue_legacy": timed_out,
              "nft_queue": timed_out}
    verdict, reasons, backend = decide(LINUX, (), probes)
    assert (verdict, backend) == ("cannot", None)
    assert reasons[0].startswith("could not check xt NFQUEUE via iptables-nft, xt NFQUEUE via iptables-legacy, "
                                 "nft queue (iptables-nft timed out twice")
    assert not any("missing" in r or "unavailable" in r for r in reasons)
