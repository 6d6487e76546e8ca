"""Live netfilter probes: which of the things netguard needs does this kernel really have?

Strategy: ask the kernel, do not guess from version numbers. Each probe adds one rule (or binds one
queue) inside a scratch network namespace from `netns.scratch` and reads the error; the namespace is
deleted on exit, so nothing lands in the caller's namespace. Every rule also matches only a
documentation address (192.0.2.1 / 2001:db8::1, RFC 5737 / RFC 3849), so even a rule that somehow
landed elsewhere would touch no traffic. Probe groups that use different tools run in parallel, each
in its own namespace (iptables-legacy serialises on a machine-wide lock, nft and iptables-nft do
not); the round trip (a datagram queued by the chosen backend and received through
NetfilterQueue) runs last, in a child Python process started inside its own namespace.

Results are `Probe` values (present: True / False / None = could not tell). `choose_backend` is
pure: nft `queue` where the native nft set netguard needs loads, else xt NFQUEUE via iptables-nft,
else via iptables-legacy, among the backends `netguard run` supports (firewall.BACKENDS), so doctor
names the backend `run` will use. A slow machine must not turn into a missing feature: the modules
the probes use are loaded first (a first load took more than 2 s in emulation), and a probe that
times out is tried once more with a long limit; if that times out too, the answer is "could not
tell", never "absent".
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from netguard.daemon import firewall, netns

# One kernel answer takes a few milliseconds, and doctor must finish in well under 3 s on an
# ordinary machine: a first try gets this long.
COMMAND_TIMEOUT = 2.0
# A probe that timed out is tried again with this long before it counts as "could not tell": a
# first module load, or an emulated machine (30-60x slower process starts), can take seconds.
RETRY_TIMEOUT = 30.0
# iptables-legacy serialises on /run/xtables.lock across all namespaces: wait this long for it.
XTABLES_LOCK_WAIT = "1"
# The round-trip child: Python start + import + one datagram; a queue that works answers in ms,
# and the wait ends as soon as the datagram is there.
ROUNDTRIP_TIMEOUT = 5.0
CHILD_TIMEOUT = 5.0
CHILD_RETRY_TIMEOUT = 120.0
# The modules the probes would make the kernel load on first use, loaded up front in one modprobe
# (missing ones are skipped). No table modules (iptable_filter, ...): loading one would make its
# table in every namespace, this one included.
PRELOAD_MODULES = ("nfnetlink_queue", "xt_NFQUEUE", "nft_queue", "nft_compat", "nft_ct", "nft_reject_ipv4",
                   "nft_reject_ipv6", "nft_fib_ipv4", "nft_fib_ipv6",
                   "xt_conntrack", "xt_connmark", "xt_connbytes", "xt_u32", "ipt_REJECT", "ip6t_REJECT")
PRELOAD_TIMEOUT = 120.0
# Queues are per namespace, and the scratch namespace is new: any number is free there.
PROBE_QUEUE = 0
PROBE_PORT = 9  # discard: nothing listens, the datagram only has to reach the queue
PROBE_V4 = "192.0.2.1"
PROBE_V6 = "2001:db8::1"
CAP_NET_ADMIN_BIT = 12  # linux/capability.h
CAP_SYS_ADMIN_BIT = 21

NFT_QUEUE = "nft"  # the native nft backend (daemon.nft): doctor and run use one name
IPTABLES_NFT = "iptables-nft"
IPTABLES_LEGACY = "iptables-legacy"
BACKENDS = (NFT_QUEUE, IPTABLES_NFT, IPTABLES_LEGACY)

# The xt features probed through each iptables tool: (feature, argv after the tool name).
XT_FEATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nfqueue", ("-A", "OUTPUT", "-d", PROBE_V4, "-p", "udp", "-j", "NFQUEUE",
                 "--queue-num", str(PROBE_QUEUE), "--queue-bypass")),
    ("conntrack", ("-A", "OUTPUT", "-d", PROBE_V4, "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")),
    ("connmark", ("-A", "OUTPUT", "-d", PROBE_V4, "-m", "connmark", "--mark", "0x1/0x1", "-j", "CONNMARK",
                  "--set-xmark", "0x2/0x2")),
    ("connbytes", ("-A", "OUTPUT", "-d", PROBE_V4, "-m", "connbytes", "--connbytes", "0:4096",
                   "--connbytes-dir", "original", "--connbytes-mode", "bytes", "-j", "ACCEPT")),
    ("reject", ("-A", "OUTPUT", "-d", PROBE_V4, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")),
    # The exact form of firewall's data-less-segment test (optional: without it every segment is queued).
    ("u32", ("-A", "OUTPUT", "-d", PROBE_V4, "-p", "tcp", "-m", "u32", "--u32", firewall.empty_segment_tests(4)[0],
             "-j", "RETURN")),
)
XT6_FEATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nfqueue6", ("-A", "OUTPUT", "-d", PROBE_V6, "-p", "udp", "-j", "NFQUEUE",
                  "--queue-num", str(PROBE_QUEUE), "--queue-bypass")),
    ("reject6", ("-A", "OUTPUT", "-d", PROBE_V6, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")),
    ("u32_6", ("-A", "OUTPUT", "-d", PROBE_V6, "-p", "tcp", "-m", "u32", "--u32", firewall.empty_segment_tests(6)[0],
               "-j", "RETURN")),
)
NFT_QUEUE_RULES = f"""table inet ng_probe_queue {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {PROBE_V4} udp dport {PROBE_PORT} queue num {PROBE_QUEUE} bypass
  }}
}}
"""
# What the native nft backend (daemon.nft) needs besides `queue`, in both of its tables (ip and
# ip6): connection marks, a byte window, packet counts, TCP resets and ICMP rejects, the local-address
# test (fib), payload at the TCP/UDP payload's start (@ih), and notrack in a raw-priority chain.
NFT_CT_RULES = "".join(f"""table {fam} ng_probe_ct {{
  chain out {{
    type filter hook output priority filter - 1; policy accept;
    {fam} daddr {addr} ct original bytes 0-4096 ct mark set ct mark & 0xff8fffff | 0x00100000
    {fam} daddr {addr} ct mark & 0x1 == 0x1 meta l4proto tcp reject with tcp reset
    {fam} daddr {addr} meta l4proto udp ct reply packets 0-8 reject with {icmp} type port-unreachable
    {fam} daddr {addr} iif "lo" fib saddr type != local return
    {fam} daddr {addr} meta l4proto udp @ih,16,32 & 0xf800ffff == 0x80000001 return
  }}
  chain raw {{
    type filter hook output priority raw; policy accept;
    {fam} daddr {addr} meta mark & 0x00700000 == 0x00300000 notrack
  }}
}}
""" for fam, addr, icmp in (("ip", PROBE_V4, "icmp"), ("ip6", PROBE_V6, "icmpv6")))


@dataclass(frozen=True)
class Probe:
    """One probed feature: present is True / False, or None when it could not be told."""

    present: bool | None
    detail: str = ""


@dataclass(frozen=True)
class ProbeRun:
    """Everything one live probe found, keyed by feature name (see doctor.FEATURES), and the
    scratch namespaces it made (all deleted again before it returned)."""

    probes: dict[str, Probe]
    namespaces: tuple[str, ...] = ()
    seconds: float = 0.0


@dataclass
class _Namespaces:
    names: list[str] = field(default_factory=list)


def usable_backends(probes: Mapping[str, Probe]) -> tuple[str, ...]:
    """Pure: every queueing backend the probe results allow, best first (whether or not `run`
    supports it: a fact about the kernel)."""
    def ok(name: str) -> bool:
        probe = probes.get(name)
        return probe is not None and probe.present is True

    usable = {NFT_QUEUE: ok("nft_queue") and ok("nft_ct_reject"), IPTABLES_NFT: ok("xt_nfqueue_nft"),
              IPTABLES_LEGACY: ok("xt_nfqueue_legacy")}
    return tuple(name for name in BACKENDS if usable[name])


def choose_backend(probes: Mapping[str, Probe], supported: Sequence[str] = firewall.BACKENDS) -> str | None:
    """Pure: the queueing backend `netguard run` will use (the best usable one among `supported`:
    nft queue, else xt NFQUEUE via iptables-nft, else via iptables-legacy); None when none works."""
    return next((b for b in usable_backends(probes) if b in supported), None)


def _first_line(text: str) -> str:
    """The first non-blank line of a tool's error output, without nft's `FILE:LINE:COL: ` prefix."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            _, marker, rest = line.partition("Error: ")
            return f"Error: {rest}" if marker else line
    return ""


def _patiently(argv: Sequence[str], stdin: str | None, first: float,
               retry: float) -> subprocess.CompletedProcess[str] | None:
    """Run argv with a short limit, and once more with a long one if it timed out; None when
    both timed out (the caller reports "could not tell")."""
    for limit in (first, retry):
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, input=stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            continue
    return None


def preload_modules() -> None:
    """Load the modules the probes use, best effort (no modprobe, no CAP_SYS_MODULE, a module
    the kernel lacks: the probes find out), so their first load is not timed by a probe."""
    if shutil.which("modprobe") is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(["modprobe", "-a", "-q", *PRELOAD_MODULES], capture_output=True, timeout=PRELOAD_TIMEOUT)


def _in_ns(ns: str, argv: Sequence[str], stdin: str | None = None) -> Probe:
    """Run argv inside the scratch namespace ns; present means exit status 0."""
    if not ns.startswith(netns.PREFIX):  # never probe outside a namespace made here
        raise ValueError(f"refusing to probe outside a scratch namespace: {ns!r}")
    done = _patiently(netns.exec_argv(ns, argv), stdin, COMMAND_TIMEOUT, RETRY_TIMEOUT)
    if done is None:
        return Probe(None, f"{argv[0]} timed out twice (after {COMMAND_TIMEOUT:g} s, then {RETRY_TIMEOUT:g} s)")
    if done.returncode == 0:
        return Probe(True, "rule accepted")
    return Probe(False, _first_line(done.stderr) or f"{argv[0]} exited {done.returncode}")


def _xt_group(tool: str, tool6: str, spaces: _Namespaces) -> dict[str, Probe]:
    """All xt features through one iptables tool pair, in one scratch namespace."""
    if shutil.which(tool) is None:
        missing = Probe(False, f"{tool} not installed (apt install iptables)")
        return {name: missing for name, _ in (*XT_FEATURES, *XT6_FEATURES)}
    results: dict[str, Probe] = {}
    with netns.scratch("doctor") as ns:
        spaces.names.append(ns)
        for name, args in XT_FEATURES:
            results[name] = _in_ns(ns, [tool, "-w", XTABLES_LOCK_WAIT, *args])
        for name, args in XT6_FEATURES:
            if shutil.which(tool6) is None:
                results[name] = Probe(False, f"{tool6} not installed")
            else:
                results[name] = _in_ns(ns, [tool6, "-w", XTABLES_LOCK_WAIT, *args])
    return results


def _nft_group(spaces: _Namespaces) -> dict[str, Probe]:
    """The native nft statements a nft backend would use."""
    if shutil.which("nft") is None:
        missing = Probe(False, "nft not installed (apt install nftables)")
        return {"nft_queue": missing, "nft_ct_reject": missing}
    with netns.scratch("doctor") as ns:
        spaces.names.append(ns)
        return {"nft_queue": _in_ns(ns, ["nft", "-f", "-"], NFT_QUEUE_RULES),
                "nft_ct_reject": _in_ns(ns, ["nft", "-f", "-"], NFT_CT_RULES)}


def _cap_net_admin() -> Probe:
    """CAP_NET_ADMIN in this process's effective set (from /proc/self/status)."""
    return _capability(CAP_NET_ADMIN_BIT)


def _capability(bit: int) -> Probe:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
                    return Probe(bool(eff >> bit & 1), f"CapEff {line.split()[1]}")
    except OSError as err:
        return Probe(None, f"cannot read /proc/self/status: {err.strerror}")
    return Probe(None, "no CapEff line in /proc/self/status")


def _netfilterqueue_importable() -> Probe:
    try:
        import netfilterqueue
    except ImportError as err:
        return Probe(False, f"{err} (scripts/bootstrap installs NetfilterQueue)")
    return Probe(True, f"from {os.path.dirname(netfilterqueue.__file__ or '')}")


def _queue_group(backend: str | None, spaces: _Namespaces) -> dict[str, Probe]:
    """Bind a queue (nfnetlink_queue) and, with a backend, queue one datagram and receive it,
    in a child Python process running inside a scratch namespace."""
    with netns.scratch("doctor") as ns:
        spaces.names.append(ns)
        argv = netns.exec_argv(ns, [sys.executable, "-m", "netguard.doctor.probe", "queue-child",
                                    backend or "none", ns])
        # A retry starts a fresh child: the one that timed out was killed with its rule and queue.
        done = _patiently(argv, None, CHILD_TIMEOUT, CHILD_RETRY_TIMEOUT)
        if done is None:
            unknown = Probe(None, f"queue probe timed out twice (after {CHILD_TIMEOUT:g} s, then "
                                  f"{CHILD_RETRY_TIMEOUT:g} s)")
            return {"nfnetlink_queue": unknown, "queue_roundtrip": unknown}
    try:
        found: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        unknown = Probe(None, _first_line(done.stderr) or "queue probe printed nothing")
        return {"nfnetlink_queue": unknown, "queue_roundtrip": unknown}
    return {name: Probe(found[name]["present"], found[name]["detail"])
            for name in ("nfnetlink_queue", "queue_roundtrip")}


def _collapse(xt_nft: Mapping[str, Probe], xt_legacy: Mapping[str, Probe],
              nft: Mapping[str, Probe]) -> dict[str, Probe]:
    """Feature rows from the per-tool results: the xt features as seen through the xt tool the
    backend would use (iptables-nft unless only legacy queues)."""
    probes = {"xt_nfqueue_nft": xt_nft["nfqueue"], "xt_nfqueue_legacy": xt_legacy["nfqueue"], **nft}
    backend = choose_backend(probes)
    tool, seen = ((IPTABLES_LEGACY, xt_legacy) if backend == IPTABLES_LEGACY else (IPTABLES_NFT, xt_nft))
    for name in ("conntrack", "connmark", "connbytes", "reject"):
        probe = seen[name]
        probes[name] = Probe(probe.present, f"{tool}: {probe.detail}")
    v4, v6 = seen["nfqueue6"], seen["reject6"]
    both = v4.present is True and v6.present is True
    either_false = v4.present is False or v6.present is False
    ip6 = "ip6tables-legacy" if tool == IPTABLES_LEGACY else "ip6tables-nft"
    probes["ip6tables"] = Probe(True if both else (False if either_false else None),
                                f"{ip6}: NFQUEUE {v4.detail}; REJECT {v6.detail}")
    u4, u6 = (seen.get(name, Probe(None, "not probed")) for name in ("u32", "u32_6"))
    probes["u32"] = Probe(True if u4.present is True and u6.present is True
                          else False if False in (u4.present, u6.present) else None,
                          f"{tool}: {u4.detail}; {ip6}: {u6.detail}")
    return probes


def _parallel(jobs: Mapping[str, Callable[[], dict[str, Probe]]]) -> dict[str, dict[str, Probe]]:
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def _can_make_namespaces() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not installed"
    if os.geteuid() != 0:
        return "not root: the probes need to create network namespaces"
    if _capability(CAP_SYS_ADMIN_BIT).present is False:
        # Root in a sandbox (the systemd unit drops it): `ip netns add` would fail half-way.
        return "no CAP_SYS_ADMIN: the probes need to create network namespaces"
    return None


def probe_backend() -> str | None:
    """Fast: which backend works here (the three queueing probes only, in parallel, each in its
    own scratch namespace). None when none does or namespaces cannot be made."""
    if _can_make_namespaces() is not None:
        return None
    preload_modules()
    spaces = _Namespaces()
    found = _parallel({
        "nft": lambda: _nft_group(spaces),
        "xt_nft": lambda: _xt_nfqueue_only(IPTABLES_NFT, spaces),
        "xt_legacy": lambda: _xt_nfqueue_only(IPTABLES_LEGACY, spaces),
    })
    return choose_backend({**found["nft"], "xt_nfqueue_nft": found["xt_nft"]["nfqueue"],
                           "xt_nfqueue_legacy": found["xt_legacy"]["nfqueue"]})


def _xt_nfqueue_only(tool: str, spaces: _Namespaces) -> dict[str, Probe]:
    if shutil.which(tool) is None:
        return {"nfqueue": Probe(False, f"{tool} not installed")}
    with netns.scratch("doctor") as ns:
        spaces.names.append(ns)
        return {"nfqueue": _in_ns(ns, [tool, "-w", XTABLES_LOCK_WAIT, *XT_FEATURES[0][1]])}


def live_probe() -> ProbeRun:
    """Probe every feature on this machine, in scratch namespaces that are gone on return."""
    start = time.monotonic()
    probes: dict[str, Probe] = {"cap_net_admin": _cap_net_admin(),
                                "netfilterqueue": _netfilterqueue_importable()}
    why_not = _can_make_namespaces()
    if why_not is not None:
        for name in ("nfnetlink_queue", "xt_nfqueue_nft", "xt_nfqueue_legacy", "nft_queue", "nft_ct_reject",
                     "conntrack", "connmark", "connbytes", "reject", "ip6tables", "u32", "queue_roundtrip"):
            probes[name] = Probe(None, why_not)
        return ProbeRun(probes, (), time.monotonic() - start)
    preload_modules()
    spaces = _Namespaces()
    found = _parallel({
        "xt_nft": lambda: _xt_group(IPTABLES_NFT, "ip6tables-nft", spaces),
        "xt_legacy": lambda: _xt_group(IPTABLES_LEGACY, "ip6tables-legacy", spaces),
        "nft": lambda: _nft_group(spaces),
    })
    probes.update(_collapse(found["xt_nft"], found["xt_legacy"], found["nft"]))
    probes.update(_queue_group(choose_backend(probes), spaces))
    return ProbeRun(probes, tuple(spaces.names), time.monotonic() - start)


# ---- the child: runs inside a scratch namespace, started by _queue_group ----

def _roundtrip_rule(backend: str) -> tuple[list[str], str | None]:
    """argv (and stdin) that queues our one datagram on lo with the given backend."""
    if backend == NFT_QUEUE:
        rules = (f"table inet ng_probe_rt {{\n  chain out {{\n    type filter hook output priority 0;\n"
                 f"    oif lo udp dport {PROBE_PORT} queue num {PROBE_QUEUE}\n  }}\n}}\n")
        return ["nft", "-f", "-"], rules
    return [backend, "-w", XTABLES_LOCK_WAIT, "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport",
            str(PROBE_PORT), "-j", "NFQUEUE", "--queue-num", str(PROBE_QUEUE)], None


def _inside(ns: str) -> bool:
    """True when this process runs in the scratch namespace ns (the child installs a rule, so it
    refuses to run anywhere else, e.g. when started by hand in the root namespace)."""
    if not ns.startswith(netns.PREFIX):
        return False
    done = subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True,
                          timeout=RETRY_TIMEOUT)  # the parent bounds the child as a whole
    return done.stdout.split() == [ns]


def _queue_child(backend: str) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {
        "nfnetlink_queue": {"present": None, "detail": ""},
        "queue_roundtrip": {"present": None, "detail": "no queueing backend to test with"},
    }
    try:
        from netfilterqueue import NetfilterQueue
    except ImportError as err:
        proc = os.path.exists("/proc/net/netfilter/nfnetlink_queue")
        result["nfnetlink_queue"] = {"present": True if proc else None,
                                     "detail": f"netfilterqueue not importable ({err}); "
                                               f"/proc/net/netfilter/nfnetlink_queue {'present' if proc else 'absent'}"}
        return result
    received: list[int] = []

    def on_packet(pkt: Any) -> None:
        received.append(len(pkt.get_payload()))
        pkt.accept()

    queue = NetfilterQueue()
    try:
        queue.bind(PROBE_QUEUE, on_packet)
    except OSError as err:
        result["nfnetlink_queue"] = {"present": False, "detail": f"bind failed: {err}"}
        return result
    try:
        proc = os.path.exists("/proc/net/netfilter/nfnetlink_queue")
        result["nfnetlink_queue"] = {"present": True, "detail": "queue bound" + (
            ", /proc/net/netfilter/nfnetlink_queue present" if proc else "")}
        if backend == "none":
            return result
        argv, stdin = _roundtrip_rule(backend)
        done = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=RETRY_TIMEOUT)
        if done.returncode != 0:
            result["queue_roundtrip"] = {"present": False,
                                         "detail": f"rule refused: {_first_line(done.stderr)}"}
            return result
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"netguard doctor", ("127.0.0.1", PROBE_PORT))
        deadline = time.monotonic() + ROUNDTRIP_TIMEOUT
        fd = queue.get_fd()
        while not received and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                queue.run(block=False)
        result["queue_roundtrip"] = (
            {"present": True, "detail": f"{backend}: datagram queued and received ({received[0]} bytes)"}
            if received else
            {"present": False, "detail": f"{backend}: nothing arrived within {ROUNDTRIP_TIMEOUT:g} s"})
        return result
    finally:
        queue.unbind()


def main(argv: Sequence[str]) -> int:
    """Entry for the child process: `python -m netguard.doctor.probe queue-child BACKEND NS`."""
    if len(argv) != 3 or argv[0] != "queue-child" or argv[1] not in (*BACKENDS, "none"):
        print("usage: python -m netguard.doctor.probe queue-child nft|iptables-nft|iptables-legacy|none NS",
              file=sys.stderr)
        return 2
    if not _inside(argv[2]):
        print(f"queue-child: not running inside scratch namespace {argv[2]!r}: refusing", file=sys.stderr)
        return 2
    print(json.dumps(_queue_child(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
