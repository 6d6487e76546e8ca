"""Real proxies and a HelloRetryRequest server in a namespace lab, from Debian packages.

Strategy: compose `netguard.lab.lab` without changing it. `start(lab)` runs, in the lab's registry
namespace (so they reach every lab name, resolving through the lab's dnsmasq via
/etc/netns/REGISTRY/resolv.conf, which the lab deletes with the namespace): microsocks (SOCKS5,
without and with username/password), Dante (SOCKS4 and SOCKS5), OpenSSH's dynamic forwarding
(`ssh -D`: SOCKS4a, which Dante 1.4 does not do, through an sshd on the namespace's loopback),
tinyproxy (HTTP proxy, CONNECT) and Squid (HTTP proxy that keeps client connections alive). (The
lab's own server answers TLS on HRR_TLS with a HelloRetryRequest to clients without a P-256 key
share: netguard.lab.server.) Each listens on every address of the namespace, on its own port, and is
waited for before `start` returns. They die with the lab (`Lab.close` kills what it started).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from netguard.daemon import netns
from netguard.lab import lab as lab_mod
from netguard.lab import server as lab_server

MICROSOCKS = 1080
DANTE = 1081
MICROSOCKS_AUTH = 1082
SSH_SOCKS = 1085
TINYPROXY = 3128
SQUID = 3129
HRR_TLS = lab_server.HRR_PORT
SSHD = 2222  # on the namespace's loopback only: the SOCKS4a forwarder's own server
USER, PASSWORD = "labuser", "lab-secret"
READY_TIMEOUT = 15.0  # seconds for every proxy to accept connections; they take well under 2
PACKAGES = {"microsocks": "microsocks", "danted": "dante-server", "tinyproxy": "tinyproxy", "squid": "squid",
            "sshd": "openssh-server"}


def missing() -> list[str]:
    """The Debian packages of the proxies that are not installed here."""
    found = []
    for tool, package in PACKAGES.items():
        paths = (Path("/usr/bin") / tool, Path("/usr/sbin") / tool)
        if not any(p.exists() for p in paths):
            found.append(package)
    return found


def _dante_conf(workdir: Path) -> Path:
    rules = "".join(f"socks pass {{ from: {a} to: {b} }}\n" for a in ("0.0.0.0/0", "::/0")
                    for b in ("0.0.0.0/0", "::/0", "."))
    conf = workdir / "danted.conf"
    conf.write_text(f"logoutput: stderr\ninternal: 0.0.0.0 port = {DANTE}\ninternal: :: port = {DANTE}\n"
                    "external: eth0\nsocksmethod: none\nclientmethod: none\nuser.privileged: root\n"
                    "user.unprivileged: nobody\nclient pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n"
                    "client pass { from: ::/0 to: ::/0 }\n" + rules)
    return conf


def _squid_conf(workdir: Path, lab: lab_mod.Lab) -> Path:
    conf = workdir / "squid.conf"
    conf.write_text(f"http_port {SQUID}\nhttp_access allow all\ncache deny all\naccess_log none\n"
                    "cache_store_log none\ncache_log /dev/null\npid_filename none\nvisible_hostname lab\n"
                    f"dns_nameservers {lab.dns_v4}\nshutdown_lifetime 1 seconds\ncoredump_dir none\n")
    return conf


def _ssh_socks(lab: lab_mod.Lab, workdir: Path) -> None:
    for key in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / key)], check=True)
    (workdir / "authorized_keys").write_text((workdir / "userkey.pub").read_text())
    conf = workdir / "sshd_config"
    conf.write_text(f"Port {SSHD}\nListenAddress 127.0.0.1\nHostKey {workdir}/hostkey\nPidFile none\n"
                    f"AuthorizedKeysFile {workdir}/authorized_keys\nPermitRootLogin prohibit-password\n"
                    "StrictModes no\nUsePAM no\nAllowTcpForwarding yes\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    _start(lab, ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], workdir / "sshd.log")
    _wait(lab, [("127.0.0.1", SSHD)])
    # ssh binds "::" for IPv6 only: one forwarder per family.
    _start(lab, ["ssh", "-N", "-D", f"0.0.0.0:{SSH_SOCKS}", "-D", f"[::]:{SSH_SOCKS}", "-p", str(SSHD),
                 "-i", str(workdir / "userkey"),
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                 "root@127.0.0.1"], workdir / "ssh-socks.log")


def _start(lab: lab_mod.Lab, argv: list[str], log: Path) -> None:
    with log.open("wb") as out:
        proc = subprocess.Popen(netns.exec_argv(lab.registry, argv), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    lab.procs.append(proc)


_PROBE = """
import socket, sys
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(1)
    try:
        s.connect((host, int(port)))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
"""


def _wait(lab: lab_mod.Lab, endpoints: list[tuple[str, int]]) -> None:
    specs = [f"{host}:{port}" for host, port in endpoints]
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if netns.run(lab.registry, [sys.executable, "-c", _PROBE, *specs], check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"proxies: {', '.join(specs)} not accepting after {READY_TIMEOUT:.0f} s")


def start(lab: lab_mod.Lab) -> None:
    """Start every proxy and the HRR server in the lab's registry namespace; wait until they accept."""
    workdir = lab.workdir / "proxies"
    workdir.mkdir(exist_ok=True)
    etc = Path("/etc/netns") / lab.registry
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {lab.dns_v4}\noptions timeout:1 attempts:1\n")
    _start(lab, ["microsocks", "-i", "::", "-p", str(MICROSOCKS)], workdir / "microsocks.log")
    _start(lab, ["microsocks", "-i", "::", "-p", str(MICROSOCKS_AUTH), "-u", USER, "-P", PASSWORD],
           workdir / "microsocks-auth.log")
    _start(lab, ["danted", "-f", str(_dante_conf(workdir)), "-p", str(workdir / "danted.pid")],
           workdir / "danted.log")
    tiny = workdir / "tinyproxy.conf"
    tiny.write_text(f"User nobody\nGroup nogroup\nPort {TINYPROXY}\nTimeout 60\nLogLevel Info\nMaxClients 50\n")
    _start(lab, ["tinyproxy", "-d", "-c", str(tiny)], workdir / "tinyproxy.log")
    _start(lab, ["squid", "-N", "-f", str(_squid_conf(workdir, lab))], workdir / "squid.log")
    _ssh_socks(lab, workdir)
    _wait(lab, [("127.0.0.1", p) for p in (MICROSOCKS, DANTE, MICROSOCKS_AUTH, SSH_SOCKS, TINYPROXY, SQUID)]
          + [("::1", p) for p in (MICROSOCKS, SSH_SOCKS, SQUID)])
