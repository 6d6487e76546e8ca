"""Running the e2e clients (skopeo, podman, Chromium) in a lab namespace, timed, and reading
netguard's block log.

How a client reaches a name is its `route`: "dns" resolves through the lab's dnsmasq (netguard judges
the answer; a blocked name gets NXDOMAIN), "v4" / "v6" pin the name to that family's address (an
/etc/hosts of its own, or Chromium's resolver rules), so the connection is made by name and the
ClientHello's SNI is what netguard must judge.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
from harness import scaled

from netguard.daemon import netns
from netguard.lab import lab as lab_mod
from netguard.lab import registry as rl

ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"
ROUTES = ("dns", "v4", "v6")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str
    took: float

    @property
    def out(self) -> str:
        return self.stdout + self.stderr


def address(reg: rl.RegistryLab, name: str, route: str) -> str:
    h = reg.lab.host(name)
    return h.v6 if route == "v6" else h.v4


def pins(reg: rl.RegistryLab, name: str, route: str) -> dict[str, str] | None:
    return None if route == "dns" else {name: address(reg, name, route)}


def run(reg: rl.RegistryLab, ns: str, argv: list[str], *, hosts: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None, timeout: float = 60) -> Result:
    start = time.monotonic()
    r = rl.run_client(ns, argv, env={**rl.client_env(reg), **(env or {})}, hosts=hosts, workdir=reg.workdir,
                      timeout=timeout)
    return Result(r.returncode, r.stdout, r.stderr, time.monotonic() - start)


def ref(name: str) -> str:
    return f"{name}/{rl.REPO}:{rl.TAG}"


def skopeo(reg: rl.RegistryLab, ns: str, name: str, route: str, *args: str) -> Result:
    """`skopeo ARGS... docker://NAME/REPO:TAG [...]`: args holds the subcommand, the options and
    any destination after the source."""
    sub, *rest = args
    argv = rl.skopeo_argv(reg, sub, "--cert-dir" if sub == "inspect" else "--src-cert-dir", str(reg.certs),
                          f"docker://{ref(name)}", *rest)
    return run(reg, ns, argv, hosts=pins(reg, name, route))


def podman_pull(reg: rl.RegistryLab, ns: str, name: str, route: str, store: Path) -> Result:
    """`podman pull` into a vfs store of its own under `store`."""
    argv = [*podman_base(store), "pull", "--cert-dir", str(reg.certs), ref(name)]
    return run(reg, ns, argv, hosts=pins(reg, name, route))


# podman wants a run root shorter than 50 characters: the client's private tmpfs at /var/lib (see
# registrylab.client_argv) holds it, and it vanishes with the command; images stay under `store`.
PODMAN_RUNROOT = "/var/lib/ng-podman-run"


def podman_base(store: Path) -> list[str]:
    for d in ("root", "tmp"):
        (store / d).mkdir(parents=True, exist_ok=True)
    return ["podman", "--root", str(store / "root"), "--runroot", PODMAN_RUNROOT, "--storage-driver", "vfs",
            "--tmpdir", str(store / "tmp"), "--events-backend", "none", "--cgroup-manager", "cgroupfs"]


def podman_inspect(reg: rl.RegistryLab, ns: str, store: Path, name: str) -> Result:
    return run(reg, ns, [*podman_base(store), "image", "inspect", ref(name)])


def oci_blob(layout: Path, digest: str) -> bytes:
    algo, hexdigest = digest.split(":", 1)
    return (layout / "blobs" / algo / hexdigest).read_bytes()


def blocks(events: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("verdict") == "block" and e.get("host") == host]


def chromium(ns: str, home: Path, url: str, rules: str | None = None, timeout: float = 60) -> Result:
    """Headless Chromium dumping the DOM of url; HOME (and its NSS db) under `home`."""
    # A fresh profile per run: a profile still locked by a Chromium that has not quite exited would
    # make this one hand the URL over to it and exit with an empty page.
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=home))
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]
    if rules:
        argv.append(f"--host-resolver-rules={rules}")
    argv += ["--dump-dom", url]
    start = time.monotonic()
    r = subprocess.run(netns.exec_argv(ns, ["env", f"HOME={home}", *argv]), capture_output=True, text=True,
                       timeout=timeout, check=False)
    return Result(r.returncode, r.stdout, r.stderr, time.monotonic() - start)


def rules(reg: rl.RegistryLab, name: str, route: str) -> str | None:
    """Chromium's --host-resolver-rules for a route (None: resolve through DNS)."""
    if route == "dns":
        return None
    addr = address(reg, name, route)
    return f"MAP {name} {'[' + addr + ']' if route == 'v6' else addr}"


def nss_trust(home: Path, ca: Path) -> None:
    """Create $HOME/.pki/nssdb trusting the lab CA (Chromium on Linux reads it)."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "netguard lab CA", "-i", str(ca)],
                   check=True, capture_output=True)


def pre_text(dom: str) -> str | None:
    """The text of the first <pre> element of a dumped DOM (how Chromium shows a JSON answer)."""
    m = re.search(r"<pre[^>]*>(.*?)</pre>", dom, re.S)
    return m.group(1) if m else None


CAPTURE_READY = scaled(5.0)  # seconds for tcpdump to say it is listening; it takes a few milliseconds


@contextlib.contextmanager
def capture(ns: str, pcap: Path, bpf: str) -> Iterator[Path]:
    """tcpdump on eth0 of namespace ns while the block runs; the pcap is complete when it exits."""
    log = pcap.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(netns.exec_argv(ns, ["tcpdump", "-i", "eth0", "-n", "--immediate-mode", "-U",
                                                     "-s", "0", "-w", str(pcap), bpf]),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + CAPTURE_READY
        while "listening on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {log.read_text(errors='replace')}")
            time.sleep(0.02)
        yield pcap
    finally:
        lab_mod.stop(proc)


def client_payloads(pcap: Path) -> dict[tuple[str, int], list[bytes]]:
    """The TCP payloads of each flow in a capture, keyed by (source address, source port), in
    sequence order, retransmissions dropped."""
    segments: dict[tuple[str, int], dict[int, bytes]] = {}
    with pcap.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if tcp.data:
                family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
                key = (socket.inet_ntop(family, ip.src), tcp.sport)
                segments.setdefault(key, {}).setdefault(tcp.seq, bytes(tcp.data))
    return {k: [v[s] for s in sorted(v)] for k, v in segments.items()}


def hello_segments(payloads: list[bytes]) -> tuple[int, list[int]]:
    """For one client flow: the length of its first TLS record (the ClientHello, header included),
    and the sizes of the segments that carried it (as far as they arrived)."""
    first = payloads[0]
    if len(first) < 5 or first[0] != 0x16:
        raise ValueError(f"flow does not start with a TLS handshake record: {first[:5].hex()}")
    need = 5 + int.from_bytes(first[3:5], "big")
    sizes, got = [], 0
    for p in payloads:
        if got >= need:
            break
        sizes.append(min(len(p), need - got))
        got += len(p)
    return need, sizes
