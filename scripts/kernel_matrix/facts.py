"""What a kernel really has, read from its own files: its config and its modules tree.

Strategy: an oracle independent of doctor. A feature is there when its config symbol is `y`, or
`m` and the module file is in the kernel's modules tree (a module deleted from the tree cannot be
loaded, whatever the config says); the tree's modules.builtin covers what was built in. Pure
functions over paths and texts, so the matrix can check doctor's JSON against them on the host,
before or after the boot, and unit tests can feed them small trees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# doctor feature -> every (config symbol, module) it needs. Only features that a kernel config
# decides are listed: capabilities, tools and the Python binding are the machine's, not the kernel's.
FEATURE_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "nfnetlink_queue": (("CONFIG_NETFILTER_NETLINK_QUEUE", "nfnetlink_queue"),),
    "xt_nfqueue_nft": (("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "xt_NFQUEUE"), ("CONFIG_NFT_COMPAT", "nft_compat")),
    "xt_nfqueue_legacy": (("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "xt_NFQUEUE"),
                          ("CONFIG_IP_NF_IPTABLES", "ip_tables"), ("CONFIG_IP_NF_FILTER", "iptable_filter")),
    "nft_queue": (("CONFIG_NFT_QUEUE", "nft_queue"),),
    # doctor's probe loads an ip and an ip6 table as the nft backend's (daemon.nft) are.
    "nft_ct_reject": (("CONFIG_NFT_CT", "nft_ct"), ("CONFIG_NFT_REJECT_IPV4", "nft_reject_ipv4"),
                      ("CONFIG_NFT_REJECT_IPV6", "nft_reject_ipv6"), ("CONFIG_NF_REJECT_IPV6", "nf_reject_ipv6"),
                      ("CONFIG_NFT_FIB_IPV4", "nft_fib_ipv4"), ("CONFIG_NFT_FIB_IPV6", "nft_fib_ipv6")),
    "connmark": (("CONFIG_NETFILTER_XT_CONNMARK", "xt_connmark"),),
    "connbytes": (("CONFIG_NETFILTER_XT_MATCH_CONNBYTES", "xt_connbytes"),),
    "conntrack": (("CONFIG_NETFILTER_XT_MATCH_CONNTRACK", "xt_conntrack"),),
    # doctor's row: NFQUEUE and REJECT through ip6tables (iptables-nft: nft_compat + the xt modules).
    "ip6tables": (("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "xt_NFQUEUE"),
                  ("CONFIG_IP6_NF_TARGET_REJECT", "ip6t_REJECT"), ("CONFIG_NF_REJECT_IPV6", "nf_reject_ipv6")),
    "u32": (("CONFIG_NETFILTER_XT_MATCH_U32", "xt_u32"),),
}


@dataclass(frozen=True)
class KernelFacts:
    """The features of one kernel tree: name -> present, and why (for the table)."""

    release: str
    present: dict[str, bool]
    why: dict[str, str]


def parse_config(text: str) -> dict[str, str]:
    """Kernel .config text -> {symbol: value}; `# X is not set` is "n"."""
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


def module_names(moddir: Path) -> set[str]:
    """Names of the loadable modules under moddir/kernel (xt_NFQUEUE for xt_NFQUEUE.ko.xz)."""
    names = set()
    for path in (moddir / "kernel").rglob("*.ko*"):
        names.add(path.name.split(".ko", 1)[0])
    return names


def facts(config: Mapping[str, str], modules: set[str], release: str = "") -> KernelFacts:
    """Pure: the features a kernel with this config and these module files has."""
    present: dict[str, bool] = {}
    why: dict[str, str] = {}
    for feature, needs in FEATURE_NEEDS.items():
        missing = []
        for symbol, module in needs:
            value = config.get(symbol, "n")
            if value == "y" or (value == "m" and module in modules):
                continue
            missing.append(f"{symbol}={value}" + (f" but no {module}.ko" if value == "m" else ""))
        present[feature] = not missing
        why[feature] = "; ".join(missing) or "present"
    return KernelFacts(release, present, why)


def read_tree(tree: Path) -> KernelFacts:
    """The facts of an unpacked kernel package: tree/boot/config-R and tree/lib/modules/R."""
    configs = sorted((tree / "boot").glob("config-*"))
    if len(configs) != 1:
        raise ValueError(f"{tree}/boot: expected one config-RELEASE, found {len(configs)}")
    release = configs[0].name.removeprefix("config-")
    config = parse_config(configs[0].read_text(encoding="utf-8", errors="replace"))
    return facts(config, module_names(tree / "lib" / "modules" / release), release)


def compare(kernel: KernelFacts, doctor: Mapping[str, Any]) -> list[str]:
    """Where doctor's `--json` features disagree with the kernel's facts ([] when they agree).
    A probe that could not tell (present null) disagrees too: the matrix wants an answer."""
    seen: dict[str, dict[str, Any]] = {str(f["name"]): f for f in doctor.get("features", [])}
    out = []
    for name, want in kernel.present.items():
        got = seen.get(name, {}).get("present")
        if got is not want:
            detail = seen.get(name, {}).get("detail", "")
            out.append(f"{name}: doctor {got}, kernel {want} ({kernel.why[name]}; doctor: {detail})")
    return out
