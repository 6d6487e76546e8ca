"""Network namespaces for probes, tests, benchmarks and the demo.

Strategy: everything netguard does outside production happens in namespaces it creates here, with
unique names, so that no rule, queue or route ever lands in the namespace of the caller. Creation
and deletion go through `ip netns`, which also bind-mounts /etc/netns/NAME/* (resolv.conf) for
processes started with `ip netns exec`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence

PREFIX = "ng-"


def unique_name(role: str) -> str:
    """A namespace name that no other run on this machine will pick (at most 15 chars is not
    required for namespaces, but short names keep `ip netns list` readable)."""
    return f"{PREFIX}{role}-{secrets.token_hex(3)}"


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run(ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
        input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace ns and capture its output as text."""
    return subprocess.run(exec_argv(ns, argv), check=check, timeout=timeout, capture_output=True,
                          text=True, input=None if input is None else input.decode())


def create(ns: str) -> None:
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, text=True)
    run(ns, ["ip", "link", "set", "lo", "up"])


def delete(ns: str) -> None:
    """Delete ns, killing what still runs in it (processes started there by us), and its /etc/netns dir."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, text=True)
    etc = f"/etc/netns/{ns}"
    if os.path.isdir(etc):
        for name in os.listdir(etc):
            os.unlink(os.path.join(etc, name))
        os.rmdir(etc)


@contextlib.contextmanager
def scratch(role: str) -> Iterator[str]:
    """A fresh namespace with only `lo` up, deleted on exit whatever happens."""
    ns = unique_name(role)
    create(ns)
    try:
        yield ns
    finally:
        delete(ns)
