"""The daemon on the real network path: added latency, bulk throughput, verdict capacity, peak RSS.

Strategy: five namespace labs (netguard.lab.lab) live for the whole section, identical except for
what guards the client namespace: "no rules"; "conntrack-only", netguard's own chain layout
(firewall.build_rules) with every NFQUEUE target replaced by the verdict it would end in (CONNMARK
allowed), the floor any netfilter solution pays; "nfqueue floor", netguard's exact rules with a
minimal C consumer (nfqueue_floor.c, libnetfilter_queue) that gives every packet the verdict netguard
gives an allowed flow without reading it, the floor any NFQUEUE design pays; "python floor", the same
with a do-nothing Python consumer (python_floor.py: NetfilterQueue and netguard's receive loop), the
floor a Python daemon pays before it looks at a packet; and "netguard" (`netguard run`, default
policy, started by the integration tests' Runner). Measurements alternate between them round after
round (A B C D E A B C D E ...) so machine drift hits all alike; rows give the median of the rounds
and their min/max. The goals are ratios to the NFQUEUE floor measured in the same rounds (added
latency, verdicts per CPU-second), with the absolute goals kept as rows too; rows "netguard / python
floor" (no goal) show how much of that is netguard's own work on a packet.
The clients, the server and the floods are C (netpath_tools.c, built with gcc into a
temporary directory at run time): Python would measure itself, not the path.

- latency: sequential new connections, each connect + a real ClientHello (Python's ssl, SNI
  registry-1.docker.io, 517 bytes) + a 128-byte reply from a C server; p50/p99 per round.
- throughput: iperf3, one TCP stream, client to registry namespace.
- verdict capacity: closed-loop floods into the netguard lab (at most WINDOW packets in flight, so
  the queue never overflows): ClientHello segments each on a new flow (raw socket, counted arriving
  in the registry namespace) and DNS answers from port 53 (counted arriving at a client socket).
  Per-core figure = verdicts / the daemon's CPU time (utime + stime from /proc/PID/stat).
- idle CPU: the daemon's CPU seconds per minute while nothing reaches it (its loop, the rule
  watch: nf_tables notifications for iptables-nft, a table read every 0.25 s for iptables-legacy),
  from /proc/PID/stat over IDLE seconds; the legacy daemon runs in the "no rules" lab meanwhile.
- peak RSS, two ways: the real daemon started with a generated 100k-entry policy file and fed DNS
  answers each teaching a new name and address until its name table is full (it holds at most
  engine.names.MAX_ENTRIES, fewer than 100k), VmHWM from /proc/PID/status; and, for 100k names, an
  in-process model (Engine + that policy + a NameTable allowed 100k names) in a fresh interpreter,
  VmHWM (not ru_maxrss, which carries the parent's peak across exec). Then the cost of an answer
  once the daemon's table is full.
Where a goal is missed, the note carries a cProfile of the daemon under the same flood (tracemalloc
by module for memory; for latency, under the same connections, with the packets queued and the
daemon CPU per connection measured in the run itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import pstats
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netguard.daemon import firewall, netns
from netguard.engine.names import MAX_ENTRIES
from netguard.lab import lab as lab_mod

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the integration tests' Runner is reused, not copied
    sys.path.insert(0, str(ROOT))
from tests.integration.harness import Runner as Runner  # noqa: E402

SOURCE = Path(__file__).with_name("netpath_tools.c")
FLOOR_SOURCE = Path(__file__).with_name("nfqueue_floor.c")
SERVER_PORT = 8443  # netguard queues every TCP port; 443 is the lab server's
REPLY_BYTES = 128  # stands in for the server's first flight
IPERF_PORT = 5201
WINDOW = 256  # packets in flight during a flood: well under the daemon's queue length (4096)
HZ = os.sysconf("SC_CLK_TCK")
POLICY_ENTRIES = 100_000
LEARNED_NAMES = 100_000
PROFILE_CONNECTIONS = 3000  # enough that the per-connection work outweighs the daemon's start-up

GOAL_THROUGHPUT = 0.98  # x conntrack-only
GOAL_ADDED_P50_US = 40.0
GOAL_ADDED_P99_US = 120.0
GOAL_HELLO_PER_CORE = 100_000.0
GOAL_DNS_PER_CORE = 80_000.0
GOAL_RSS_MB = 80.0
# Against the NFQUEUE floor, same rounds: netguard may add at most this much latency per connection
# and must keep at least this share of the floor's verdicts per CPU-second.
GOAL_LATENCY_VS_FLOOR = 1.5
GOAL_CAPACITY_VS_FLOOR = 0.5
FLOOR = "nfqueue floor"
PYFLOOR = "python floor"
SETUPS = ("no rules", "conntrack-only", FLOOR, PYFLOOR, "netguard")
GOAL_IDLE_CPU_S_PER_MIN = 0.6  # 1 % of one core
IDLE_SETTLE = 2.0  # seconds after start (imports, first checks) before idle is measured


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    rounds: int
    connections: int
    iperf_seconds: int
    iperf_rounds: int
    flood: int
    flood_rounds: int


    idle_seconds: float


QUICK = Plan(rounds=9, connections=600, iperf_seconds=2, iperf_rounds=3, flood=20_000, flood_rounds=3, idle_seconds=20)
FULL = Plan(rounds=31, connections=1000, iperf_seconds=5, iperf_rounds=5, flood=100_000, flood_rounds=5,
            idle_seconds=60)


# --- building blocks shared with the peer section ---------------------------------------------


def build_tools(workdir: Path) -> Path:
    """Compile netpath_tools.c into workdir; return the binary."""
    binary = workdir / "netpath_tools"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE)], check=True, capture_output=True, text=True)
    return binary


def build_floor(workdir: Path) -> Path:
    """Compile nfqueue_floor.c (libnetfilter_queue, as bootstrap installs it) into workdir."""
    binary = workdir / "nfqueue_floor"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(FLOOR_SOURCE), "-lnetfilter_queue"], check=True,
                   capture_output=True, text=True)
    return binary


def _install_own_rules(lab: lab_mod.Lab) -> firewall.Options:
    """netguard's own rules (default policy) in the lab's client namespace; their options."""
    from netguard.daemon.policyfiles import load_policy
    from netguard.daemon.run import firewall_options

    opts = firewall_options(load_policy(None))
    for family in firewall.FAMILIES:
        netns.run(lab.client, [firewall.tool("iptables-nft", family, "restore"), "--noflush"],
                  input=firewall.build_rules(family, opts).encode())
    return opts


def _start_consumer(lab: lab_mod.Lab, argv: list[str], what: str) -> int:
    """netguard's own rules and a floor consumer (argv + QUEUE MASK ALLOWED PASSED) in the lab's client
    namespace; its pid once it says "ready"."""
    opts = _install_own_rules(lab)
    marks = opts.marks
    proc = subprocess.Popen(netns.exec_argv(lab.client, [*argv, str(opts.queue_num), hex(marks.mask),
                                                         hex(marks.allowed), hex(marks.passed)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})
    lab.procs.append(proc)
    if proc.stdout is None or proc.stdout.readline().strip() != b"ready":
        err = proc.stderr.read().decode() if proc.stderr is not None and proc.poll() is not None else ""
        raise RuntimeError(f"netpath: the {what} did not start {err}")
    return proc.pid


def start_floor(lab: lab_mod.Lab, binary: Path) -> int:
    """netguard's own rules (default policy) and the C floor consumer in the lab's client namespace; its pid."""
    return _start_consumer(lab, [str(binary)], "NFQUEUE floor")


def start_python_floor(lab: lab_mod.Lab) -> int:
    """netguard's own rules and the Python floor consumer (python_floor.py, this interpreter) in the
    lab's client namespace; its pid."""
    return _start_consumer(lab, [sys.executable, "-m", "bench_sections.python_floor"], "Python floor")


def start_server(lab: lab_mod.Lab, tools: Path, expect: int) -> None:
    """The C server in the registry namespace (the lab kills it on close)."""
    proc = subprocess.Popen(netns.exec_argv(lab.registry, [str(tools), "server", str(SERVER_PORT), str(expect),
                                                           str(REPLY_BYTES)]),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lab.procs.append(proc)
    if proc.stdout is None or proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("netpath: the C server did not start")


def latencies(lab: lab_mod.Lab, tools: Path, payload: Path, address: str, n: int) -> tuple[list[float], int]:
    """n sequential connections to address; (µs of each successful one, number that failed)."""
    r = lab.client_run([str(tools), "connect", address, str(SERVER_PORT), str(n), str(payload), str(REPLY_BYTES)],
                       timeout=60 + n * 4)
    if r.returncode != 0:
        raise RuntimeError(f"netpath connect: {r.stderr}")
    values = [int(v) for v in r.stdout.split()]
    return [v / 1000 for v in values if v >= 0], sum(v < 0 for v in values)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def conntrack_only_rules(family: firewall.Family) -> str:
    """netguard's rule text with each NFQUEUE target replaced by the verdict it ends in: flows are
    marked allowed at their first packet, DNS answers pass."""
    opts = firewall.Options()
    queue = f"-j NFQUEUE --queue-num {opts.queue_num}"
    allowed = f"-j CONNMARK --set-xmark 0x{opts.marks.allowed:x}/0x{opts.marks.mask:x}"
    out = []
    for line in firewall.build_rules(family, opts).splitlines():
        if queue in line:
            line = line.replace(queue, "-j RETURN" if firewall.CHAIN_DNS in line else allowed)
        out.append(line)
    text = "\n".join(out) + "\n"
    if "NFQUEUE" in text:  # the rule builder changed its queue target: this floor would queue too
        raise RuntimeError("netpath: conntrack-only rules still hold an NFQUEUE target")
    return text


def install_conntrack_only(lab: lab_mod.Lab) -> None:
    """The conntrack-only rules in the lab's client namespace (removed with the namespace)."""
    for family in firewall.FAMILIES:
        netns.run(lab.client, [firewall.tool("iptables-nft", family, "restore"), "--noflush"],
                  input=conntrack_only_rules(family).encode())


def queued_packets(lab: lab_mod.Lab) -> int:
    """Packets netguard's NFQUEUE rules have sent to the daemon in the lab's client namespace (IPv4,
    either iptables backend)."""
    total = 0
    for backend in firewall.BACKENDS:
        saved = netns.run(lab.client, [firewall.tool(backend, 4, "save"), "-c", "-t", "filter"], check=False).stdout
        total += sum(int(line[1:].split(":", 1)[0]) for line in saved.splitlines()
                     if line.startswith("[") and "NFQUEUE" in line)
    return total


def load() -> str:
    """The 1-minute load average and the core count: this machine's other work shows in p99s."""
    return f"load {Path('/proc/loadavg').read_text().split()[0]} on {os.cpu_count()} cores"


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / HZ, int(fields[12]) / HZ


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    return sum(cpu_split(pid))


def status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def row(scenario: str, metric: str, value: float, unit: str, goal: str | None = None, ok: bool | None = None,
        note: str = "", spread: list[float] | None = None, section: str = "netpath") -> dict[str, Any]:
    """One result row (bench_sections.run.ROW_KEYS, plus min/max when there are rounds)."""
    out: dict[str, Any] = {"section": section, "scenario": scenario, "metric": metric, "value": round(value, 3),
                           "unit": unit, "goal": goal, "ok": ok, "note": note}
    if spread:
        out["min"], out["max"] = round(min(spread), 3), round(max(spread), 3)
    return out


@contextlib.contextmanager
def labs(names: tuple[str, ...]) -> Iterator[dict[str, lab_mod.Lab]]:
    """One lab per name, all torn down on exit."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(lab_mod.build()) for name in names}


# --- DNS answers -------------------------------------------------------------------------------


def dns_answer(name: str, address: str, ttl: int = 300) -> tuple[bytes, int, int]:
    """A response to `name A?` with one A record (owner compressed to the question, as dnsmasq
    writes it); also the offsets of the name's first label and of the address."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    question = qname + struct.pack("!HH", 1, 1)
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + bytes(int(o) for o in address.split("."))
    msg = header + question + answer
    return msg, len(header) + 1, len(msg) - 4


# --- the measurements --------------------------------------------------------------------------


@dataclass
class Daemon:
    """The queue consumer of a lab (netguard, or a floor when runner is None), and its CPU clock."""

    lab: lab_mod.Lab
    runner: Runner | None
    pid: int = 0
    next_flow: int = 0  # flood tuples are never reused: the engine remembers decided flows
    profiles: dict[str, str] = field(default_factory=dict)


def _flood(tools: Path, argv: list[str]) -> tuple[int, int, int, float]:
    r = subprocess.run([str(tools), *argv], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"netpath flood: {r.stderr}")
    sent, received, noerror, elapsed = r.stdout.split()
    return int(sent), int(received), int(noerror), int(elapsed) / 1e9


def hello_flood(d: Daemon, tools: Path, hello: Path, count: int) -> tuple[int, int, float]:
    """ClientHellos on new flows through the daemon: (sent, verdicts counted, wall seconds)."""
    netns.run(d.lab.client, ["conntrack", "-F"], check=False)  # keep the client's table small
    start, d.next_flow = d.next_flow, d.next_flow + count
    sent, got, _, wall = _flood(tools, ["hello-flood", d.lab.client, d.lab.registry, d.lab.client_v4,
                                        d.lab.hosts[0].v4, str(hello), str(count), str(WINDOW), str(start)])
    return sent, got, wall


def dns_flood(d: Daemon, tools: Path, template: Path, count: int, name_off: int = 0,
              addr_off: int = 0) -> tuple[int, int, int, float]:
    """DNS answers through the daemon: (sent, received, NOERROR received, wall seconds)."""
    start, d.next_flow = d.next_flow, d.next_flow + count
    return _flood(tools, ["dns-flood", d.lab.registry, d.lab.client, d.lab.hosts[0].v4, d.lab.client_v4, "5353",
                          str(template), str(count), str(WINDOW), str(start), str(name_off), str(addr_off)])


def _profile(lab: lab_mod.Lab, work: Path, kind: str, flood: Callable[[], object]) -> str:
    """Run a second daemon under cProfile through flood(); the top functions by own time."""
    out = work / f"{kind}.prof"
    err_path = work / f"{kind}-prof.err"
    with err_path.open("wb") as err:
        proc = lab.client_popen([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "netguard.cli", "run",
                                 "--backend", "iptables-nft"], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 15
    while "enforcing" not in err_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            return "profile failed: " + err_path.read_text()[-200:]
        time.sleep(0.05)
    try:
        flood()
    finally:
        lab_mod.stop(proc, signal.SIGTERM, timeout=60)
    stats = pstats.Stats(str(out))
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    # Only what runs under Queue.pump (the packets), not start-up imports or the idle select().
    pump = next((k for k in table if k[2] == "pump" and k[0].endswith("nfqueue.py")), None)
    if pump is None:
        return "profile: Queue.pump never ran"
    callees: dict[Any, list[Any]] = {}
    for func, entry in table.items():
        for caller in entry[4]:
            callees.setdefault(caller, []).append(func)
    under, todo = {pump}, [pump]
    while todo:
        for g in callees.get(todo.pop(), []):
            if g not in under:
                under.add(g)
                todo.append(g)
    total = table[pump][3] or 1.0
    top = sorted(((k, v) for k, v in table.items() if k in under), key=lambda item: item[1][2], reverse=True)[:5]
    parts = [f"{fn} ({Path(file).name}) {tt / total:.0%}" for (file, _l, fn), (_c, _n, tt, _ct, _cl) in top]
    what = {"hello": "ClientHello flood", "dns": "DNS answer flood", "dns-full": "floods (table filled, then full)",
            "latency": "sequential connections"}.get(kind, kind)
    text = (f"cProfile of the daemon under the same {what}, own time as a share of packet handling "
            "(Queue.pump): " + ", ".join(parts))
    if any(fn == "apply_verdict" for (_f, _l, fn), _ in top):
        text += " (apply_verdict's own time is NetfilterQueue's verdict call: Cython, invisible to cProfile)"
    return text


def _latency_rows(samples: dict[str, list[list[float]]], failed: dict[str, int], n: int,
                  why: str) -> list[dict[str, Any]]:
    rows = []
    p50 = {s: [percentile(r, 0.5) for r in samples[s]] for s in SETUPS}
    p99 = {s: [percentile(r, 0.99) for r in samples[s]] for s in SETUPS}
    for s in SETUPS:
        note = f"{len(samples[s])} rounds x {n} connections; {failed[s]} failed"
        for q, per in (("p50", p50), ("p99", p99)):
            rows.append(row(f"new connection + 517 B ClientHello + reply, {s}, {q}", q, statistics.median(per[s]),
                            "µs", note=note, spread=per[s]))
    for q, per, goal in (("p50", p50, GOAL_ADDED_P50_US), ("p99", p99, GOAL_ADDED_P99_US)):
        added = [g - b for g, b in zip(per["netguard"], per["no rules"], strict=True)]
        conntrack = [c - b for c, b in zip(per["conntrack-only"], per["no rules"], strict=True)]
        floor = [f - b for f, b in zip(per[FLOOR], per["no rules"], strict=True)]
        pyfloor = [f - b for f, b in zip(per[PYFLOOR], per["no rules"], strict=True)]
        value = statistics.median(added)
        rows.append(row(f"latency added by netguard, {q} (vs no rules, same round)", q, value, "µs", f"≤ {goal:g} µs",
                        value <= goal, f"conntrack-only adds {statistics.median(conntrack):.1f} µs, the NFQUEUE "
                        f"floor {statistics.median(floor):.1f} µs, the Python floor "
                        f"{statistics.median(pyfloor):.1f} µs" + ("" if value <= goal else f"; {why}"),
                        spread=added))
        # Ratio of the round medians: a round's own ratio is noise over noise when the floor adds little.
        ratio = value / statistics.median(floor) if statistics.median(floor) > 0 else float("inf")
        ok = ratio <= GOAL_LATENCY_VS_FLOOR
        rows.append(row(f"latency added by netguard / added by the NFQUEUE floor, {q} (same rounds)", "ratio", ratio,
                        "x", f"≤ {GOAL_LATENCY_VS_FLOOR:g} x", ok,
                        f"netguard adds {value:.1f} µs, the floor (same rules, a C consumer that reads nothing) "
                        f"{statistics.median(floor):.1f} µs" + ("" if ok else f"; {why}")))
        py = statistics.median(pyfloor)
        rows.append(row(f"latency added by netguard / added by the Python floor, {q} (same rounds)", "ratio",
                        value / py if py > 0 else float("inf"), "x",
                        note=f"netguard adds {value:.1f} µs, the Python floor (same rules, NetfilterQueue and "
                             f"netguard's receive loop, reads nothing) {py:.1f} µs: the rest is netguard's own work "
                             "on the connection's packets"))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every scenario (see the module doc); `quick` measures less."""
    plan = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ng-bench-") as tmp, labs(SETUPS) as lab:
        work = Path(tmp)
        tools = build_tools(work)
        hello = lab_mod.python_client_hello("registry-1.docker.io")
        hello_path = work / "hello.bin"
        hello_path.write_bytes(hello)
        install_conntrack_only(lab["conntrack-only"])
        floor = Daemon(lab[FLOOR], None, start_floor(lab[FLOOR], build_floor(work)))
        pyfloor = Daemon(lab[PYFLOOR], None, start_python_floor(lab[PYFLOOR]))
        ng_lab = lab["netguard"]
        runner = Runner(ng_lab, work, name="netguard").start()
        if runner.proc is None:
            raise RuntimeError("netguard did not start")
        d = Daemon(ng_lab, runner, runner.proc.pid)
        servers = []
        try:
            rows += _idle(d, lab["no rules"], work, plan)
            for s in SETUPS:
                start_server(lab[s], tools, len(hello))
                servers.append(subprocess.Popen(netns.exec_argv(lab[s].registry, ["iperf3", "-s", "-p",
                                                                                  str(IPERF_PORT)]),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            target = ng_lab.hosts[0].v4
            # Latency, interleaved; one warm-up round first (page cache, ARP, the daemon's imports).
            samples: dict[str, list[list[float]]] = {s: [] for s in SETUPS}
            failed = dict.fromkeys(SETUPS, 0)
            for s in SETUPS:
                latencies(lab[s], tools, hello_path, target, 50)
            queued0, load0 = queued_packets(ng_lab), load()
            pids = {"netguard": d.pid, FLOOR: floor.pid, PYFLOOR: pyfloor.pid}
            cpu = dict.fromkeys(pids, 0.0)
            for _ in range(plan.rounds):
                for s in SETUPS:
                    cpu0 = cpu_seconds(pids[s]) if s in pids else 0.0
                    values, bad = latencies(lab[s], tools, hello_path, target, plan.connections)
                    if s in pids:
                        cpu[s] += cpu_seconds(pids[s]) - cpu0
                    samples[s].append(values)
                    failed[s] += bad
            connections = plan.rounds * plan.connections
            per_conn = (queued_packets(ng_lab) - queued0) / connections
            why = (f"{per_conn:.1f} packets queued per connection (NFQUEUE rule counters: SYN, the "
                   "server's SYN-ACK and ClientHello; the handshake's ACK too without xt u32), "
                   f"{1e6 * cpu['netguard'] / connections:.0f} µs of daemon CPU per connection (utime+stime; the "
                   f"C floor's consumer: {1e6 * cpu[FLOOR] / connections:.0f} µs, the Python floor's: "
                   f"{1e6 * cpu[PYFLOOR] / connections:.0f} µs); {load0} before, {load()} after")
            latency_rows = _latency_rows(samples, failed, plan.connections, why)
            rows += latency_rows
            rows += _throughput(lab, plan, target)
            rows += _capacity(d, floor, pyfloor, work, tools, hello_path, plan)
            if any(r["ok"] is False for r in latency_rows):
                runner.stop()  # one daemon per namespace: the profiled one takes its place
                profile = _profile(ng_lab, work, "latency", lambda: latencies(ng_lab, tools, hello_path, target,
                                                                               PROFILE_CONNECTIONS))
                for r in latency_rows:
                    if r["ok"] is False:
                        r["note"] += f"; {profile}"
        finally:
            runner.stop()
            for p in servers:
                lab_mod.stop(p)
        rows += _rss(ng_lab, work, tools, quick)
    rows.append(_inprocess_rss_row())
    return rows


def _idle(d: Daemon, spare: lab_mod.Lab, work: Path, plan: Plan) -> list[dict[str, Any]]:
    """CPU seconds per minute of an idle daemon: the netguard lab's (iptables-nft) and one started
    with iptables-legacy in the spare lab, measured side by side."""
    legacy = Runner(spare, work, name="idle-legacy", args=("--backend", "iptables-legacy")).start()
    try:
        if legacy.proc is None:
            raise RuntimeError("netguard (iptables-legacy) did not start")
        pids = {"iptables-nft": d.pid, "iptables-legacy": legacy.proc.pid}
        time.sleep(IDLE_SETTLE)
        before = {b: cpu_seconds(pid) for b, pid in pids.items()}
        start = time.monotonic()
        time.sleep(plan.idle_seconds)
        elapsed = time.monotonic() - start
        used = {b: cpu_seconds(pid) - before[b] for b, pid in pids.items()}
    finally:
        legacy.stop()
    rows = []
    for backend, cpu in used.items():
        per_min = 60 * cpu / elapsed
        watch = ("nf_tables notifications: nothing to do while nothing changes" if backend == "iptables-nft" else
                 "a getsockopt read of each family's filter table every 0.25 s, compared with the last good one")
        rows.append(row(f"idle daemon CPU, {backend}", "CPU s/min", per_min, "s/min",
                        f"≤ {GOAL_IDLE_CPU_S_PER_MIN:g} s/min (1 % of a core)", per_min <= GOAL_IDLE_CPU_S_PER_MIN,
                        f"utime+stime over {elapsed:.0f} s with no traffic ({HZ} ticks/s resolution): the loop's "
                        f"0.25 s tick, the rule watch ({watch}), a queue-drop counter read each second; {load()}"))
    return rows


def _throughput(lab: dict[str, lab_mod.Lab], plan: Plan, target: str) -> list[dict[str, Any]]:
    gbit: dict[str, list[float]] = {s: [] for s in SETUPS}
    queued0, load0 = queued_packets(lab["netguard"]), load()
    for _ in range(plan.iperf_rounds):
        for s in SETUPS:
            r = lab[s].client_run(["iperf3", "-J", "-c", target, "-p", str(IPERF_PORT), "-O", "1", "-t",
                                   str(plan.iperf_seconds)], timeout=plan.iperf_seconds + 30)
            if r.returncode != 0:
                raise RuntimeError(f"iperf3 ({s}): {r.stdout[-300:]} {r.stderr[-300:]}")
            gbit[s].append(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
    note = f"{plan.iperf_rounds} rounds x {plan.iperf_seconds} s (after 1 s omitted)"
    rows = [row(f"iperf3 TCP throughput, one stream, {s}", "throughput", statistics.median(gbit[s]), "Gbit/s",
                note=note, spread=gbit[s]) for s in SETUPS]
    queued = queued_packets(lab["netguard"]) - queued0
    ratios = [g / c for g, c in zip(gbit["netguard"], gbit["conntrack-only"], strict=True)]
    noise = [c / n for c, n in zip(gbit["conntrack-only"], gbit["no rules"], strict=True)]
    value = statistics.median(ratios)
    vs_none = statistics.median(gbit["netguard"]) / statistics.median(gbit["no rules"])
    rows.append(row("throughput, netguard / conntrack-only (same round)", "ratio", value, "x",
                    f"≥ {GOAL_THROUGHPUT}", value >= GOAL_THROUGHPUT,
                    f"netguard / no rules: {vs_none:.3f}; {queued} packets of all {plan.iperf_rounds} runs went to "
                    "the daemon (NFQUEUE counters: the "
                    "rest never left the kernel); conntrack-only / no rules, same rounds: "
                    f"{min(noise):.3f}–{max(noise):.3f} (the run-to-run noise on this machine: {load0} before, "
                    f"{load()} after)",
                    spread=ratios))
    return rows


def _capacity(d: Daemon, floor: Daemon, pyfloor: Daemon, work: Path, tools: Path, hello: Path,
              plan: Plan) -> list[dict[str, Any]]:
    """Verdicts per CPU-second of netguard and of both floors, flooded in the same rounds."""
    answer, _, _ = dns_answer("registry-1.docker.io", d.lab.hosts[0].v4)
    answer_path = work / "answer.bin"
    answer_path.write_bytes(answer)
    consumers = {"netguard": d, FLOOR: floor, PYFLOOR: pyfloor}
    cases = [(who, kind) for kind in ("hello", "dns") for who in consumers]
    per_core: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    wall: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    user = dict.fromkeys(cases, 0.0)
    system = dict.fromkeys(cases, 0.0)
    verdicts = dict.fromkeys(cases, 0)
    lost = dict.fromkeys(cases, 0)
    for c in consumers.values():  # warm-up
        hello_flood(c, tools, hello, 2000)
        dns_flood(c, tools, answer_path, 2000)
    for _ in range(plan.flood_rounds):
        for who, kind in cases:
            c = consumers[who]
            u0, s0 = cpu_split(c.pid)
            if kind == "hello":
                sent, got, seconds = hello_flood(c, tools, hello, plan.flood)
            else:
                sent, got, _, seconds = dns_flood(c, tools, answer_path, plan.flood)
            u1, s1 = cpu_split(c.pid)
            cpu = (u1 - u0) + (s1 - s0)
            user[who, kind] += u1 - u0
            system[who, kind] += s1 - s0
            verdicts[who, kind] += got
            lost[who, kind] += sent - got
            per_core[who, kind].append(got / cpu if cpu > 0 else 0.0)
            wall[who, kind].append(got / seconds if seconds > 0 else 0.0)
    rows = []
    labels = {"hello": "ClientHello (517 B, new flow, allowed SNI)", "dns": "DNS answer (registry-1.docker.io A)"}
    goals = {"hello": GOAL_HELLO_PER_CORE, "dns": GOAL_DNS_PER_CORE}
    profiled: list[tuple[dict[str, Any], str]] = []
    for kind in ("hello", "dns"):
        for who in consumers:
            value = statistics.median(per_core[who, kind])
            n = max(verdicts[who, kind], 1)
            note = (f"verdicts / {who} CPU-s (utime+stime): {1e6 * user[who, kind] / n:.1f} µs user + "
                    f"{1e6 * system[who, kind] / n:.1f} µs system per verdict (system includes the kernel sending "
                    f"the packet on inside the verdict call); wall {statistics.median(wall[who, kind]):,.0f}/s with "
                    f"{WINDOW} in flight; {plan.flood_rounds} rounds x {plan.flood:,}; {lost[who, kind]} not seen "
                    "downstream")
            if who in (FLOOR, PYFLOOR):
                rows.append(row(f"verdict capacity of the {'NFQUEUE' if who == FLOOR else 'Python'} floor, "
                                f"{labels[kind]}", "verdicts/s per core", value, "1/s", note=note,
                                spread=per_core[who, kind]))
                continue
            r = row(f"verdict capacity, {labels[kind]}", "verdicts/s per core", value, "1/s",
                    f"≥ {goals[kind]:,.0f}/s", value >= goals[kind], note, spread=per_core[who, kind])
            rows.append(r)
            c_floor = statistics.median(per_core[FLOOR, kind])
            ratio = value / c_floor if c_floor > 0 else 0.0  # 0: the floor's CPU time was below one tick
            ratio_row = row(f"verdict capacity, netguard / NFQUEUE floor, {labels[kind]} (same rounds)", "ratio",
                            ratio, "x", f"≥ {GOAL_CAPACITY_VS_FLOOR:g} x", ratio >= GOAL_CAPACITY_VS_FLOOR,
                            f"netguard {value:,.0f}/s, the floor {statistics.median(per_core[FLOOR, kind]):,.0f}/s "
                            "per CPU-second of its own process")
            rows.append(ratio_row)
            py = statistics.median(per_core[PYFLOOR, kind])
            rows.append(row(f"verdict capacity, netguard / Python floor, {labels[kind]} (same rounds)", "ratio",
                            value / py if py > 0 else 0.0, "x",
                            note=f"netguard {value:,.0f}/s, the Python floor {py:,.0f}/s per CPU-second of its own "
                                 "process: the rest is netguard's own work on a packet"))
            if r["ok"] is False or ratio_row["ok"] is False:
                profiled.append((ratio_row if r["ok"] is not False else r, kind))
    if profiled and d.runner is not None:
        d.runner.stop()  # one daemon per namespace: the profiled one takes its place
        for r, kind in profiled:
            flood: Callable[[], object] = ((lambda: hello_flood(d, tools, hello, plan.flood)) if kind == "hello"
                                           else (lambda: dns_flood(d, tools, answer_path, plan.flood)))
            r["note"] += "; " + _profile(d.lab, work, kind, flood)
    return rows


def _big_policy(path: Path, n: int) -> None:
    rng = random.Random(7)
    hosts = [f"reg{i}.team{rng.randrange(10**6)}.example" for i in range(n // 2)]
    wild = [f"*.zone{i}.corp{rng.randrange(10**6)}.example" for i in range(n - n // 2)]
    path.write_text('name = "bench 100k"\nallow = [' + ",".join(f'"{h}"' for h in hosts) + "]\nblock = ["
                    + ",".join(f'"{w}"' for w in wild) + "]\n")


def _rss(lab: lab_mod.Lab, work: Path, tools: Path, quick: bool) -> list[dict[str, Any]]:
    """Peak RSS of the real daemon with the big policy and a full name table, then the cost of an
    answer once the table is full."""
    policy = work / "big-policy.toml"
    _big_policy(policy, POLICY_ENTRIES)
    runner = Runner(lab, work, name="rss")
    runner.policy_path = policy
    runner.start(wait=False)
    runner.wait_for("enforcing", timeout=120)
    if runner.proc is None:
        raise RuntimeError("netguard did not start")
    pid = runner.proc.pid
    d = Daemon(lab, runner, pid, next_flow=1)
    template, name_off, addr_off = dns_answer("n00000000.flood.example", "10.0.0.1")
    template_path = work / "flood.bin"
    template_path.write_bytes(template)
    extra = QUICK.flood if quick else FULL.flood
    try:
        loaded = status_kb(pid, "VmRSS")
        sent, got, learned, seconds = dns_flood(d, tools, template_path, MAX_ENTRIES, name_off, addr_off)
        peak = status_kb(pid, "VmHWM")
        cpu0 = cpu_seconds(pid)
        x_sent, x_got, x_ok, x_seconds = dns_flood(d, tools, template_path, extra, name_off, addr_off)
        x_cpu = cpu_seconds(pid) - cpu0
        runner.stop()
        profile = ""
        if x_got < x_cpu * GOAL_DNS_PER_CORE:
            profile = _profile(lab, work, "dns-full", lambda: (
                dns_flood(d, tools, template_path, MAX_ENTRIES, name_off, addr_off),
                dns_flood(d, tools, template_path, extra, name_off, addr_off)))
    finally:
        runner.stop()
    mb = peak / 1024
    rate = x_got / x_cpu if x_cpu > 0 else 0.0
    return [
        row(f"peak RSS of netguard run: {POLICY_ENTRIES:,}-entry policy file + a full name table "
            f"({MAX_ENTRIES:,} names learned from DNS answers)", "VmHWM", mb, "MB", f"≤ {GOAL_RSS_MB:g} MB",
            mb <= GOAL_RSS_MB,
            f"the real daemon (generated policy file + DNS answer flood), VmHWM from /proc; {loaded / 1024:.1f} MB "
            f"after loading the policy; {got:,} of {sent:,} answers came back in {seconds:.1f} s, {learned:,} "
            f"unchanged; {LEARNED_NAMES:,} names cannot be held: the table stops at {MAX_ENTRIES:,} "
            "(engine.names.MAX_ENTRIES), see the in-process row"),
        row("DNS answers with new names once the name table is full (fail_mode = closed)", "verdicts/s per core",
            rate, "1/s", f"≥ {GOAL_DNS_PER_CORE:,.0f}/s", rate >= GOAL_DNS_PER_CORE,
            f"{x_got:,} of {x_sent:,} answers back ({x_ok:,} NOERROR: learned, the entries expiring first "
            f"gave way) in {x_seconds:.1f} s; {1e6 * x_cpu / max(x_got, 1):.1f} µs CPU each; "
            + (profile if rate < GOAL_DNS_PER_CORE else "the answer path's own cost: see the DNS capacity row")),
    ]


def inprocess_rss(trace: bool) -> dict[str, Any]:
    """In this (fresh) process: Engine with the 100k-entry policy and a NameTable allowed to hold
    100k names, fed 100k DNS answer packets. Peak RSS (MB), names held, and with `trace` the
    largest allocation sites (tracemalloc; its own overhead inflates RSS, so not in the same run)."""
    import tracemalloc

    from netguard.daemon.policyfiles import load_policy
    from netguard.engine import Engine

    if trace:
        tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="ng-bench-") as tmp:
        path = Path(tmp) / "policy.toml"
        _big_policy(path, POLICY_ENTRIES)
        engine = Engine(load_policy(path))
    policy_mb, policy_peak = (x / 2**20 for x in tracemalloc.get_traced_memory()) if trace else (0.0, 0.0)
    engine.names.max_entries = LEARNED_NAMES
    template, name_off, addr_off = dns_answer("n00000000.flood.example", "10.0.0.1")
    udp_len = 8 + len(template)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0, bytes([10, 77, 0, 53]),
                       bytes([10, 77, 0, 10])) + struct.pack("!HHHH", 53, 5353, udp_len, 0)
    msg = bytearray(template)
    for k in range(LEARNED_NAMES):
        msg[name_off:name_off + 8] = b"%08d" % k
        msg[addr_off:addr_off + 4] = (0x0B000000 + k).to_bytes(4, "big")
        engine.handle(head + bytes(msg), 1000.0)
    # VmHWM, not ru_maxrss: the kernel carries the parent's peak into ru_maxrss across the
    # (v)fork + exec that started this interpreter, so the bench driver's own size would show.
    out: dict[str, Any] = {"mb": status_kb(os.getpid(), "VmHWM") / 1024,
                           "held": len(engine.names), "answers": LEARNED_NAMES}
    if trace:
        total = tracemalloc.get_traced_memory()[0] / 2**20
        stats = tracemalloc.take_snapshot().statistics("filename")[:5]
        sites = [f"{Path(st.traceback[0].filename).name} {st.size / 2**20:.1f} MB" for st in stats]
        out["trace"] = (f"tracemalloc: {total:.1f} MB live Python objects at the end, {policy_mb:.1f} MB after "
                        f"loading the policy (peak while loading it: {policy_peak:.1f} MB); allocated by module: "
                        f"{', '.join(sites)}")
    return out


def _inprocess(trace: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench_sections.netpath", "--inprocess-rss", *(["--trace"] if trace else [])]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})
    if r.returncode != 0:
        raise RuntimeError(f"in-process RSS: {r.stderr[-500:]}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def _inprocess_rss_row() -> dict[str, Any]:
    plain = _inprocess(trace=False)
    mb, ok = plain["mb"], plain["mb"] <= GOAL_RSS_MB
    note = (f"pure in-process model (fresh interpreter, no NFQUEUE): {plain['answers']:,} DNS answer packets "
            f"through Engine.handle with NameTable.max_entries raised to {LEARNED_NAMES:,}")
    if not ok:
        note += "; " + _inprocess(trace=True)["trace"]
    return row(f"peak RSS in-process: Engine + {POLICY_ENTRIES:,}-entry policy + NameTable with {plain['held']:,} "
               "names", "VmHWM", mb, "MB", f"≤ {GOAL_RSS_MB:g} MB", ok, note)


if __name__ == "__main__":
    if "--inprocess-rss" in sys.argv:
        print(json.dumps(inprocess_rss("--trace" in sys.argv)))
        sys.exit(0)
    if shutil.which("gcc") is None:
        sys.exit("netpath: gcc is needed")
    for r in run(quick="--quick" in sys.argv):
        print(r)
