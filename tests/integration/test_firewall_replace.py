"""Replacing netguard's rules on the real kernel: one restore per family leaves exactly the new
set (both backends), and removal leaves the tables as they were."""

from __future__ import annotations

import pytest

from netguard.daemon import firewall, netns
from netguard.daemon.firewall import Marks, Options

pytestmark = pytest.mark.root


@pytest.mark.parametrize("backend", firewall.BACKENDS)
def test_apply_over_an_existing_set_replaces_it(backend: firewall.Backend) -> None:
    with netns.scratch("fwrep") as ns:
        before = {f: firewall.save(backend, f, ns) for f in firewall.FAMILIES}
        first = Options(marks=Marks(0xF0, 0x10, 0x20), untracked_alerts=True, queue_num=11)
        second = Options(queue_num=12)
        firewall.apply(backend, first, ns)
        firewall.apply(backend, second, ns)
        for family in firewall.FAMILIES:
            lines = firewall.installed(backend, family, ns)
            jumps = sorted(line for line in lines if line.split()[1] in firewall.HOOKS)
            assert jumps == sorted(f"-A {hook} -j {chain}" for hook, chains in firewall.HOOKS.items()
                                   for chain in chains), lines  # every jump exactly once
            assert not any("NETGUARD-RAW" in line for line in lines), lines
            queues = {line.split("--queue-num ")[1].split()[0] for line in lines if "--queue-num" in line}
            assert queues == {"12"}, lines
        assert firewall.remove(ns) == [f"{backend} IPv4", f"{backend} IPv6"]
        assert {f: firewall.save(backend, f, ns) for f in firewall.FAMILIES} == before


@pytest.mark.parametrize("backend", firewall.BACKENDS)
def test_ipv4_only_leaves_ipv6_alone_and_a_later_full_set_replaces_it(backend: firewall.Backend) -> None:
    """What `run` installs on a kernel that refuses the IPv6 set (scripts/kernels boots one)."""
    with netns.scratch("fwrep") as ns:
        firewall.apply(backend, Options(families=(4,)), ns)
        assert firewall.installed(backend, 4, ns) and firewall.installed(backend, 6, ns) == []
        firewall.apply(backend, Options(), ns)
        assert firewall.installed(backend, 4, ns) and firewall.installed(backend, 6, ns)
        assert firewall.remove(ns) == [f"{backend} IPv4", f"{backend} IPv6"]
