"""Regenerate the doctor fixture trees: `python tests/data/doctor/make_fixtures.py`.

Strategy: each fixture is a directory with `root/` (the files doctor reads, below a root path) and
`facts.json` (the environment variables and the probe results, since a WSL or LinuxKit kernel
cannot be probed on this machine). Everything comes from /work/shared/reference/facts.md; where a
value is an assumption it says so in `facts.json` ("assumed"), and README.md lists them. The trees
are committed; this script only documents how they were made and keeps them consistent.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

ALL = ("CONFIG_NETFILTER_NETLINK_QUEUE", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "CONFIG_NFT_COMPAT",
       "CONFIG_IP_NF_IPTABLES", "CONFIG_NFT_QUEUE", "CONFIG_NFT_CT", "CONFIG_NFT_REJECT", "CONFIG_NF_CONNTRACK",
       "CONFIG_NETFILTER_XT_MATCH_CONNTRACK", "CONFIG_NETFILTER_XT_CONNMARK",
       "CONFIG_NETFILTER_XT_MATCH_CONNBYTES", "CONFIG_IP_NF_TARGET_REJECT", "CONFIG_IP6_NF_IPTABLES",
       "CONFIG_IP6_NF_TARGET_REJECT")
EVERYTHING = {"cap_net_admin": True, "nfnetlink_queue": True, "xt_nfqueue_nft": True, "xt_nfqueue_legacy": True,
              "nft_queue": True, "nft_ct_reject": True, "conntrack": True, "connmark": True, "connbytes": True,
              "reject": True, "ip6tables": True, "netfilterqueue": True}
WSL_MARKERS = {"run/WSL/1_interop": "", "proc/sys/fs/binfmt_misc/WSLInterop":
               "enabled\ninterpreter /init\nflags: PF\noffset 0\nmagic 4d5a\n"}
IF_INET6 = "00000000000000000000000000000001 01 80 10 80       lo\n"


def config(values: dict[str, str], note: str) -> str:
    lines = [f"# excerpt: {note}"]
    for symbol, value in values.items():
        lines.append(f"# {symbol} is not set" if value == "n" else f"{symbol}={value}")
    return "\n".join(lines) + "\n"


def os_release(pretty: str, id_: str, version: str) -> str:
    return f'PRETTY_NAME="{pretty}"\nNAME="{pretty.split()[0]}"\nVERSION_ID="{version}"\nID={id_}\n'


UBUNTU_2004 = os_release("Ubuntu 20.04.6 LTS", "ubuntu", "20.04")
UBUNTU_2204 = os_release("Ubuntu 22.04.4 LTS", "ubuntu", "22.04")
UBUNTU_2404 = os_release("Ubuntu 24.04.1 LTS", "ubuntu", "24.04")
DEBIAN_12 = os_release("Debian GNU/Linux 12 (bookworm)", "debian", "12")
PASSWD = "root:x:0:0:root:/root:/bin/bash\n"
VAGRANT_PASSWD = PASSWD + "vagrant:x:1000:1000:vagrant,,,:/home/vagrant:/bin/bash\n"
WSL_ENV = {"WSL_DISTRO_NAME": "Ubuntu", "WSL_INTEROP": "/run/WSL/1_interop", "USER": "root"}

FIXTURES: dict[str, dict[str, Any]] = {
    "wsl2-4.19": {
        "release": "4.19.128-microsoft-standard",
        "files": {**WSL_MARKERS, "etc/os-release": UBUNTU_2004},
        "config_gz": config({"CONFIG_NETFILTER_NETLINK_QUEUE": "n", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "n",
                             "CONFIG_NFT_QUEUE": "n", "CONFIG_NETFILTER_XT_CONNMARK": "n",
                             "CONFIG_NETFILTER_XT_MATCH_CONNBYTES": "n", "CONFIG_NF_CONNTRACK": "y"},
                            "Microsoft config-wsl 4.19 (facts.md: no nfnetlink_queue, no NFQUEUE, no "
                            "connmark/connbytes; conntrack assumed, Docker runs on it)"),
        "env": {**WSL_ENV, "WSL_DISTRO_NAME": "Ubuntu-20.04"},
        "probes": {"cap_net_admin": True, "nfnetlink_queue": False, "xt_nfqueue_nft": False,
                   "xt_nfqueue_legacy": False, "nft_queue": False, "nft_ct_reject": None, "conntrack": True,
                   "connmark": False, "connbytes": False, "reject": None, "ip6tables": None,
                   "netfilterqueue": True},
        "assumed": ["conntrack: Docker's engine needs it", "cap_net_admin, netfilterqueue: run as root "
                    "after scripts/bootstrap"],
    },
    "wsl2-5.10": {
        "release": "5.10.102.1-microsoft-standard-WSL2",
        "files": {**WSL_MARKERS, "etc/os-release": UBUNTU_2004,
                  "mnt/c/Users/bob/.wslconfig": "[wsl2]\nmemory=8GB\n"},
        "config_gz": config({"CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "n", "CONFIG_NFT_QUEUE": "n"},
                            "only what the issue states: stock WSL 2 kernels before 6.6 cannot queue"),
        "env": WSL_ENV,
        "probes": {"cap_net_admin": True, "nfnetlink_queue": None, "xt_nfqueue_nft": False,
                   "xt_nfqueue_legacy": False, "nft_queue": False, "nft_ct_reject": None, "conntrack": True,
                   "connmark": None, "connbytes": None, "reject": None, "ip6tables": None,
                   "netfilterqueue": True},
        "assumed": ["conntrack: Docker's engine needs it", "unknown (null): nfnetlink_queue, connmark, "
                    "connbytes, REJECT, ip6tables, nft ct (no 5.10 config in facts.md)"],
    },
    "wsl2-5.15": {
        "release": "5.15.167.4-microsoft-standard-WSL2",
        "files": {**WSL_MARKERS, "etc/os-release": UBUNTU_2204,
                  "etc/wsl.conf": "[boot]\nsystemd=true\n\n[automount]\nroot = /win/\n\n"
                                  "[network]\ngenerateResolvConf = false\n",
                  "win/c/Users/carol/.wslconfig": "[wsl2]\nnetworkingMode=NAT\n"},
        "config_gz": config({"CONFIG_NETFILTER_NETLINK_QUEUE": "y", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "n",
                             "CONFIG_NFT_QUEUE": "n", "CONFIG_NETFILTER_XT_CONNMARK": "n",
                             "CONFIG_NETFILTER_XT_MATCH_CONNBYTES": "n", "CONFIG_NF_CONNTRACK": "y"},
                            "WSL 2 5.15 config seen in a fork (facts.md: nfnetlink_queue built, nothing "
                            "can send to it; no connmark/connbytes)"),
        "env": {**WSL_ENV, "WSL_DISTRO_NAME": "Ubuntu-22.04"},
        "probes": {"cap_net_admin": True, "nfnetlink_queue": True, "xt_nfqueue_nft": False,
                   "xt_nfqueue_legacy": False, "nft_queue": False, "nft_ct_reject": None, "conntrack": True,
                   "connmark": False, "connbytes": False, "reject": None, "ip6tables": None,
                   "netfilterqueue": True},
        "assumed": ["conntrack: Docker's engine needs it"],
    },
    "wsl2-6.6": {
        "release": "6.6.87.2-microsoft-standard-WSL2",
        "files": {**WSL_MARKERS, "etc/os-release": UBUNTU_2404, "proc/net/if_inet6": IF_INET6,
                  "mnt/c/Users/alice/.wslconfig": "[wsl2]\nnetworkingMode=mirrored\ndnsTunneling=true\n",
                  "sys/class/net/loopback0/operstate": "up\n"},
        "config_gz": config({s: "m" for s in ALL} | {"CONFIG_NF_CONNTRACK": "y"},
                            "WSL 2 6.6 (facts.md: NFQUEUE, nft queue, connmark, connbytes as modules, "
                            "shipped in a VHD from WSL 2.5.1)"),
        "env": {**WSL_ENV, "WSL_DISTRO_NAME": "Ubuntu-24.04"},
        "probes": EVERYTHING,
        "assumed": ["nft ct/reject, REJECT and ip6tables modules ship with the NFQUEUE ones"],
    },
    "wsl2-6.18": {
        "release": "6.18.33.1-microsoft-standard-WSL2",
        "files": {**WSL_MARKERS, "etc/os-release": UBUNTU_2404, "proc/net/if_inet6": IF_INET6},
        "config_gz": None,  # facts.md: 6.18 has no /proc/config.gz
        "env": {**WSL_ENV, "WSL_DISTRO_NAME": "Ubuntu-24.04"},
        "probes": EVERYTHING,
        "assumed": ["nft ct/reject, REJECT and ip6tables modules ship with the NFQUEUE ones"],
    },
    "docker-desktop-6.10": {
        "release": "6.10.14-linuxkit",
        "files": {"proc/sys/kernel/hostname": "docker-desktop\n", "proc/net/if_inet6": IF_INET6,
                  "etc/os-release": 'PRETTY_NAME="Docker Desktop"\nNAME="Docker Desktop"\nID=linuxkit\n'},
        "config_gz": config({s: "y" for s in ALL}, "LinuxKit (facts.md: NFQUEUE, nft queue, connmark, "
                                                   "connbytes built in)"),
        "env": {},
        "probes": EVERYTHING,
        "assumed": ["nft ct/reject, REJECT and ip6tables built in like the rest"],
    },
    "vagrant-ubuntu-20.04": {
        "release": "5.4.0-42-generic",
        "files": {"etc/os-release": UBUNTU_2004, "etc/passwd": VAGRANT_PASSWD, "etc/hostname": "ubuntu2004\n",
                  "vagrant/Vagrantfile": 'Vagrant.configure("2") { |c| c.vm.box = "generic/ubuntu2004" }\n',
                  "proc/net/if_inet6": IF_INET6},
        "boot_config": config({s: "m" for s in ALL} | {"CONFIG_NF_CONNTRACK": "m"},
                              "Ubuntu generic kernels build netfilter as modules"),
        "env": {"SUDO_USER": "vagrant", "USER": "root"},
        "probes": EVERYTHING,
        "assumed": ["Ubuntu's generic config (not in facts.md)"],
    },
    "vagrant-ubuntu-22.04": {
        "release": "5.15.0-91-generic",
        "files": {"etc/os-release": UBUNTU_2204, "etc/passwd": VAGRANT_PASSWD, "etc/hostname": "ubuntu2204\n",
                  "proc/net/if_inet6": IF_INET6},  # synced folder disabled: no /vagrant
        "boot_config": config({s: "m" for s in ALL} | {"CONFIG_NF_CONNTRACK": "m"},
                              "Ubuntu generic kernels build netfilter as modules"),
        "env": {"USER": "root"},
        "probes": EVERYTHING,
        "assumed": ["Ubuntu's generic config (not in facts.md)"],
    },
    "debian-plain": {
        "release": "6.1.0-18-amd64",
        "files": {"etc/os-release": DEBIAN_12, "etc/passwd": PASSWD, "etc/hostname": "build01\n",
                  "proc/net/if_inet6": IF_INET6,
                  "proc/self/cgroup": "0::/user.slice/user-0.slice/session-3.scope\n"},
        "boot_config": config({s: "m" for s in ALL}, "Debian 12 builds netfilter as modules"),
        "env": {"USER": "root"},
        "probes": EVERYTHING,
        "assumed": ["Debian's config (not in facts.md)"],
    },
    "wsl1": {
        "release": "4.4.0-19041-Microsoft",
        "files": {**WSL_MARKERS, "etc/os-release": UBUNTU_2004,
                  "proc/version": "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) "
                                  "(gcc version 5.4.0 (GCC) ) #1237-Microsoft Sat Sep 11 14:32:00 PST 2021\n"},
        "config_gz": None,
        "env": WSL_ENV,
        "probes": {"cap_net_admin": True, "netfilterqueue": True},
        "assumed": ["WSL 1 has no netfilter: the probes are left unknown"],
    },
    "container-podman": {
        "release": "6.1.0-18-amd64",
        "files": {"etc/os-release": DEBIAN_12, "run/.containerenv": 'engine="podman-4.3.1"\n',
                  "proc/self/cgroup": "0::/\n",
                  "proc/self/mountinfo": "1 0 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/l\n"},
        "config_gz": None,
        "env": {"container": "podman"},
        "probes": {**EVERYTHING, "cap_net_admin": False},
        "assumed": ["podman's default capabilities do not include CAP_NET_ADMIN"],
    },
}


def write(tree: Path, rel: str, text: str) -> None:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    for name, spec in FIXTURES.items():
        base = HERE / name
        if base.exists():
            shutil.rmtree(base)
        tree = base / "root"
        write(tree, "proc/sys/kernel/osrelease", spec["release"] + "\n")
        for rel, text in spec["files"].items():
            write(tree, rel, text)
        if spec.get("config_gz"):
            (tree / "proc").mkdir(parents=True, exist_ok=True)
            # mtime=0: the same bytes on every run, so git sees no change
            (tree / "proc/config.gz").write_bytes(gzip.compress(spec["config_gz"].encode(), mtime=0))
        if spec.get("boot_config"):
            write(tree, f"boot/config-{spec['release']}", spec["boot_config"])
        facts = {"source": "/work/shared/reference/facts.md", "assumed": spec["assumed"], "env": spec["env"],
                 "probes": spec["probes"]}
        write(base, "facts.json", json.dumps(facts, indent=2) + "\n")


if __name__ == "__main__":
    main()
