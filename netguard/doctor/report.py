"""`netguard doctor`: where am I running, what does the kernel allow, and can netguard enforce here?

Strategy: three layers. (1) Reading: `detect_environment` and `read_kernel_config` look only below a
root path and at an env mapping passed in, so tests point them at fixture trees. (2) Deciding:
`gates` and `decide` are pure functions over plain values (an Environment, probe results), so every
verdict can be tested without root. (3) Probing: the live probe (netguard.doctor.probe) runs in
scratch namespaces; a tree that cannot be probed here (a WSL kernel, say) brings its probe results in
a JSON file instead (`load_facts`), written from what was observed on that kernel.

Verdicts: "ok" (can enforce), "degraded" (enforces, with a named gap and its effect), "cannot"
(netguard run refuses, with these reasons). The environment is decided from several signals each;
one weak signal alone (a stray /.dockerenv in a VM image) is reported, not trusted.
"""

from __future__ import annotations

import configparser
import gzip
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from netguard.daemon import firewall
from netguard.doctor.probe import (
    NFT_QUEUE,
    Probe,
    ProbeRun,
    choose_backend,
    live_probe,
    probe_backend,
    usable_backends,
)

Verdict = Literal["ok", "degraded", "cannot"]
GateStatus = Literal["fail", "warn", "info"]
EXIT_CODES: dict[str, int] = {"ok": 0, "degraded": 1, "cannot": 2}

# Docker's documented floor for WSL 2, and the release from which WSL 2 distributions are
# restricted separately (docker/docs, registry-access-management.md; facts.md).
WSL2_FLOOR = (5, 4)
WSL2_SEPARATE = (5, 15)
# Stock WSL 2 kernels before this series ship without NFQUEUE (facts.md kernel table).
WSL2_QUEUE_SERIES = (6, 6)
WSL_FIX = ("update WSL from Windows: `wsl --update` (WSL >= 2.5.1 ships kernel 6.6+ with the netfilter "
           "modules in a VHD), then `wsl --shutdown` and reopen the distribution")
# A Windows machine has a handful of user profiles; a bound keeps a huge /mnt/c/Users cheap.
MAX_WINDOWS_PROFILES = 64
# Kernel config files are a few hundred KiB; anything far larger is not a kernel config.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# modules.dep lists a few thousand modules in under 1 MiB.
MAX_MODULES_DEP_BYTES = 8 * 1024 * 1024
CONTAINER_CGROUP_WORDS = ("docker", "kubepods", "libpod", "containerd", "lxc", "crio")


@dataclass(frozen=True)
class Feature:
    """One row of the feature table: name used in probe results, label, kernel config symbols."""

    name: str
    label: str
    config: tuple[str, ...]


FEATURES: tuple[Feature, ...] = (
    Feature("cap_net_admin", "CAP_NET_ADMIN", ()),
    Feature("nfnetlink_queue", "nfnetlink_queue", ("CONFIG_NETFILTER_NETLINK_QUEUE",)),
    Feature("xt_nfqueue_nft", "xt NFQUEUE via iptables-nft",
            ("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "CONFIG_NFT_COMPAT")),
    Feature("xt_nfqueue_legacy", "xt NFQUEUE via iptables-legacy",
            ("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "CONFIG_IP_NF_IPTABLES")),
    Feature("nft_queue", "nft queue", ("CONFIG_NFT_QUEUE",)),
    Feature("nft_ct_reject", "nft ct mark/bytes + reject + fib",
            ("CONFIG_NFT_CT", "CONFIG_NFT_REJECT", "CONFIG_NFT_REJECT_IPV4", "CONFIG_NFT_REJECT_IPV6",
             "CONFIG_NFT_FIB_IPV4", "CONFIG_NFT_FIB_IPV6")),
    Feature("conntrack", "conntrack", ("CONFIG_NF_CONNTRACK", "CONFIG_NETFILTER_XT_MATCH_CONNTRACK")),
    Feature("connmark", "connmark", ("CONFIG_NETFILTER_XT_CONNMARK",)),
    Feature("connbytes", "connbytes", ("CONFIG_NETFILTER_XT_MATCH_CONNBYTES",)),
    Feature("reject", "REJECT --reject-with tcp-reset", ("CONFIG_IP_NF_TARGET_REJECT",)),
    Feature("ip6tables", "ip6tables NFQUEUE + REJECT", ("CONFIG_IP6_NF_IPTABLES", "CONFIG_IP6_NF_TARGET_REJECT")),
    Feature("u32", "u32 (data-less segments not queued)", ("CONFIG_NETFILTER_XT_MATCH_U32",)),
    Feature("netfilterqueue", "netfilterqueue importable", ()),
    Feature("queue_roundtrip", "packet queued and received", ()),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
# The module each config symbol above builds (what `modprobe` would load, what a tree may lack).
MODULE_OF = {
    "CONFIG_NETFILTER_NETLINK_QUEUE": "nfnetlink_queue", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "xt_NFQUEUE",
    "CONFIG_NFT_COMPAT": "nft_compat", "CONFIG_IP_NF_IPTABLES": "ip_tables", "CONFIG_NFT_QUEUE": "nft_queue",
    "CONFIG_NFT_CT": "nft_ct", "CONFIG_NFT_REJECT": "nft_reject", "CONFIG_NFT_REJECT_IPV4": "nft_reject_ipv4",
    "CONFIG_NFT_REJECT_IPV6": "nft_reject_ipv6", "CONFIG_NFT_FIB_IPV4": "nft_fib_ipv4",
    "CONFIG_NFT_FIB_IPV6": "nft_fib_ipv6", "CONFIG_NF_CONNTRACK": "nf_conntrack",
    "CONFIG_NETFILTER_XT_MATCH_CONNTRACK": "xt_conntrack", "CONFIG_NETFILTER_XT_CONNMARK": "xt_connmark",
    "CONFIG_NETFILTER_XT_MATCH_CONNBYTES": "xt_connbytes", "CONFIG_IP_NF_TARGET_REJECT": "ipt_REJECT",
    "CONFIG_IP6_NF_IPTABLES": "ip6_tables", "CONFIG_IP6_NF_TARGET_REJECT": "ip6t_REJECT",
    "CONFIG_NETFILTER_XT_MATCH_U32": "xt_u32", "CONFIG_NF_REJECT_IPV6": "nf_reject_ipv6",
}
CONFIG_SYMBOLS = tuple(dict.fromkeys(s for f in FEATURES for s in f.config))


@dataclass(frozen=True)
class KernelFiles:
    """What the kernel's own files say: its config and the modules in /lib/modules/RELEASE. Only
    advice depends on them (modprobe helps only where a module exists); the probes decide."""

    config: Mapping[str, str] | None = None
    modules: frozenset[str] | None = None  # None: no modules tree readable
    release: str = ""


@dataclass(frozen=True)
class Environment:
    """Where netguard runs. kind: wsl1 | wsl2 | docker-desktop | vagrant | container | linux."""

    kind: str
    kernel: str
    version: tuple[int, int, int] | None
    signals: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    distro: str = ""
    wsl_networking: str | None = None  # "mirrored", "nat", ... where visible

    @property
    def label(self) -> str:
        """The kind as people write it."""
        return KIND_LABELS.get(self.kind, self.kind)


KIND_LABELS = {"wsl1": "WSL 1", "wsl2": "WSL 2", "docker-desktop": "Docker Desktop VM (LinuxKit)",
               "vagrant": "Vagrant box", "container": "container", "linux": "Linux"}


@dataclass(frozen=True)
class Gate:
    """One version or environment gate and what it means for netguard."""

    status: GateStatus
    title: str
    meaning: str


@dataclass(frozen=True)
class Report:
    """Everything doctor found. verdict: ok | degraded | cannot; reasons: why, worst first;
    backend: nft | iptables-nft | iptables-legacy | None."""

    environment: Environment
    gates: tuple[Gate, ...]
    probes: dict[str, Probe]
    config: dict[str, str] | None  # symbol -> "y" / "m" / "n"; None: no config readable
    config_source: str
    verdict: Verdict
    reasons: tuple[str, ...]
    backend: str | None
    backends: tuple[str, ...]  # every backend that works, best first (`run` takes the first it supports)
    probe_source: str  # "live", a facts file, or "none"
    namespaces: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 can enforce, 1 degraded, 2 cannot enforce."""
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-ready dict (the `--json` output)."""
        out = asdict(self)
        out["environment"]["label"] = self.environment.label
        out["features"] = [{"name": f.name, "label": f.label,
                            "config": {s: config_value(self.config, s) for s in f.config},
                            **asdict(self.probes.get(f.name, Probe(None, "not probed")))}
                           for f in FEATURES]
        del out["probes"]
        out["exit_code"] = self.exit_code
        return out


# ---------------------------------------------------------------- reading (root path + env only)

def _read(root: Path, rel: str, limit: int = 65536) -> str | None:
    try:
        with (root / rel.lstrip("/")).open("rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _exists(root: Path, rel: str) -> bool:
    return (root / rel.lstrip("/")).exists()


def parse_version(release: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from a kernel release such as 5.15.167.4-microsoft-standard-WSL2."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _ini(text: str) -> configparser.ConfigParser:
    """wsl.conf / .wslconfig: INI with comments and repeated keys; never raises."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text)
    except configparser.Error:
        return configparser.ConfigParser()
    return parser


def _wsl_networking(root: Path) -> tuple[str | None, list[str]]:
    """Networking mode from .wslconfig files on the mounted Windows drive, plus hints."""
    hints: list[str] = []
    mount_root = "/mnt/"
    wsl_conf = _read(root, "/etc/wsl.conf")
    if wsl_conf is not None:
        conf = _ini(wsl_conf)
        mount_root = conf.get("automount", "root", fallback=mount_root) or mount_root
        for key in ("generateResolvConf", "generateHosts", "hostname"):
            value = conf.get("network", key, fallback=None)
            if value is not None:
                hints.append(f"/etc/wsl.conf [network] {key}={value}")
    modes: set[str] = set()
    users = root / mount_root.strip("/") / "c" / "Users"
    try:
        profiles = sorted(users.iterdir())[:MAX_WINDOWS_PROFILES] if users.is_dir() else []
    except OSError:
        profiles = []
    for profile in profiles:
        text = _read(root, str((profile / ".wslconfig").relative_to(root)))
        if text is None:
            continue
        mode = _ini(text).get("wsl2", "networkingMode", fallback=None)
        shown = "/" + str((profile / ".wslconfig").relative_to(root))
        if mode:
            modes.add(mode.strip().lower())
            hints.append(f"{shown}: networkingMode={mode.strip()}")
        else:
            hints.append(f"{shown}: no networkingMode (NAT)")
            modes.add("nat")
    if _exists(root, "/sys/class/net/loopback0"):
        hints.append("interface loopback0 (created by mirrored mode)")
        modes.add("mirrored")
    if not modes:
        return None, hints
    return (modes.pop() if len(modes) == 1 else "/".join(sorted(modes)) + " (conflicting hints)"), hints


def _hostname(root: Path) -> str:
    for rel in ("/proc/sys/kernel/hostname", "/etc/hostname"):
        text = _read(root, rel)
        if text and text.strip():
            return text.strip()
    return ""


def _distro(root: Path) -> str:
    text = _read(root, "/etc/os-release") or ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return ""


def _container_signals(root: Path, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(strong, weak) container signals."""
    strong: list[str] = []
    weak: list[str] = []
    if _exists(root, "/run/.containerenv"):
        strong.append("/run/.containerenv (podman)")
    if env.get("container"):
        strong.append(f"container={env['container']} in the environment")
    for line in (_read(root, "/proc/self/cgroup") or "").splitlines():
        path = line.split(":", 2)[-1]
        words = [w for part in path.split("/") for w in re.split(r"[-.]", part) if w]
        hit = next((w for w in CONTAINER_CGROUP_WORDS if w in words), None)
        if hit:
            strong.append(f"cgroup {path} ({hit})")
            break
    if _exists(root, "/.dockerenv"):
        weak.append("/.dockerenv")
    for line in (_read(root, "/proc/self/mountinfo", 1 << 20) or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and "-" in fields:
            fstype = fields[fields.index("-") + 1]
            if fstype == "overlay":
                weak.append("root file system is overlay")
            break
    return strong, weak


def detect_environment(root: Path, env: Mapping[str, str]) -> Environment:
    """Decide where we run from the files below root and the env mapping (never os.environ)."""
    release = (_read(root, "/proc/sys/kernel/osrelease") or "").strip()
    version = parse_version(release)
    tokens = release.split("-")
    proc_version = _read(root, "/proc/version") or ""
    signals: list[str] = []
    notes: list[str] = []

    wsl1_kernel = release.endswith("-Microsoft") or "Microsoft@Microsoft.com" in proc_version
    wsl2_kernel = "microsoft" in tokens and "standard" in tokens
    wsl_markers = [s for s, hit in (
        ("/run/WSL", _exists(root, "/run/WSL")),
        ("binfmt WSLInterop", _exists(root, "/proc/sys/fs/binfmt_misc/WSLInterop")
         or _exists(root, "/proc/sys/fs/binfmt_misc/WSLInterop-late")),
        (f"WSL_DISTRO_NAME={env.get('WSL_DISTRO_NAME', '')}", bool(env.get("WSL_DISTRO_NAME"))),
        ("WSL_INTEROP set", bool(env.get("WSL_INTEROP"))),
    ) if hit]
    hostname = _hostname(root)
    strong, weak = _container_signals(root, env)
    container = bool(strong) or len(weak) >= 2

    if wsl1_kernel:
        kind = "wsl1"
        signals.append(f"kernel release {release} (WSL 1 translation layer)")
        signals += wsl_markers
    elif container:
        kind = "container"
        signals += strong + weak
        if wsl2_kernel:
            notes.append("the host kernel is a WSL 2 kernel (Docker Desktop's WSL 2 engine?)")
        elif tokens[-1:] == ["linuxkit"]:
            notes.append("the host kernel is Docker Desktop's LinuxKit kernel")
    elif wsl2_kernel or len(wsl_markers) >= 2:
        kind = "wsl2"
        if wsl2_kernel:
            signals.append(f"kernel release {release}")
        else:
            notes.append("WSL markers without a Microsoft kernel release: a custom WSL 2 kernel?")
        signals += wsl_markers
    elif tokens[-1:] == ["linuxkit"] or hostname == "docker-desktop":
        kind = "docker-desktop"
        if tokens[-1:] == ["linuxkit"]:
            signals.append(f"kernel release {release}")
        if hostname == "docker-desktop":
            signals.append("hostname docker-desktop")
    else:
        vagrant = []
        if _exists(root, "/vagrant"):
            vagrant.append("/vagrant synced folder")
        passwd = _read(root, "/etc/passwd", 1 << 20) or ""
        if any(line.split(":", 1)[0] == "vagrant" for line in passwd.splitlines()):
            vagrant.append("user vagrant in /etc/passwd")
        for var in ("SUDO_USER", "USER", "LOGNAME"):
            if env.get(var) == "vagrant":
                vagrant.append(f"{var}=vagrant")
                break
        kind = "vagrant" if vagrant else "linux"
        signals += vagrant
        if wsl_markers:
            notes.append(f"one WSL marker only ({wsl_markers[0]}): not treated as WSL")
    if weak and not container:
        notes.append(f"weak container signal only ({', '.join(weak)}): not treated as a container")

    networking = None
    if kind == "wsl2":
        networking, hints = _wsl_networking(root)
        signals += hints
    if not release:
        notes.append("kernel release not readable (/proc/sys/kernel/osrelease)")
    return Environment(kind=kind, kernel=release, version=version, signals=tuple(signals), notes=tuple(notes),
                       distro=_distro(root), wsl_networking=networking)


def parse_kernel_config(text: str) -> dict[str, str]:
    """Kernel .config text -> {symbol: "y" | "m" | "n" | other value}."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        unset = re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip())
        if unset:
            config[unset.group(1)] = "n"
            continue
        key, eq, value = line.strip().partition("=")
        if eq and key.startswith("CONFIG_"):
            config[key] = value.strip('"')
    return config


def read_kernel_config(root: Path, release: str) -> tuple[dict[str, str] | None, str]:
    """The running kernel's config from /proc/config.gz or /boot/config-RELEASE, and where from."""
    gz = root / "proc/config.gz"
    try:
        with gzip.open(gz, "rb") as f:
            return parse_kernel_config(f.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")), "/proc/config.gz"
    except (OSError, EOFError):
        pass
    if release and "/" not in release:
        boot = f"/boot/config-{release}"
        text = _read(root, boot, MAX_CONFIG_BYTES)
        if text is not None:
            return parse_kernel_config(text), boot
    return None, "no kernel config readable (/proc/config.gz, /boot/config-RELEASE)"


def read_module_names(root: Path, release: str) -> frozenset[str] | None:
    """The loadable modules of the running kernel (from /lib/modules/RELEASE/modules.dep), or None."""
    if not release or "/" in release:
        return None
    text = _read(root, f"/lib/modules/{release}/modules.dep", MAX_MODULES_DEP_BYTES)
    if text is None:
        return None
    return frozenset(line.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko", 1)[0]
                     for line in text.splitlines() if ":" in line)


def config_value(config: Mapping[str, str] | None, symbol: str) -> str:
    """y / m / n, "?" when the config does not mention the symbol, "-" when there is no config."""
    if config is None:
        return "-"
    return config.get(symbol, "?")


def load_facts(path: Path) -> tuple[dict[str, str], dict[str, Probe]]:
    """A facts file for a tree that cannot be probed here: {"env": {...}, "probes": {feature:
    true | false | null | {"present": ..., "detail": ...}}}. Features it leaves out are unknown."""
    data = json.loads(path.read_text(encoding="utf-8"))
    env = {str(k): str(v) for k, v in data.get("env", {}).items()}
    probes: dict[str, Probe] = {}
    for name, value in data.get("probes", {}).items():
        if name not in FEATURE_NAMES:
            raise ValueError(f"{path}: unknown feature {name!r} (known: {', '.join(FEATURE_NAMES)})")
        if isinstance(value, dict):
            probes[name] = Probe(value.get("present"), str(value.get("detail", "")))
        elif value is None or isinstance(value, bool):
            probes[name] = Probe(value)
        else:
            raise ValueError(f"{path}: {name} must be true, false, null or an object")
    for name in FEATURE_NAMES:
        probes.setdefault(name, Probe(None, "not probed"))
    return env, probes


# ---------------------------------------------------------------- deciding (pure)

def gates(environment: Environment) -> tuple[Gate, ...]:
    """Version and environment gates with their consequences for netguard."""
    out: list[Gate] = []
    v = environment.version
    kind = environment.kind
    if kind == "wsl1":
        out.append(Gate("fail", "WSL 1 has no Linux kernel",
                        "WSL 1 translates system calls: there is no netfilter and no network namespace to "
                        "enforce in. Convert the distribution: `wsl --set-version <distro> 2`."))
    if kind == "wsl2" and v is not None:
        if v[:2] < WSL2_FLOOR:
            out.append(Gate("fail", f"WSL 2 kernel {v[0]}.{v[1]} < {WSL2_FLOOR[0]}.{WSL2_FLOOR[1]}",
                            "below Docker's documented floor for WSL 2: unsupported."))
        if v[:2] < WSL2_SEPARATE:
            out.append(Gate("warn", f"WSL 2 kernel {v[0]}.{v[1]} < {WSL2_SEPARATE[0]}.{WSL2_SEPARATE[1]}",
                            "every WSL 2 distribution shares this network namespace: rules installed here "
                            "restrict all of them (Docker Desktop's own distribution included)."))
        else:
            out.append(Gate("info", "WSL 2 distributions share one VM",
                            f"kernel >= {WSL2_SEPARATE[0]}.{WSL2_SEPARATE[1]}: Docker documents separate "
                            "restriction per distribution from here on, but all distributions still run in "
                            "one VM; check with `ip addr` in another distribution whether it shares this "
                            "namespace before relying on separation."))
        if v[:2] < WSL2_QUEUE_SERIES:
            out.append(Gate("info", f"WSL 2 kernel {v[0]}.{v[1]} < {WSL2_QUEUE_SERIES[0]}.{WSL2_QUEUE_SERIES[1]}",
                            "stock WSL 2 kernels of this series are built without the NFQUEUE target; "
                            "the probe below says what this kernel really has."))
        if environment.wsl_networking:
            out.append(Gate("info", f"WSL networking: {environment.wsl_networking}",
                            "netguard sees traffic that leaves this VM's Linux stack, in NAT and mirrored "
                            "mode alike; Windows processes and Windows containers are not restricted."))
    meanings = {
        "wsl2": "rules apply in the WSL 2 VM: Linux processes, and Docker Desktop's WSL 2 engine where it "
                "shares this namespace; nothing on the Windows side.",
        "docker-desktop": "rules apply in Docker Desktop's VM: every container and build of this engine. "
                          "Docker Desktop may reset the VM on update or reset: reinstall netguard then.",
        "vagrant": "rules apply in this box only; the host and other boxes are not restricted.",
        "container": "rules apply in this container's network namespace only (needs CAP_NET_ADMIN); "
                     "other containers and the host are not restricted. Run netguard in the VM or host.",
        "linux": "rules apply on this host: its processes, and containers behind its bridges (FORWARD).",
    }
    if kind in meanings:
        out.append(Gate("info", f"{environment.label}: scope", meanings[kind]))
        out.append(Gate("info", "raw frames", RAW_FRAMES))
    return tuple(out)


# What no netfilter-based filter can close (README, Known limits).
RAW_FRAMES = ("a process with CAP_NET_RAW in netguard's own network namespace (root here) can send frames "
              "with an AF_PACKET socket, which never cross netfilter: keep root and CAP_NET_RAW from whom the "
              "policy restricts. A container's frames still cross this namespace's FORWARD chain.")


def _present(probes: Mapping[str, Probe], name: str) -> bool | None:
    probe = probes.get(name)
    return None if probe is None else probe.present


def _detail(probes: Mapping[str, Probe], name: str) -> str:
    """ " (what the probe said)", or nothing when it said nothing (results from a facts file)."""
    probe = probes.get(name)
    if probe is None:
        return " (not probed)"
    return f" ({probe.detail})" if probe.detail else ""


# What a kernel needs so that `run` can queue (xt NFQUEUE: every backend it supports uses it).
QUEUE_SYMBOLS = ("CONFIG_NETFILTER_NETLINK_QUEUE", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE")


def _kernel_fix(environment: Environment, kernel: KernelFiles, symbols: Sequence[str],
                supported: Sequence[str]) -> str:
    """What to do about kernel features that the probes found missing, as far as the kernel's own
    files tell: modprobe where the module is there, another kernel where the config leaves it out."""
    if environment.kind == "wsl2":
        return WSL_FIX
    if environment.kind == "docker-desktop":
        return "update Docker Desktop (its LinuxKit kernels ship NFQUEUE built in)"
    symbols = list(dict.fromkeys(symbols))
    nft = " (or CONFIG_NFT_QUEUE)" if NFT_QUEUE in supported and "CONFIG_NETFILTER_XT_TARGET_NFQUEUE" in symbols else ""
    if kernel.config is None:
        mods = " ".join(MODULE_OF.get(s, s) for s in symbols)
        return (f"load the modules (`modprobe {mods}`) or use a kernel with {', '.join(symbols)}{nft} "
                "(no kernel config was readable to tell which)")
    unset = [s for s in symbols if kernel.config.get(s, "n") not in ("y", "m")]
    modular = [MODULE_OF.get(s, s) for s in symbols if kernel.config.get(s) == "m"]
    absent = [m for m in modular if kernel.modules is not None and m not in kernel.modules]
    loadable = [m for m in modular if m not in absent]
    fixes = []
    if unset:
        fixes.append(f"this kernel is built without {', '.join(unset)} (its config), so no modprobe can help: "
                     "use a kernel built with " + ("it" if len(unset) == 1 else "them") + nft)
    if absent:
        fixes.append(f"the module{'s' if len(absent) > 1 else ''} {', '.join(absent)} "
                     f"{'are' if len(absent) > 1 else 'is'} not in /lib/modules/{kernel.release}: install this "
                     "kernel's complete modules package")
    if loadable and not unset and not absent:
        fixes.append(f"load the modules (`modprobe {' '.join(loadable)}`): the kernel has them, yet the probe "
                     "could not use them (module loading disabled here?)")
    return "; ".join(fixes) or (f"the kernel's config has {', '.join(symbols)} built in, yet the probe could not "
                                "use them: see the probe details above")


def decide(environment: Environment, gate_list: Sequence[Gate], probes: Mapping[str, Probe],
           ipv6: bool = True, kernel: KernelFiles = KernelFiles(),
           supported: Sequence[str] = firewall.BACKENDS) -> tuple[Verdict, tuple[str, ...], str | None]:
    """Pure: (verdict, reasons worst first, backend) from the environment, its gates and probe
    results. A required feature that could not be checked counts as missing: `run` must not
    enforce on a guess. ipv6=False (no IPv6 in the kernel) makes missing ip6tables harmless.
    backend: the one `run` will use, among the backends it supports; the advice follows what the
    kernel's files say (kernel)."""
    cannot: list[str] = []
    degraded: list[str] = []
    # Unchecked features, grouped by why (one line for "not root" instead of eleven).
    unchecked: dict[str, list[str]] = {}
    unchecked_gaps: dict[str, list[str]] = {}
    fixes: list[str] = []  # what to do, once each, after the reasons
    for gate in gate_list:
        if gate.status == "fail":
            cannot.append(f"{gate.title}: {gate.meaning}")
            if environment.kind == "wsl2":
                fixes.append(WSL_FIX)
        elif gate.status == "warn":
            degraded.append(f"{gate.title}: {gate.meaning}")

    def why_unknown(name: str) -> str:
        probe = probes.get(name)
        return "not probed" if probe is None else probe.detail

    def require(name: str, why: str) -> None:
        state = _present(probes, name)
        if state is False:
            cannot.append(f"{_label(name)} missing{_detail(probes, name)}: {why}")
        elif state is None:
            unchecked.setdefault(why_unknown(name), []).append(_label(name))

    backend = choose_backend(probes, supported)
    kernel_fix: list[str] = []  # config symbols of kernel features found missing, for one fix line
    require("cap_net_admin", "netguard manages firewall rules: run it as root")
    if backend is None:
        queueing = ("xt_nfqueue_nft", "xt_nfqueue_legacy", "nft_queue")
        ways = {"iptables-nft": ("xt NFQUEUE via iptables-nft", "xt_nfqueue_nft"),
                "iptables-legacy": ("xt NFQUEUE via iptables-legacy", "xt_nfqueue_legacy"),
                NFT_QUEUE: ("nft queue", "nft_queue")}
        usable = [b for b in usable_backends(probes) if b not in supported]
        if all(_present(probes, name) is None for name in queueing):
            for name in queueing:
                unchecked.setdefault(why_unknown(name), []).append(_label(name))
        else:
            tried = [f"{label}{_detail(probes, name)}" for b, (label, name) in ways.items() if b in supported]
            cannot.append("no way to send packets to netguard: " + ", ".join(tried[:-1])
                          + (" and " if len(tried) > 1 else "") + tried[-1]
                          + {1: " is unavailable", 2: " are both unavailable"}.get(len(tried), " are all unavailable")
                          + (f"; {', '.join(usable)} works here, but this netguard's `run` cannot use it yet"
                             if usable else ""))
            kernel_fix += QUEUE_SYMBOLS
    require("nfnetlink_queue", "the kernel cannot hand queued packets to a program")
    if _present(probes, "nfnetlink_queue") is False:
        kernel_fix += _feature("nfnetlink_queue").config
    require("netfilterqueue", "install it with scripts/bootstrap (NetfilterQueue==1.1.0, needs "
                              "libnetfilter-queue-dev)")
    if _present(probes, "queue_roundtrip") is False:
        cannot.append(f"a queued packet did not reach netguard{_detail(probes, 'queue_roundtrip')}")
    # nft queue missing while an xt backend works is a backend choice, not a gap. The native nft
    # backend was only chosen because its ct/reject set loaded, so these xt rows matter for xt only.
    if backend != NFT_QUEUE:
        require("conntrack", "netguard follows flows by connection state")
        require("connmark", "decisions are kept in the connection mark; without it blocked connections "
                            "cannot be reset and every packet would go through the daemon")
        for name in ("conntrack", "connmark"):
            if _present(probes, name) is False:
                kernel_fix += _feature(name).config
        gaps = (
            ("connbytes", "the queue cannot be limited to the first bytes of a flow; undecided flows keep "
                          "going through the daemon (slower, never unfiltered)"),
            ("reject", "blocked connections are dropped, so clients hang until their own timeout instead "
                       "of failing at once"),
            ("ip6tables", "IPv6 connections are not filtered and a client preferring IPv6 bypasses netguard; "
                          + _ip6_fix(probes, kernel)),
        )
        for name, effect in gaps:
            state = _present(probes, name)
            if state is False and (ipv6 or name != "ip6tables"):
                degraded.append(f"{_label(name)} missing{_detail(probes, name)}: {effect}")
            elif state is None and (ipv6 or name != "ip6tables"):
                unchecked_gaps.setdefault(why_unknown(name), []).append(_label(name))
    for why, labels in unchecked.items():
        cannot.append(f"could not check {', '.join(labels)}" + (f" ({why})" if why else "")
                      + ": netguard does not enforce on a guess")
    for why, labels in unchecked_gaps.items():
        degraded.append(f"could not check {', '.join(labels)}" + (f" ({why})" if why else ""))
    if kernel_fix:
        fixes.append(_kernel_fix(environment, kernel, kernel_fix, supported))
    verdict: Verdict = "cannot" if cannot else "degraded" if degraded else "ok"
    advice = tuple(f"to fix: {fix}" for fix in dict.fromkeys(fixes)) if cannot else ()
    return verdict, (*cannot, *advice, *degraded), backend


def _label(name: str) -> str:
    return next((f.label for f in FEATURES if f.name == name), name)


def _feature(name: str) -> Feature:
    return next(f for f in FEATURES if f.name == name)


def _ip6_fix(probes: Mapping[str, Probe], kernel: KernelFiles) -> str:
    """What to do when IPv6 cannot be filtered: the tool is missing, or the kernel's IPv6
    netfilter is (then installing ip6tables cannot help)."""
    disable = "disable IPv6 (sysctl net.ipv6.conf.all.disable_ipv6=1)"
    if "not installed" in _detail(probes, "ip6tables"):
        return f"{disable} or install ip6tables (apt install iptables)"
    symbols = ("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "CONFIG_IP6_NF_IPTABLES", "CONFIG_IP6_NF_TARGET_REJECT",
               "CONFIG_NF_REJECT_IPV6")
    if kernel.config is not None:
        unset = [s for s in symbols if kernel.config.get(s, "n") not in ("y", "m")]
        absent = [MODULE_OF[s] for s in symbols if kernel.config.get(s) == "m" and kernel.modules is not None
                  and MODULE_OF[s] not in kernel.modules]
        if unset:
            return f"{disable}, or use a kernel built with {', '.join(unset)} (this one is built without)"
        if absent:
            return f"{disable}, or install this kernel's complete modules package ({', '.join(absent)} missing)"
    return f"{disable}, or use a kernel whose IPv6 netfilter takes the NFQUEUE and REJECT rules"


# ---------------------------------------------------------------- assessing (reading + probing)

def _ipv6_enabled(root: Path) -> bool:
    return _exists(root, "/proc/net/if_inet6") or _exists(root, "/proc/sys/net/ipv6")


def assess(root: Path = Path("/"), env: Mapping[str, str] | None = None, live: bool = True,
           probes: Mapping[str, Probe] | None = None, probe_source: str = "") -> Report:
    """Detect, probe (live, unless probe results are passed in) and decide. `netguard run` calls
    this and refuses when report.verdict == "cannot", giving report.reasons."""
    environment = detect_environment(root, os.environ if env is None else env)
    full_config, config_source = read_kernel_config(root, environment.kernel)
    config = None if full_config is None else {s: full_config[s] for s in CONFIG_SYMBOLS if s in full_config}
    namespaces: tuple[str, ...] = ()
    seconds = 0.0
    if probes is not None:
        found = dict(probes)
        source = probe_source or "given"
    elif live:
        run: ProbeRun = live_probe()
        found, namespaces, seconds = run.probes, run.namespaces, run.seconds
        source = "live"
    else:
        found = {name: Probe(None, "not probed") for name in FEATURE_NAMES}
        source = "none"
    gate_list = gates(environment)
    kernel = KernelFiles(full_config, read_module_names(root, environment.kernel), environment.kernel)
    verdict, reasons, backend = decide(environment, gate_list, found, ipv6=_ipv6_enabled(root), kernel=kernel)
    return Report(environment=environment, gates=gate_list, probes=found, config=config,
                  config_source=config_source, verdict=verdict, reasons=reasons, backend=backend,
                  backends=usable_backends(found),
                  probe_source=source, namespaces=namespaces, seconds=seconds)


# ---------------------------------------------------------------- rendering

VERDICT_LINES = {"ok": "can enforce", "degraded": "degraded", "cannot": "cannot enforce"}
DETAIL_WIDTH = 70


def _yes_no(state: bool | None) -> str:
    return "yes" if state is True else "no" if state is False else "?"


def render(report: Report) -> str:
    """The human-readable table."""
    env = report.environment
    lines = [f"environment   {env.label}" + (f" ({env.distro})" if env.distro else ""),
             f"kernel        {env.kernel or '?'}"]
    if env.signals:
        lines.append(f"signals       {'; '.join(env.signals)}")
    for note in env.notes:
        lines.append(f"note          {note}")
    lines.append(f"kernel config {report.config_source}")
    if report.probe_source == "live":
        lines.append(f"probes        live ({report.seconds:.2f} s, {len(report.namespaces)} scratch namespaces, "
                     "all deleted)")
    elif report.probe_source == "none":
        lines.append("probes        not run (a tree other than / and no facts file)")
    else:
        lines.append(f"probes        from {report.probe_source} (not probed live)")
    lines.append("")
    lines.append("gates")
    for gate in report.gates:
        lines.append(f"  {gate.status.upper():5} {gate.title}: {gate.meaning}")
    lines.append("")
    rows = [("feature", "probe", "kernel config", "detail")]
    for feature in FEATURES:
        probe = report.probes.get(feature.name, Probe(None, "not probed"))
        cfg = " ".join(f"{s.removeprefix('CONFIG_')}={config_value(report.config, s)}" for s in feature.config)
        detail = probe.detail if len(probe.detail) <= DETAIL_WIDTH else probe.detail[:DETAIL_WIDTH - 3] + "..."
        rows.append((feature.label, _yes_no(probe.present), cfg or "-", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    lines.append("  config: y built in, m module, n not set, ? not in the config, - no config; "
                 "probe: ? could not be told")
    lines.append("")
    notes = []
    if report.backend not in (None, NFT_QUEUE) and report.probes.get("nft_queue", Probe(None)).present is False:
        notes.append("nft queue unavailable here")
    if report.backend not in (None, NFT_QUEUE) and report.probes.get("u32", Probe(None)).present is False:
        notes.append("no xt u32: pure ACKs of undecided flows are queued too, one more round trip per connection")
    unsupported = [b for b in report.backends if b not in firewall.BACKENDS]
    if unsupported:
        notes.append(f"{', '.join(unsupported)} works here, but this netguard's `run` cannot use it yet")
    others = [b for b in report.backends if b != report.backend and b not in unsupported]
    if others:
        notes.append(f"also usable: {', '.join(others)}")
    lines.append(f"backend       {report.backend or 'none'}" + (f" ({'; '.join(notes)})" if notes else ""))
    head = VERDICT_LINES[report.verdict]
    lines.append(f"verdict       {head}" + (f": {report.reasons[0]}" if report.reasons else ""))
    lines.extend(f"              {reason}" for reason in report.reasons[1:])
    return "\n".join(lines)


def to_json_text(report: Report) -> str:
    """The `--json` output."""
    return json.dumps(report.to_json(), indent=2, sort_keys=False)


__all__ = ["EXIT_CODES", "FEATURES", "Environment", "Gate", "Probe", "Report", "assess", "decide",
           "detect_environment", "gates", "load_facts", "probe_backend", "read_kernel_config", "render"]
