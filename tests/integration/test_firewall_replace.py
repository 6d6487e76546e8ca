"""Replacing netguard's rules on the real kernel: one restore per family leaves exactly the new
set (both backends), and removal leaves the tables as they were."""

from __future__ import annotations

import re

import pytest
from harness import backends_here

from netguard.daemon import firewall, netns
from netguard.daemon.firewall import Marks, Options

pytestmark = pytest.mark.root


@pytest.mark.parametrize("backend", firewall.IPTABLES_BACKENDS)
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


@pytest.mark.parametrize("backend", backends_here())
def test_ipv4_only_leaves_ipv6_alone_and_a_later_full_set_replaces_it(backend: firewall.Backend) -> None:
    """What `run` installs on a kernel that refuses the IPv6 set (scripts/kernels boots one)."""
    with netns.scratch("fwrep") as ns:
        firewall.apply(backend, Options(families=(4,)), ns)
        assert firewall.installed(backend, 4, ns) and firewall.installed(backend, 6, ns) == []
        firewall.apply(backend, Options(), ns)
        assert firewall.installed(backend, 4, ns) and firewall.installed(backend, 6, ns)
        assert firewall.remove(ns) == [f"{backend} IPv4", f"{backend} IPv6"]


@pytest.mark.skipif("nft" not in backends_here(), reason="this kernel has no nft queue statement; the kernel "
                    "matrix runs this on Debian's 6.1 and 6.12")
def test_nft_apply_over_an_existing_set_replaces_it_and_leaves_other_tables() -> None:
    """The native backend: a second apply replaces the first set in one transaction (queue numbers,
    marks, the raw chain gone), iptables-nft's tables of another program stay, removal leaves the
    ruleset as it was."""
    from netguard.daemon import nft

    with netns.scratch("fwrep") as ns:
        netns.run(ns, ["iptables-nft", "-A", "OUTPUT", "-d", "192.0.2.9", "-j", "DROP"])
        before = netns.run(ns, ["nft", "list", "ruleset"]).stdout
        firewall.apply("nft", Options(marks=Marks(0xF0, 0x10, 0x20), untracked_alerts=True, queue_num=11), ns)
        assert "NETGUARD-RAW" in firewall.save("nft", 4, ns)
        firewall.apply("nft", Options(queue_num=12), ns)
        for family in firewall.FAMILIES:
            current = nft.layout(firewall.save("nft", family, ns))
            assert not nft.shape_differences(nft.shape(nft.build_rules(family, Options(queue_num=12))), current,
                                             family)
            assert set(current.chains) == set(nft.layout(nft.build_rules(family, Options(queue_num=12))).chains)
            assert {nft.action(r) for rs in current.chains.values() for r in rs if "queue" in r.split()} == {"queue 12"}
        assert firewall.remove(ns) == ["nft IPv4", "nft IPv6"]
        assert netns.run(ns, ["nft", "list", "ruleset"]).stdout == before


@pytest.mark.parametrize("opts", [Options(), Options(fail_open=True, untracked_alerts=True, forward=False)])
def test_nft_set_loads_in_this_kernel_with_its_queue_statements_as_accept(opts: Options) -> None:
    """Everything the native set uses besides `queue` (ct marks and counts, payload and set lookups,
    reject, fib, notrack) on the kernel at hand, this CI machine's too, which has no nft queue
    statement; and `nft list` reads back as the same chains with the same actions."""
    from netguard.daemon import nft

    with netns.scratch("fwnft") as ns:
        for family in firewall.FAMILIES:
            text = re.sub(r"queue (flags bypass )?to \d+", "accept", nft.build_rules(family, opts))
            nft.run_nft(family, nft.build_replacement(family, text), ns)
            listed = nft.layout(firewall.save("nft", family, ns))
            assert nft.shape_differences(nft.shape(text), listed, family) == []
            assert nft.differences(listed, listed, family) == []
        assert firewall.remove(ns) == ["nft IPv4", "nft IPv6"]
        assert nft.present(ns) == []
