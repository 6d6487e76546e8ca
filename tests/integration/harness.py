"""Helpers for the integration tests: a netguard daemon run as a real subprocess (`netguard run`) in
a lab's client namespace, started and stopped by PID, and readers of the namespace's rules."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

NETGUARD = str(Path(sys.executable).with_name("netguard"))
# Every fixed wait and time limit in the tests is multiplied by this: 1 on an ordinary machine, more
# where everything is slower (scripts/kernels runs the suite in an emulated VM with 10). Helper
# scripts run in the namespaces (rawhello.py, segments.py, ...) read the same variable.
TIME_FACTOR = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)
if not TIME_FACTOR > 0:
    raise ValueError(f"NETGUARD_TEST_TIME_FACTOR must be a positive number, not {TIME_FACTOR}")


def scaled(seconds: float) -> float:
    """A wait or a time limit of the tests, in seconds, for this machine."""
    return seconds * TIME_FACTOR


# `netguard run` probes the kernel (doctor) before it enforces: well under a second here.
READY_TIMEOUT = scaled(15.0)
STOP_TIMEOUT = scaled(5.0)  # SIGTERM to exit: remove the rules and go


class Runner:
    """One `netguard run` in the lab's client namespace, with its stdout/stderr in files."""

    def __init__(self, lab: lab_mod.Lab, workdir: Path, policy: str | None = None, name: str = "ng",
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 command: tuple[str, ...] = (NETGUARD,), prelude: str | None = None) -> None:
        self.lab = lab
        self.args = args
        self.command = command  # what runs `run ARGS` (another interpreter line for a patched daemon)
        self.env = env  # the daemon's environment (None: the test's own)
        self.prelude = prelude  # Python run before the CLI in the daemon's process (a test's smaller constant)
        self.workdir = workdir
        self.policy_path: Path | None = None
        if policy is not None:
            self.policy_path = workdir / f"{name}-policy.toml"
            self.policy_path.write_text(policy)
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def backend(self) -> str | None:
        """The backend asked for with --backend (None: the daemon chooses)."""
        return self.args[self.args.index("--backend") + 1] if "--backend" in self.args else None

    def start(self, wait: bool = True) -> Runner:
        command = list(self.command) if self.prelude is None else [
            sys.executable, "-c", f"{self.prelude}\nfrom netguard.cli import main\nmain(prog_name='netguard')"]
        argv = [*command, "run", *self.args]
        if self.policy_path is not None:
            argv += ["--policy", str(self.policy_path)]
        with self.out_path.open("ab") as out, self.err_path.open("ab") as err:
            self.proc = self.lab.client_popen(argv, stdout=out, stderr=err, env=self.env)
        if wait:
            self.wait_for("enforcing")
        return self

    def wait_for(self, text: str, timeout: float = READY_TIMEOUT, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stderr().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"netguard exited ({self.proc.returncode}): {self.stderr()}")
            time.sleep(0.02)
        raise RuntimeError(f"netguard: {text!r} not seen after {timeout} s: {self.stderr()}")

    def stderr(self) -> str:
        return self.err_path.read_text() if self.err_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """Every JSON line of the log: verdicts and the daemon's own events ("event": ...)."""
        text = self.out_path.read_text() if self.out_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events(self) -> list[dict[str, Any]]:
        """The verdict lines of the log (blocks, cuts)."""
        return [r for r in self.records() if "verdict" in r]

    def daemon_events(self, kind: str) -> list[dict[str, Any]]:
        """The daemon's own log lines of one kind, e.g. "rules-restored"."""
        return [r for r in self.records() if r.get("event") == kind]

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        code = lab_mod.stop(self.proc, sig, timeout=STOP_TIMEOUT)
        self.proc = None
        return code



class Fetch(NamedTuple):
    seconds: float
    code: int
    out: str  # stdout and stderr


def curl(lab: lab_mod.Lab, name: str, family: int, *extra: str, ns: str | None = None, pin: bool = True,
         timeout: float = 10) -> Fetch:
    """curl https://NAME/ from the client namespace (or ns), trusting the lab's CA. pin: --resolve to
    the lab's address, so the client reaches the server even when DNS says NXDOMAIN and the
    connection itself is what netguard must stop. timeout: curl's limit before scaled()."""
    timeout = scaled(timeout)
    pinned = ["--resolve", f"{name}:443:{lab.address(name, family)}"] if pin else []
    argv = ["curl", "-sS", "-m", f"{timeout:g}", f"-{family}", "--cacert", str(lab.ca_file), *pinned, *extra,
            f"https://{name}/"]
    start = time.monotonic()
    r = netns.run(ns or lab.client, argv, check=False, timeout=timeout + scaled(10))
    return Fetch(time.monotonic() - start, r.returncode, r.stdout + r.stderr)


def filter_rules(lab: lab_mod.Lab, family: int, backend: str = "nft") -> list[str]:
    """The client namespace's filter table, without comments and counters."""
    tool = f"{'iptables' if family == 4 else 'ip6tables'}-{backend}-save"
    out = netns.run(lab.client, [tool, "-t", "filter"]).stdout
    return [line.split(" [")[0] if line.startswith(":") else line
            for line in out.splitlines() if line and not line.startswith("#")]


def nft_table(lab: lab_mod.Lab, family: int) -> list[str]:
    """netguard's native nft table of one family in the client namespace ([] when there is none)."""
    r = netns.run(lab.client, ["nft", "list", "table", "ip" if family == 4 else "ip6", "netguard"], check=False)
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def netguard_rules(lab: lab_mod.Lab) -> list[str]:
    """Every netguard line in the client namespace, all backends and families."""
    lines = []
    for backend in ("nft", "legacy"):
        for family in (4, 6):
            lines += [f"{backend}{family} {line}" for line in filter_rules(lab, family, backend) if "NETGUARD" in line]
    for family in (4, 6):
        lines += [f"nft-native{family} {line}" for line in nft_table(lab, family)]
    return lines


@functools.cache
def default_backend() -> str | None:
    """The backend `netguard run` takes here without --backend: doctor's probe (nft where this kernel
    has the nft queue statement, as on Debian's 6.1 and 6.12; iptables-nft on a kernel with only xt
    NFQUEUE, as this CI machine's)."""
    from netguard.doctor.probe import probe_backend

    return probe_backend()


def backends_here() -> tuple[str, ...]:
    """Every backend `netguard run` can use on this kernel: both iptables backends, and nft where
    the probe finds the nft queue statement (the kernel matrix runs those on 6.1 and 6.12)."""
    from netguard.daemon import firewall

    return tuple(b for b in firewall.BACKENDS if b != "nft" or default_backend() == "nft")


# A TLS client whose connection comes from source port 53 (as a root process may bind), to ADDR with
# SNI NAME; prints "connected" or the error's type.
FROM_PORT_53 = """
import os, socket, ssl, sys
addr, name, family = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if family == 6 else "0.0.0.0", 53))
s.settimeout(5 * float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1))
s.connect((addr, 443))
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
try:
    ctx.wrap_socket(s, server_hostname=name)
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


# Keeps one TLS connection open, one request every 50 ms; prints when it breaks.
LONG_CLIENT = """
import os, socket, ssl, sys, time
T = float(os.environ.get("NETGUARD_TEST_TIME_FACTOR") or 1)  # harness.scaled(), in the client
host, addr, ca = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection((addr, 443), timeout=5 * T) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
    print("open", flush=True)
    while True:
        try:
            tls.sendall(b"GET / HTTP/1.1\\r\\nHost: " + host.encode() + b"\\r\\n\\r\\n")
            if not tls.recv(4096):
                raise ConnectionError("closed")
        except OSError as e:
            print("cut", type(e).__name__, time.time(), flush=True)
            break
        time.sleep(0.05)
"""


def until(predicate: object, limit: float) -> float:
    """Seconds until predicate() is true; fails the test after `limit` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if callable(predicate) and predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"not true within {limit} s")


# The kernel's resets to hand-made connections' replies (a raw socket's, no socket behind them).
RESET_DROP = ["OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "--dport", "443", "-j", "DROP"]


@contextlib.contextmanager
def daemon_with(lab: lab_mod.Lab, workdir: Path, backend: str) -> Iterator[Runner]:
    """netguard with `backend`, enforcing; at the end it must stop cleanly (exit status 0). For a
    test module's daemon, one per backend."""
    runner = Runner(lab, workdir, args=("--backend", backend)).start()
    try:
        yield runner
    finally:
        assert runner.stop() == 0


@contextlib.contextmanager
def daemon_for_raw_clients(lab: lab_mod.Lab, workdir: Path, backend: str) -> Iterator[Runner]:
    """daemon_with, the client namespace's own resets (RESET_DROP) dropped while it runs: for tests
    whose clients send hand-made segments from raw sockets."""
    with daemon_with(lab, workdir, backend) as runner:
        for tool in ("iptables", "ip6tables"):
            netns.run(lab.client, [tool, "-t", "raw", "-A", *RESET_DROP])
        try:
            yield runner
        finally:
            for tool in ("iptables", "ip6tables"):
                netns.run(lab.client, [tool, "-t", "raw", "-D", *RESET_DROP], check=False)
