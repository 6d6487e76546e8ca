"""The enforcement daemon's cost: latency added to each new connection, bulk throughput, verdicts/s.

Three namespace labs (netguard.shell.lab) run at once and are measured in turns within the same
run, so machine drift hits all alike: "none" (no rules), "conntrack" (rules that track and mark
every new flow in the kernel, no queue: the floor any connection-tracking filter pays) and
"netguard" (`netguard run`, default policy). Latency: a client in the lab makes sequential HTTPS
requests, each on a new connection (TCP connect + TLS handshake + one request), and reports each
one's duration; values are p50/p99 over all connections. Throughput: iperf3 (TCP, one stream)
from client to registry namespace, netguard against none. Verdicts/s: the pure engine alone
(SYN + ClientHello per connection), no kernel.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from netguard.shell import lab as lab_mod
from netguard.shell import netns

GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 5.0
GOAL_THROUGHPUT_RATIO = 0.9
GOAL_VERDICTS_PER_S = 5000.0
NETGUARD = [sys.executable, "-c", "from netguard.cli import main; main()"]

CLIENT = """
import socket, ssl, sys, time, json
addr, host, ca, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
req = b"GET / HTTP/1.1\\r\\nHost: " + host.encode() + b"\\r\\n\\r\\n"
out = []
for _ in range(n):
    t = time.perf_counter()
    with socket.create_connection((addr, 443), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(req)
        s.recv(4096)
    out.append((time.perf_counter() - t) * 1000)
print(json.dumps(out))
"""

CONNTRACK_ONLY = """*filter
:BENCH-FLOW - [0:0]
-A BENCH-FLOW -m connmark ! --mark 0x0/0x700000 -j RETURN
-A BENCH-FLOW -p tcp -m conntrack --ctdir ORIGINAL -m connbytes --connbytes 0:131072 """ \
    """--connbytes-dir original --connbytes-mode bytes -j CONNMARK --set-xmark 0x100000/0x700000
-I OUTPUT 1 -j BENCH-FLOW
COMMIT
"""


def _row(scenario: str, metric: str, value: float, unit: str, goal: str | None, ok: bool | None,
         note: str = "", **extra: Any) -> dict[str, Any]:
    return {"section": "daemon", "scenario": scenario, "metric": metric, "value": round(value, 3), "unit": unit,
            "goal": goal, "ok": ok, "note": note, **extra}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_netguard(lab: lab_mod.Lab) -> subprocess.Popen[bytes]:
    err = lab.workdir / "netguard.err"
    with err.open("wb") as e:
        proc = lab.client_popen([*NETGUARD, "run"], stdout=subprocess.DEVNULL, stderr=e)
    deadline = time.monotonic() + 15
    while "enforcing" not in err.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("netguard did not start: " + err.read_text())
        time.sleep(0.05)
    return proc


def _latencies(lab: lab_mod.Lab, n: int) -> list[float]:
    h = lab.hosts[0]
    r = lab.client_run([sys.executable, "-c", CLIENT, h.v4, h.name, str(lab.ca_file), str(n)], timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return [float(x) for x in json.loads(r.stdout)]


def _iperf(lab: lab_mod.Lab, seconds: int) -> float:
    server = subprocess.Popen(netns.exec_argv(lab.registry, ["iperf3", "-s", "-1"]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        r = lab.client_run(["iperf3", "-J", "-c", lab.hosts[0].v4, "-t", str(seconds)], timeout=seconds + 30)
        return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        lab_mod.stop(server)


def _engine_rate(quick: bool) -> float:
    import contextlib
    import ssl

    from scapy.all import IP, TCP, raw  # type: ignore[attr-defined]

    from netguard.engine import Engine
    from netguard.shell.policyfiles import load_policy

    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="registry-1.docker.io")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    n = 2000 if quick else 20000
    packets = []
    for i in range(n):
        base = IP(src="10.0.0.10", dst="10.0.0.102")
        sport = 10000 + i % 50000
        packets.append(raw(base / TCP(sport=sport, dport=443, flags="S", seq=i)))
        packets.append(raw(base / TCP(sport=sport, dport=443, flags="PA", seq=i + 1, ack=1) / hello))
    engine = Engine(load_policy(None))
    start = time.perf_counter()
    for p in packets:
        engine.handle(p, 1000.0)
    return n / (time.perf_counter() - start)


def run(quick: bool) -> list[dict[str, Any]]:
    """The section's figures (see the module doc)."""
    rounds, per_round, seconds = (4, 25, 2) if quick else (12, 50, 5)
    rows: list[dict[str, Any]] = []
    with lab_mod.build() as none, lab_mod.build() as ct, lab_mod.build() as ng:
        for ns in (ct.client,):
            netns.run(ns, ["iptables-restore", "--noflush"], input=CONNTRACK_ONLY.encode())
        daemon = _start_netguard(ng)
        try:
            samples: dict[str, list[float]] = {"none": [], "conntrack": [], "netguard": []}
            for lab in (none, ct, ng):
                _latencies(lab, 5)  # warm up: caches, first DNS-free handshake
            for _ in range(rounds):
                for name, lab in (("none", none), ("conntrack", ct), ("netguard", ng)):
                    samples[name] += _latencies(lab, per_round)
            base50, base99 = _pct(samples["none"], 0.5), _pct(samples["none"], 0.99)
            for name in ("none", "conntrack", "netguard"):
                p50, p99 = _pct(samples[name], 0.5), _pct(samples[name], 0.99)
                rows.append(_row(f"new HTTPS connection, {name}", "p50", p50, "ms", None, None,
                                 f"{len(samples[name])} connections, p99 {p99:.2f} ms",
                                 min=round(min(samples[name]), 3), max=round(max(samples[name]), 3)))
            n50 = _pct(samples["netguard"], 0.5) - base50
            n99 = _pct(samples["netguard"], 0.99) - base99
            rows.append(_row("added by netguard per new connection", "p50", n50, "ms",
                             f"<= {GOAL_ADDED_P50_MS} ms", n50 <= GOAL_ADDED_P50_MS,
                             f"conntrack-only adds {_pct(samples['conntrack'], 0.5) - base50:.3f} ms"))
            rows.append(_row("added by netguard per new connection", "p99", n99, "ms",
                             f"<= {GOAL_ADDED_P99_MS} ms", n99 <= GOAL_ADDED_P99_MS,
                             f"conntrack-only adds {_pct(samples['conntrack'], 0.99) - base99:.3f} ms"))
            bulk_none = statistics.median(_iperf(none, seconds) for _ in range(1 if quick else 3))
            bulk_ng = statistics.median(_iperf(ng, seconds) for _ in range(1 if quick else 3))
            ratio = bulk_ng / bulk_none if bulk_none else 0.0
            rows.append(_row("iperf3 TCP throughput, netguard / none", "ratio", ratio, "x",
                             f">= {GOAL_THROUGHPUT_RATIO}", ratio >= GOAL_THROUGHPUT_RATIO,
                             f"{bulk_ng:.1f} vs {bulk_none:.1f} Gbit/s, {seconds} s each"))
        finally:
            lab_mod.stop(daemon)
    rate = _engine_rate(quick)
    rows.append(_row("engine verdicts (SYN + ClientHello), pure", "connections/s", rate, "1/s",
                     f">= {GOAL_VERDICTS_PER_S:.0f}", rate >= GOAL_VERDICTS_PER_S, "one core, no kernel"))
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
