"""The peer: OpenSnitch (Debian's opensnitch 1.5.x daemon) against netguard on the same path.

Strategy: the package is downloaded (`apt-get download`) and extracted (`dpkg-deb -x`) into a
temporary directory, never installed (its install script starts the service). opensnitchd reads
/etc/opensnitchd/default-config.json whatever its flags say, so it runs in a private mount
namespace (`unshare -m`) inside the lab's client network namespace, with an overlay on /etc that
adds our config (no UI; unknown connections allowed; process lookup through /proc; its own log
file) and one rule: deny dest.host ghcr.io. Three labs, interleaved round after round: no rules,
OpenSnitch, netguard (default policy: GHCR blocked). The latency scenario is netpath's: a C
client making sequential new connections with a 517-byte ClientHello and a 128-byte reply.
Then each blocked case is tried with curl in both guarded labs and the outcome is recorded as
measured: by name (DNS + SNI), SNI-only (by IP, no DNS lookup), and a CNAME alias
(dl.allowed.test -> ghcr.io). If the package cannot be fetched or run, the rows say so.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_sections.netpath import (
    Runner,
    build_tools,
    cpu_seconds,
    labs,
    latencies,
    percentile,
    row,
    start_server,
)
from netguard.daemon import netns
from netguard.lab import lab as lab_mod

SETUPS = ("no rules", "opensnitch", "netguard")
BLOCKED = "ghcr.io"
READY_TIMEOUT = 20.0  # opensnitchd installs its rules within a second or two
CURL_TIMEOUT = 3  # seconds: OpenSnitch's deny drops packets, so a blocked curl waits this long
ROUNDS = {True: 7, False: 21}
CONNECTIONS = {True: 300, False: 500}


def _fetch(work: Path) -> tuple[Path, str]:
    """Download and extract opensnitch; (opensnitchd binary, version)."""
    subprocess.run(["apt-get", "download", "opensnitch"], cwd=work, check=True, capture_output=True, text=True,
                   timeout=120)
    deb = next(work.glob("opensnitch_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True, capture_output=True, timeout=60)
    binary = work / "root" / "usr" / "bin" / "opensnitchd"
    version = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=10)
    return binary, (version.stdout + version.stderr).strip().splitlines()[-1] if version.returncode == 0 else deb.name


def _start_opensnitch(lab: lab_mod.Lab, binary: Path, work: Path) -> subprocess.Popen[bytes]:
    """opensnitchd in the lab's client namespace with a deny rule for the blocked name."""
    upper, scratch, rules = work / "upper", work / "overlay-work", work / "rules"
    for d in (upper / "opensnitchd", scratch, rules):
        d.mkdir(parents=True, exist_ok=True)
    log = work / "opensnitchd.log"
    config = {"Server": {"Address": f"unix://{work}/osui.sock", "LogFile": str(log)},
              "DefaultAction": "allow", "DefaultDuration": "once", "InterceptUnknown": False,
              "ProcMonitorMethod": "proc", "LogLevel": 2, "Firewall": "iptables",
              "Stats": {"MaxEvents": 150, "MaxStats": 25}}
    (upper / "opensnitchd" / "default-config.json").write_text(json.dumps(config))
    (upper / "opensnitchd" / "system-fw.json").write_text(json.dumps({"SystemRules": []}))
    rule = {"created": "2024-01-01T00:00:00Z", "updated": "2024-01-01T00:00:00Z", "name": "deny-ghcr",
            "enabled": True, "precedence": True, "action": "deny", "duration": "always",
            "operator": {"type": "simple", "operand": "dest.host", "sensitive": False, "data": BLOCKED, "list": []}}
    (rules / "deny-ghcr.json").write_text(json.dumps(rule))
    script = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={scratch} /etc && "
              f"exec {binary} -rules-path {rules} -log-file {log} -process-monitor-method proc")
    with (work / "opensnitchd.out").open("wb") as out:
        proc = lab.client_popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"opensnitchd exited: {(work / 'opensnitchd.out').read_text()[-300:]}")
        saved = netns.run(lab.client, ["iptables-save"], check=False).stdout
        if saved.count("NFQUEUE") >= 2:  # its connection rule and its DNS-answer rule
            time.sleep(0.5)  # the queue is bound before the rules go in; the rule file loads at start
            return proc
        time.sleep(0.1)
    raise RuntimeError("opensnitchd did not install its rules")


def _case(lab: lab_mod.Lab, case: str) -> tuple[bool, str]:
    """Try one case with curl; (let through, what curl said)."""
    curl = ["curl", "-s", "-m", str(CURL_TIMEOUT), "--cacert", str(lab.ca_file)]
    if case == "by name":
        argv = [*curl, f"https://{BLOCKED}/"]
    elif case == "SNI-only":
        argv = [*curl, "--resolve", f"{BLOCKED}:443:{lab.host(BLOCKED).v4}", f"https://{BLOCKED}/"]
    elif case == "CNAME alias":
        alias = next(a for a, target in lab.cnames if target == BLOCKED)
        argv = [*curl, f"https://{alias}/"]
    else:
        argv = [*curl, f"https://{lab.hosts[0].name}/"]
    r = lab.client_run(argv, timeout=CURL_TIMEOUT + 10)
    through = r.returncode == 0 and r.stdout.startswith("hello from")
    said = CURL_EXITS.get(r.returncode, "failed")
    return through, f"curl exit {r.returncode} ({said})" + (f", '{r.stdout.strip()}'" if r.stdout else "")


# What curl's exit code says happened (man curl, EXIT CODES).
CURL_EXITS = {0: "ok", 6: "could not resolve host", 7: "could not connect", 28: "timed out",
              35: "TLS handshake failed", 56: "connection reset"}
CASES = (("by name", "DNS lookup + TLS SNI ghcr.io"),
         ("SNI-only", "by IP with SNI ghcr.io, no DNS lookup"),
         ("CNAME alias", "dl.allowed.test -> ghcr.io"))


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the peer against netguard (see the module doc)."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ng-bench-peer-") as tmp:
        work = Path(tmp)
        try:
            binary, version = _fetch(work)
        except (subprocess.SubprocessError, OSError, StopIteration) as exc:
            return [row("OpenSnitch", "available", 0, "", None, None, f"could not fetch opensnitch here: {exc}",
                        section="peer")]
        with labs(SETUPS) as lab:
            tools = build_tools(work)
            hello = lab_mod.python_client_hello("registry-1.docker.io")
            hello_path = work / "hello.bin"
            hello_path.write_bytes(hello)
            try:
                snitch = _start_opensnitch(lab["opensnitch"], binary, work)
            except RuntimeError as exc:
                return [row("OpenSnitch", "available", 0, "", None, None, f"{version}: could not run here: {exc}",
                            section="peer")]
            runner = Runner(lab["netguard"], work, name="netguard").start()
            try:
                pids = {"opensnitch": snitch.pid, "netguard": runner.proc.pid if runner.proc else 0}
                rows += _latency(lab, tools, hello_path, len(hello), quick, version, pids)
                rows += _cases(lab, version)
            finally:
                runner.stop()
                lab_mod.stop(snitch, timeout=15)
    return rows


def _latency(lab: dict[str, lab_mod.Lab], tools: Path, hello: Path, hello_len: int, quick: bool,
             version: str, pids: dict[str, int]) -> list[dict[str, Any]]:
    for s in SETUPS:
        start_server(lab[s], tools, hello_len)
    target = lab["netguard"].hosts[0].v4
    for s in SETUPS:
        latencies(lab[s], tools, hello, target, 30)  # warm-up
    p50: dict[str, list[float]] = {s: [] for s in SETUPS}
    p99: dict[str, list[float]] = {s: [] for s in SETUPS}
    failed = dict.fromkeys(SETUPS, 0)
    cpu = dict.fromkeys(SETUPS, 0.0)
    n = CONNECTIONS[quick]
    for _ in range(ROUNDS[quick]):
        for s in SETUPS:
            cpu0 = cpu_seconds(pids[s]) if s in pids else 0.0
            values, bad = latencies(lab[s], tools, hello, target, n)
            if s in pids:
                cpu[s] += cpu_seconds(pids[s]) - cpu0
            failed[s] += bad
            if values:
                p50[s].append(percentile(values, 0.5))
                p99[s].append(percentile(values, 0.99))
    rows = []
    for s in SETUPS:
        label = f"OpenSnitch {version}" if s == "opensnitch" else s
        for q, per in (("p50", p50), ("p99", p99)):
            base = statistics.median(per["no rules"])
            value = statistics.median(per[s])
            note = f"{ROUNDS[quick]} rounds x {n} connections; {failed[s]} failed"
            if s in pids:
                who = "opensnitchd" if s == "opensnitch" else "netguard"
                note += f"; {1e6 * cpu[s] / (ROUNDS[quick] * n):.0f} µs of {who} CPU per connection (utime+stime)"
            if s != "no rules":
                note += f"; adds {value - base:.1f} µs to no rules"
            rows.append(row(f"new connection + 517 B ClientHello + reply, {label}, {q}", q, value, "µs", note=note,
                            spread=per[s], section="peer"))
    return rows


def _cases(lab: dict[str, lab_mod.Lab], version: str) -> list[dict[str, Any]]:
    rows = []
    for s in ("opensnitch", "netguard"):
        control, said = _case(lab[s], "allowed")
        if not control:
            raise RuntimeError(f"peer: the allowed control case failed under {s}: {said}")
        for case, what in CASES:
            through, said = _case(lab[s], case)
            label = f"OpenSnitch {version}" if s == "opensnitch" else "netguard"
            rows.append(row(f"blocked {BLOCKED}, {case} ({what}), {label}", "let through", int(through), "",
                            "blocked" if s == "netguard" else None, (not through) if s == "netguard" else None,
                            f"measured with curl: {said}; control (allowed registry-1.docker.io) passed",
                            section="peer"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
