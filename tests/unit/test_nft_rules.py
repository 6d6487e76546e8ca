"""The native nft rule set (netguard.daemon.nft), pure: the same chains, jumps, queue rules and
windows as the iptables set build_rules writes; the data-less segment set encodes exactly what the
u32 tests do; reading `nft list table` output finds what someone changed. No root needed."""

from __future__ import annotations

import re

import pytest

from netguard.daemon import firewall, nft
from netguard.daemon.firewall import Marks, Options
from netguard.doctor import probe
from netguard.wire import tls

FAMILIES = firewall.FAMILIES


def chains_of(text: str) -> dict[str, tuple[str, ...]]:
    return {c: rules for (_, c), rules in nft.layout(text).chains.items()}


def ipt_chains(family: firewall.Family, opts: Options) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in firewall.build_rules(family, opts).splitlines():
        if line.startswith(":"):
            out.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            out.setdefault(chain, []).append(rule)
    return out


VARIANTS = [Options(), Options(fail_open=True, untracked_alerts=True), Options(forward=False),
            Options(skip_empty=False, quic_u32=False, dns_any_port=False, reread_hrr=False),
            Options(queue_num=9, marks=Marks(0xF0, 0x10, 0x20))]


@pytest.mark.parametrize("opts", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_same_chains_and_jumps_as_the_iptables_set(family: firewall.Family, opts: Options) -> None:
    ours = chains_of(nft.build_rules(family, opts))
    ipt = ipt_chains(family, opts)
    base = {name for name in ours if name in nft.BASE_CHAINS}
    assert set(ours) - base == set(ipt), (sorted(ours), sorted(ipt))
    jumps: dict[str, list[str]] = {}
    for line in firewall.build_rules(family, opts).splitlines():
        if line.startswith("-I "):
            jumps.setdefault(line.split()[1], []).insert(0, line.split()[-1])  # -I HOOK 1 inserts in reverse
    for name, (hook, _) in nft.BASE_CHAINS.items():
        if name not in ours:
            assert hook == "forward" and not opts.forward
            continue
        rules = ours[name]
        assert rules[0] == f"type filter hook {hook} priority filter - 1; policy accept;"
        filter_jumps = [c for c in jumps[hook.upper()] if c != firewall.CHAIN_RAW]
        assert [r.removeprefix("jump ") for r in rules[1:]] == filter_jumps
    assert (firewall.CHAIN_RAW in ours) == opts.untracked_alerts


@pytest.mark.parametrize("opts", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_queue_rules_sit_where_the_iptables_ones_do(family: firewall.Family, opts: Options) -> None:
    """Every chain that queues with iptables queues with nft, to the same queue, bypassing exactly
    when fail_open; as many queue rules, but for those merged or split."""
    ours = nft.shape(nft.build_rules(family, opts))
    queue = f"queue {opts.queue_num}" + (" bypass" if opts.fail_open else "")
    queued = {c for c, actions in ours.items() if queue in actions}
    assert all(a == queue for actions in ours.values() for a in actions if a.startswith("queue"))
    ipt = ipt_chains(family, opts)
    assert queued == {c for c, rules in ipt.items() if any("-j NFQUEUE" in r for r in rules)}
    ipt_count = sum(r.count("-j NFQUEUE") for rules in ipt.values() for r in rules)
    # One rule for DNS from port 53 (iptables: UDP and TCP), one set for the QUIC versions.
    merged = 1 + (len(firewall.QUIC_VERSIONS) - 1 if opts.quic_u32 else 0)
    assert sum(a == queue for actions in ours.values() for a in actions) == ipt_count - merged
    flow = chains_of(nft.build_rules(family, opts))[firewall.CHAIN_FLOW]
    rejects_past = any("ct original bytes >" in r for r in flow)
    assert rejects_past == (not opts.fail_open)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_data_less_segment_set_is_the_u32_tests(family: firewall.Family) -> None:
    """The (IP length, data offset) pairs of the nft set are those the eleven u32 rules test."""
    u32 = []
    for test in firewall.empty_segment_tests(family):
        if family == 4:
            length = int(re.search(r"=0x4500(\w{4})", test).group(1), 16)  # type: ignore[union-attr]
        else:
            length = int(re.search(r"=0x(\w{4})0600", test).group(1), 16)  # type: ignore[union-attr]
        doff = int(test.rsplit(">>28=", 1)[1])
        u32.append((length, doff))
    pairs = re.search(r"\{ (.*) \}", nft.empty_segment_test(family)).group(1)  # type: ignore[union-attr]
    ours = [(int(a), int(b, 16) >> 4) for a, b in (p.split(" . ") for p in pairs.split(", "))]
    assert ours == u32
    assert ("ip hdrlength 5" in nft.empty_segment_test(family)) == (family == 4)
    assert ("ip6 nexthdr tcp" in nft.empty_segment_test(family)) == (family == 6)


def test_marks_are_the_policys_bits() -> None:
    marks = Marks(0xF0, 0x10, 0x20)
    flow = chains_of(nft.build_rules(4, Options(marks=marks)))[firewall.CHAIN_FLOW]
    assert flow[0] == f"meta mark & 0x000000f0 == 0x{marks.passed:08x} return"
    for value in (marks.allowed, marks.blocked, marks.follow):
        assert f"meta mark & 0x000000f0 == 0x{value:08x} ct mark set ct mark & 0xffffff0f | 0x{value:08x}" in flow
    assert "meta l4proto tcp ct mark & 0x000000f0 == 0x00000020 reject with tcp reset" in flow


def test_hrr_and_dns_header_tests_read_the_payload() -> None:
    hrr = nft.hrr_test(4)
    random = "".join(re.findall(r"@ih,\d+,128 0x(\w+)", hrr))
    assert bytes.fromhex(random) == tls.HRR_RANDOM
    assert re.findall(r"@ih,(\d+),128", hrr) == ["88", "216"]  # bytes 11 and 27 of the payload
    dns_any = chains_of(nft.build_rules(6, Options()))[firewall.CHAIN_DNS_ANY]
    assert dns_any == ("ip6 nexthdr udp @ih,16,32 & 0xf800ffff == 0x80000001 queue to 7413",
                       "ip6 nexthdr tcp @ih,32,32 & 0xf800ffff == 0x80000001 queue to 7413")


def test_replacement_is_one_transaction_that_works_with_or_without_a_table() -> None:
    text = nft.build_replacement(6, nft.build_rules(6, Options()))
    assert text.startswith("table ip6 netguard\ndelete table ip6 netguard\ntable ip6 netguard {\n")
    assert nft.build_replacement(4, None) == "table ip netguard\ndelete table ip netguard\n"


@pytest.mark.parametrize(("rule", "action"), [
    ("meta l4proto tcp ct original bytes 0-131072 queue flags bypass to 7413", "queue 7413 bypass"),
    ("meta l4proto tcp queue num 7413 bypass", "queue 7413 bypass"),
    ("queue to 12", "queue 12"),
    ("queue num 12", "queue 12"),
    ("tcp flags ! syn,rst,urg ip hdrlength 5 ip length 40-80 goto NETGUARD-EMPTY", "goto NETGUARD-EMPTY"),
    ("ct mark & 0x00700000 == 0x00200000 reject with tcp reset", "reject"),
    ("meta mark & 0x00700000 == 0x00100000 ct mark set ct mark & 0xff9fffff | 0x00100000", "ct mark set"),
    ("jump NETGUARD-FLOW", "jump NETGUARD-FLOW"),
    ("ip daddr 10.0.0.1 accept", "accept"),
])
def test_actions_read_as_nft_prints_them(rule: str, action: str) -> None:
    assert nft.action(rule) == action


LISTING = nft.build_rules(4, Options()).replace("\t", "    ")  # as `nft list` indents, near enough


def test_differences_name_what_someone_changed() -> None:
    good = nft.layout(LISTING)
    assert nft.differences(good, good, 4) == []
    assert nft.differences(good, nft.layout(""), 4) == ["IPv4: table ip netguard is gone"]
    flushed = re.sub(r"(chain NETGUARD-OUTPUT \{\n[^\n]*\n)[^\n]*\n", r"\1", LISTING)
    assert nft.differences(good, nft.layout(flushed), 4) == ["IPv4 netguard: chain NETGUARD-OUTPUT is empty (flushed)"]
    dropped = LISTING.replace("type filter hook input priority filter - 1; policy accept;",
                              "type filter hook input priority filter - 1; policy drop;")
    assert nft.differences(good, nft.layout(dropped), 4) == [
        "IPv4 netguard: chain NETGUARD-INPUT is hooked differently (hook input, policy drop; installed with "
        "hook input, policy accept)"]
    gone = re.sub(r"\tchain NETGUARD-HRR \{\n.*?\n\t\}\n", "", nft.build_rules(4, Options()), flags=re.S)
    assert nft.differences(good, nft.layout(gone), 4) == ["IPv4 netguard: chain NETGUARD-HRR is gone"]


def test_shape_differences_catch_a_lost_bypass() -> None:
    want = nft.shape(nft.build_rules(4, Options(fail_open=True)))
    assert nft.shape_differences(want, nft.layout(nft.build_rules(4, Options(fail_open=True))), 4) == []
    closed = nft.layout(nft.build_rules(4, Options()))
    found = nft.shape_differences(want, closed, 4)
    assert found and all("queue rules should read 'queue 7413 bypass'" in p or "expected" in p for p in found)
    assert nft.queue_bypass(closed) == {False}
    assert nft.queue_bypass(nft.layout(nft.build_rules(4, Options(fail_open=True)))) == {True}
    assert firewall.queue_bypass("nft", closed) == {False}


def test_doctor_and_run_name_the_same_backends_in_the_same_order() -> None:
    assert probe.BACKENDS == firewall.BACKENDS
    assert probe.NFT_QUEUE == "nft"
    ok = probe.Probe(True)
    both = {"nft_queue": ok, "nft_ct_reject": ok, "xt_nfqueue_nft": ok, "xt_nfqueue_legacy": ok}
    assert probe.choose_backend(both) == "nft"
    assert probe.choose_backend({**both, "nft_queue": probe.Probe(False)}) == "iptables-nft"
    assert probe.choose_backend({**both, "nft_ct_reject": probe.Probe(False)}) == "iptables-nft"


def test_the_probe_loads_what_the_backend_uses() -> None:
    """doctor's nft probe carries every kind of statement the rule set needs besides `queue`."""
    rules = nft.build_rules(4, Options(untracked_alerts=True)) + nft.build_rules(6, Options())
    for needed in ("ct original bytes", "ct reply packets", "ct mark set", "reject with tcp reset",
                   "reject with icmp type port-unreachable", "reject with icmpv6 type port-unreachable",
                   'iif "lo" fib saddr type != local', "@ih,", "notrack", "priority raw", "priority filter - 1"):
        assert needed in rules and needed in probe.NFT_CT_RULES, needed
    assert "table ip ng_probe_ct" in probe.NFT_CT_RULES and "table ip6 ng_probe_ct" in probe.NFT_CT_RULES
