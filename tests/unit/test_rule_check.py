"""What the self-healing and `netguard status` compare (firewall.layout, differences, shape), and how
the watch reads nf_tables notifications, without root: iptables-save text is modelled from
build_rules' own output (the kernel's real printing is covered by tests/integration/test_self_heal.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netguard.daemon import firewall
from netguard.daemon.firewall import Layout, Options, build_rules, differences, layout, shape, shape_differences
from netguard.daemon.watch import NFNL_SUBSYS_NFTABLES, families_changed

OTHERS = {"filter": [":DOCKER-USER - [0:0]", "-A FORWARD -j DOCKER-USER", "-A DOCKER-USER -j RETURN"]}


DEFAULT = Options()


def saved(family: firewall.Family, opts: Options = DEFAULT, others: bool = True) -> str:
    """iptables-save as it reads after build_rules' restore: builtin chains, netguard's jumps first
    (the -I ... 1 lines, last one first), then another program's rules after them."""
    out: list[str] = []
    table = ""
    jumps: dict[str, list[str]] = {}
    body: list[str] = []
    for line in build_rules(family, opts).splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.append(line)
            out += [f":{c} ACCEPT [0:0]" for c in ("INPUT", "FORWARD", "OUTPUT")]
            if others:
                out += [x for x in OTHERS.get(table, []) if x.startswith(":")]
        elif line.startswith(":"):
            out.append(line)
        elif line.startswith("-I "):
            hook, chain = line.split()[1], line.split()[-1]
            jumps.setdefault(hook, []).insert(0, f"-A {hook} -j {chain}")
        elif line.startswith("-A "):
            body.append(line)
        elif line == "COMMIT":
            for hook in ("INPUT", "FORWARD", "OUTPUT"):
                out += jumps.pop(hook, [])
                if others:
                    out += [x for x in OTHERS.get(table, []) if x.startswith(f"-A {hook} ")]
            if others:
                out += [x for x in OTHERS.get(table, []) if x.startswith("-A DOCKER")]
            out += body
            body = []
            out.append("COMMIT")
    return "\n".join(out) + "\n"


def without(text: str, line: str) -> str:
    lines = text.splitlines()
    lines.remove(line)
    return "\n".join(lines) + "\n"


def test_what_was_installed_is_found_again() -> None:
    for family in firewall.FAMILIES:
        for opts in (DEFAULT, Options(fail_open=True, untracked_alerts=True), Options(skip_empty=False, forward=False)):
            text = build_rules(family, opts)
            got = layout(saved(family, opts), firewall.tables_of(text))
            assert differences(got, got, family) == []
            assert shape_differences(shape(text), got, family) == []
            assert Layout.parse_lines(got.lines()) == got
            assert got.jumps[("filter", "OUTPUT")] == ((1, "-j NETGUARD-FLOW"),)
            n = sum(1 for line in text.splitlines() if line.startswith(f"-A {firewall.CHAIN_FLOW} "))
            assert len(got.chains[("filter", firewall.CHAIN_FLOW)]) == n


def test_each_way_of_breaking_is_named() -> None:
    good = saved(4)
    expected = layout(good)

    def problems(text: str) -> list[str]:
        return differences(expected, layout(text), 4)

    assert problems(without(good, "-A OUTPUT -j NETGUARD-FLOW")) == [
        "IPv4 filter: the jump from OUTPUT to NETGUARD-FLOW is gone"]
    first = good.replace("-A OUTPUT -j NETGUARD-FLOW", "-A OUTPUT -j ACCEPT\n-A OUTPUT -j NETGUARD-FLOW")
    assert problems(first) == ["IPv4 filter: the jump from OUTPUT to NETGUARD-FLOW is rule 2, not 1 "
                               "(other rules run before it)"]
    swapped = good.replace("-A FORWARD -j NETGUARD-DNS\n-A FORWARD -j NETGUARD-HRR",
                           "-A FORWARD -j NETGUARD-HRR\n-A FORWARD -j NETGUARD-DNS")
    assert any("FORWARD to NETGUARD-DNS is rule 2, not 1" in p for p in problems(swapped))
    queue = next(line for line in good.splitlines() if line.startswith("-A NETGUARD-DNS") and "udp" in line)
    n = sum(line.startswith("-A NETGUARD-DNS ") for line in good.splitlines())
    assert problems(good.replace(queue, queue.replace("NFQUEUE --queue-num 7413", "ACCEPT"))) == [
        f"IPv4 filter: chain NETGUARD-DNS was altered ({n - 1} of its {n} rules as installed, {n} rules now)"]
    flushed = "\n".join(line for line in good.splitlines() if not line.startswith("-A ")) + "\n"
    found = problems(flushed)
    assert "IPv4 filter: chain NETGUARD-FLOW is empty (flushed)" in found
    assert "IPv4 filter: the jump from INPUT to NETGUARD-DNS is gone" in found
    assert problems("") == ["IPv4: table filter is gone"]
    gone = "\n".join(line for line in good.splitlines() if "NETGUARD" not in line) + "\n"
    assert "IPv4 filter: chain NETGUARD-EMPTY is gone" in problems(gone)


def test_other_peoples_rules_are_not_problems() -> None:
    good = saved(6)
    expected = layout(good)
    # Another program's rules after netguard's jumps, its chains, its removal, a new chain of ours
    # nobody jumps to: all fine.
    changed = good.replace("-A DOCKER-USER -j RETURN", "-A DOCKER-USER -s 10.0.0.0/8 -j DROP\n-A DOCKER-USER -j RETURN")
    changed = changed.replace("-A OUTPUT -j NETGUARD-FLOW", "-A OUTPUT -j NETGUARD-FLOW\n-A OUTPUT -j ACCEPT")
    changed = changed.replace(":NETGUARD-DNS - [0:0]", ":NETGUARD-DNS - [0:0]\n:NETGUARD-OLD - [0:0]")
    assert differences(expected, layout(changed), 6) == []
    assert differences(expected, layout(saved(6, others=False)), 6) == []


@given(st.data())
def test_removing_any_one_netguard_line_is_noticed(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(firewall.FAMILIES))
    opts = Options(fail_open=data.draw(st.booleans()), untracked_alerts=data.draw(st.booleans()))
    good = saved(family, opts)
    ours = [line for line in good.splitlines() if "NETGUARD" in line and not line.startswith(":")]
    line = data.draw(st.sampled_from(ours))
    text = build_rules(family, opts)
    broken = layout(without(good, line), firewall.tables_of(text))
    assert differences(layout(good, firewall.tables_of(text)), broken, family)
    assert shape_differences(shape(text), broken, family)


def test_shape_catches_a_rule_set_that_does_not_match_the_policy() -> None:
    closed, opened = build_rules(4, Options()), build_rules(4, Options(fail_open=True))
    problems = shape_differences(shape(closed), layout(saved(4, Options(fail_open=True))), 4)
    assert problems and all("queue rules should read 'NFQUEUE 7413'" in p for p in problems)
    assert "NFQUEUE 7413 bypass" in problems[0]
    assert shape_differences(shape(opened), layout(saved(4, Options(fail_open=True))), 4) == []
    other_queue = shape_differences(shape(build_rules(4, Options(queue_num=9))), layout(saved(4)), 4)
    assert other_queue and "NFQUEUE 9" in other_queue[0]


def test_shape_reads_the_insertion_order() -> None:
    text = build_rules(6, Options())
    s = shape(text)
    assert s.heads[("filter", "FORWARD")] == ("NETGUARD-DNS", "NETGUARD-HRR", "NETGUARD-FLOW")
    dns = s.chains[("filter", "NETGUARD-DNS")]
    # In the order written: the "passed" RETURN first, one target per rule, the DNS answers queued.
    assert dns[0] == "RETURN" and dns.count("NFQUEUE 7413") >= 2
    assert len(dns) == sum(line.startswith("-A NETGUARD-DNS ") for line in text.splitlines())
    assert "goto NETGUARD-EMPTY" in s.chains[("filter", "NETGUARD-FLOW")]


def nl(kind: int, family: int, payload: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + payload
    length = 16 + len(body)
    msg = struct.pack("=IHHII", length, kind, 0, 1, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


@pytest.mark.parametrize("family, expected", [(2, {4}), (10, {6}), (1, {4, 6}), (7, set()), (0, set())])
def test_notification_families(family: int, expected: set[int]) -> None:
    newrule = NFNL_SUBSYS_NFTABLES << 8 | 6  # NFT_MSG_NEWRULE
    assert families_changed(nl(newrule, family, b"xyz")) == expected


def test_several_messages_in_one_datagram() -> None:
    sub = NFNL_SUBSYS_NFTABLES << 8
    data = nl(sub | 0x10, 0) + nl(sub | 8, 10, b"abcde") + nl(3 << 8 | 1, 2) + nl(sub | 2, 2, b"ab")
    assert families_changed(data) == {4, 6}  # the queue subsystem's message (3 << 8) is not ours
    assert families_changed(b"\x01\x00") == set()
    assert families_changed(struct.pack("=IHHII", 4, 0, 0, 0, 0) + b"\0") == set()  # a length that cannot be


def test_watch_schedule_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the watch checks, what it compares, and its back-off, with iptables-save replaced by text
    and the notification socket refused (the polling fallback of iptables-nft)."""
    from netguard.daemon import watch as watch_mod

    def refuse() -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(watch_mod, "Notifications", refuse)
    tables = {4: saved(4), 6: saved(6)}
    w = watch_mod.Watch("iptables-nft", ("filter",), saver=lambda family: tables[family])
    assert w.fileno() is None and w.poll == watch_mod.POLL_FULL and "Operation not permitted" in (
        w.without_notifications or "")
    w.expect(100.0)
    assert w.due == 100.0 + watch_mod.POLL_FULL
    assert w.check(100.1) == {}  # not due yet: nothing read
    checks = w.checks
    assert w.check(101.0) == {} and w.checks == checks + 2  # both families read, nothing wrong
    tables[6] = without(tables[6], "-A INPUT -j NETGUARD-DNS")
    found = w.check(102.0)
    assert found == {6: ["IPv6 filter: the jump from INPUT to NETGUARD-DNS is gone",
                         "IPv6 filter: the jump from INPUT to NETGUARD-HRR is rule 1, not 2 "
                         "(other rules run before it)"]}
    w.retry(110.0, [6])  # a restore failed: nothing before 110
    assert w.check(105.0) == {} and w.check(110.0) == found
    tables[6] = saved(6)
    w.expect(111.0, (6,))
    assert w.check(112.0) == {}


def test_legacy_polls_the_fingerprint_and_reads_rules_only_when_it_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    from netguard.daemon import watch as watch_mod

    prints = {4: b"a", 6: b"b"}
    monkeypatch.setattr(watch_mod, "legacy_fingerprint", lambda family, table: prints[family] + table.encode())
    reads: list[int] = []

    def save(family: firewall.Family) -> str:
        reads.append(family)
        return saved(family)

    w = watch_mod.Watch("iptables-legacy", ("filter",), saver=save)
    w.expect(0.0)
    reads.clear()
    assert w.check(watch_mod.POLL) == {} and reads == []  # unchanged blobs: no iptables-save at all
    prints[4] = b"c"  # someone else's change in IPv4 (the rules read back as before)
    assert w.check(2 * watch_mod.POLL) == {} and reads == [4]
    assert w.check(3 * watch_mod.POLL) == {} and reads == [4]  # the new blob is the new normal
