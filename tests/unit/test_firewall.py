"""Pure rule builders: what is queued, what the kernel enforces, and exact removal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netguard.daemon import firewall
from netguard.daemon.firewall import Marks, Options, build_removal, build_rules


def rules(family: firewall.Family = 4, **kw: object) -> list[str]:
    return build_rules(family, Options(**kw)).splitlines()  # type: ignore[arg-type]


def test_closed_mode_has_no_bypass_and_open_mode_bypasses_every_queue() -> None:
    closed = [r for r in rules() if "NFQUEUE" in r]
    opened = [r for r in rules(fail_open=True) if "NFQUEUE" in r]
    # The client TCP rule twice (NETGUARD-FLOW and NETGUARD-EMPTY), followed flows, DNS from port 53 (2)
    # and from other ports (2), UDP (GSO guard) and QUIC (4), one for server packets (every one of an
    # undecided flow: the ACK of its naming bytes makes an allow final), the client data of unconfirmed
    # TLS flows.
    assert len(closed) == len(opened) == 14
    assert not any("--queue-bypass" in r for r in closed)
    assert all(r.endswith("--queue-num 7413 --queue-bypass") for r in opened)


def test_past_the_window_an_undecided_flow_is_rejected_when_closed() -> None:
    for skip_empty in (True, False):
        closed = [r for r in rules(skip_empty=skip_empty) if "REJECT" in r and "connbytes" in r]
        chains = ["NETGUARD-FLOW", "NETGUARD-EMPTY"] if skip_empty else ["NETGUARD-FLOW"]
        assert [r.split()[1] for r in closed] == chains
        for r in closed:
            assert f"--connbytes {firewall.TCP_WINDOW_BYTES + 1} --connbytes-dir original" in r
            assert "--ctdir ORIGINAL -m connmark --mark 0x0/0x700000" in r and "! --tcp-flags RST RST" in r
        # Each right after the queue rule it ends.
        lines = rules(skip_empty=skip_empty)
        for r in closed:
            before = lines[lines.index(r) - 1]
            assert "NFQUEUE" in before and f"--connbytes 0:{firewall.TCP_WINDOW_BYTES}" in before
    assert not any("REJECT" in r and "connbytes" in r for r in rules(fail_open=True))


def test_the_engine_decides_inside_the_window() -> None:
    from netguard.engine import core

    # Whatever the client sends, the engine's own budget ends before the kernel's window, with room
    # for one more write counted whole (a GSO packet of 64 KiB).
    assert core.MAX_FLOW_WIRE_BYTES + 65536 + 1500 <= firewall.TCP_WINDOW_BYTES
    assert core.MAX_FLOW_BYTES < core.MAX_FLOW_WIRE_BYTES
    # A pending allow waits for a server packet the rules still queue.
    assert core.REPLY_WINDOW_PACKETS == firewall.REPLY_WINDOW_PACKETS


def test_what_is_queued() -> None:
    lines = rules()
    dns = [r for r in lines if r.startswith("-A NETGUARD-DNS ")]
    # Answers only (reply direction): a client flow from port 53 must meet the flow rules.
    assert dns == ["-A NETGUARD-DNS -m mark --mark 0x300000/0x700000 -j RETURN",
                   "-A NETGUARD-DNS -m mark ! --mark 0x0/0x700000 -j CONNMARK --save-mark --nfmask 0x700000 "
                   "--ctmask 0x700000",
                   "-A NETGUARD-DNS -p tcp --tcp-flags RST RST -m mark --mark 0x200000/0x700000 -j RETURN",
                   "-A NETGUARD-DNS -p tcp -m mark --mark 0x200000/0x700000 -j DROP",
                   # an unconfirmed TLS flow's server packets: its first TLS record makes it allowed
                   "-A NETGUARD-DNS -p tcp -m connmark --mark 0x500000/0x700000 -m conntrack --ctdir REPLY "
                   "-g NETGUARD-CONFIRM",
                   "-A NETGUARD-DNS -p udp --sport 53 -m conntrack --ctdir REPLY -j NFQUEUE --queue-num 7413",
                   "-A NETGUARD-DNS -p tcp --sport 53 -m conntrack --ctdir REPLY -j NFQUEUE --queue-num 7413",
                   "-A NETGUARD-DNS -p tcp -m conntrack --ctdir REPLY -m connmark --mark 0x0/0x700000 "
                   f"-m connbytes --connbytes 0:{firewall.REPLY_WINDOW_PACKETS} --connbytes-dir reply "
                   "--connbytes-mode packets -g NETGUARD-REPLY",
                   # then other ports' first replies, for their DNS header (after the server packets of
                   # undecided flows: a goto's RETURN leaves NETGUARD-DNS)
                   "-A NETGUARD-DNS -m connbytes --connbytes 0:32 --connbytes-dir reply --connbytes-mode packets "
                   "-m conntrack --ctdir REPLY -g NETGUARD-DNS-ANY"]
    tcp = next(r for r in lines if "-p tcp" in r and "NFQUEUE" in r and "NETGUARD-FLOW" in r)
    # Client direction only, undecided connections only, a byte window (GSO: not a packet count).
    assert "--ctdir ORIGINAL" in tcp and "-m connmark --mark 0x0/0x700000" in tcp
    assert f"--connbytes 0:{firewall.TCP_WINDOW_BYTES}" in tcp and "--connbytes-mode bytes" in tcp
    # UDP of every flow not blocked goes to NETGUARD-UDP (QUIC by shape: test_firewall_quic.py).
    udp = next(r for r in lines if r.startswith("-A NETGUARD-FLOW -p udp -m mark"))
    assert udp.endswith("-m conntrack --ctdir ORIGINAL -g NETGUARD-UDP")


def test_enforcement_order_and_marks() -> None:
    lines = [r for r in rules(6, marks=Marks(0xF0, 0x10, 0x20)) if r.startswith("-A NETGUARD-FLOW")]
    passed, save, rst, reject_tcp, reject_udp, drop, follow, unconfirmed, udp, decided = lines[:10]
    # UDP of allowed flows too (a new QUIC connection on the pair), but not a verdict's repeat.
    assert "-p udp -m mark --mark 0x0/0xf0" in udp and udp.endswith("-g NETGUARD-UDP")
    # A packet the daemon let go on (repeat + "passed") leaves at once, its mark never saved.
    assert passed == "-A NETGUARD-FLOW -m mark --mark 0x30/0xf0 -j RETURN"
    assert "--save-mark --nfmask 0xf0 --ctmask 0xf0" in save and "! --mark 0x0/0xf0" in save
    # The kernel's own reset must get out before the REJECT rule sees it.
    assert "--tcp-flags RST RST" in rst and rst.endswith("-j RETURN") and "0x20/0xf0" in rst
    assert reject_tcp.endswith("-j REJECT --reject-with tcp-reset")
    assert reject_udp.endswith("--reject-with icmp6-port-unreachable")
    assert "0x20/0xf0" in drop and drop.endswith("DROP")
    # Followed flows (connection mark "follow", 0x40 here) go to their queue before decided ones leave;
    # only fresh packets (packet mark 0), not one the daemon just gave back with its verdict.
    assert follow == ("-A NETGUARD-FLOW -p tcp -m conntrack --ctdir ORIGINAL -m mark --mark 0x0/0xf0 "
                      "-m connmark --mark 0x40/0xf0 -g NETGUARD-FOLLOW")
    # So do the client packets of TLS flows allowed by their hello until the server answers ("unconfirmed").
    assert unconfirmed == ("-A NETGUARD-FLOW -p tcp -m connmark --mark 0x50/0xf0 -m conntrack --ctdir ORIGINAL "
                           "-m mark --mark 0x0/0xf0 -g NETGUARD-UNCONFIRMED")
    assert decided.endswith("-j RETURN") and "! --mark 0x0/0xf0" in decided
    assert rules(4)[-1] == "COMMIT"
    assert "-I OUTPUT 1 -j NETGUARD-FLOW" in rules() and "-I INPUT 1 -j NETGUARD-DNS" in rules()
    assert not any("FORWARD" in r for r in rules(forward=False))


@pytest.mark.parametrize("mask, allowed, blocked", [(0x0F, 0x10, 0x01), (0xF0, 0, 0x10), (0xF0, 0x10, 0x10)])
def test_bad_marks(mask: int, allowed: int, blocked: int) -> None:
    with pytest.raises(ValueError):
        Marks(mask, allowed, blocked)


SAVED = """# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:NETGUARD-DNS - [0:0]
:NETGUARD-FLOW - [0:0]
-A INPUT -j NETGUARD-DNS
-A INPUT -j NETGUARD-DNS
-A FORWARD -j DOCKER
-A FORWARD -j NETGUARD-FLOW
-A OUTPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A OUTPUT -j NETGUARD-FLOW
-A NETGUARD-DNS -p udp -m udp --sport 53 -j NFQUEUE --queue-num 7413
-A NETGUARD-FLOW -m connmark ! --mark 0x0/0x700000 -j RETURN
COMMIT
"""


def test_removal_takes_exactly_our_jumps_and_chains() -> None:
    text = build_removal(SAVED)
    assert text == ("*filter\n-D INPUT -j NETGUARD-DNS\n-D INPUT -j NETGUARD-DNS\n-D FORWARD -j NETGUARD-FLOW\n"
                    "-D OUTPUT -j NETGUARD-FLOW\n-F NETGUARD-DNS\n-F NETGUARD-FLOW\n-X NETGUARD-DNS\n"
                    "-X NETGUARD-FLOW\nCOMMIT\n")
    assert build_removal("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DOCKER\nCOMMIT\n") is None
    assert build_removal("") is None


def test_tool_names() -> None:
    assert firewall.tool("iptables-nft", 6, "restore") == "ip6tables-nft-restore"
    assert firewall.tool("iptables-legacy", 4, "save") == "iptables-legacy-save"


@pytest.mark.parametrize("mask, allowed, blocked, passed", [
    (0x700000, 0x100000, 0x200000, 0x300000), (0x3, 0x1, 0x3, 0x2), (0xF0, 0x20, 0x10, 0x30), (0x6, 0x2, 0x4, 0x6)])
def test_passed_mark(mask: int, allowed: int, blocked: int, passed: int) -> None:
    assert Marks(mask, allowed, blocked).passed == passed


def test_untracked_alerts_add_a_raw_table_part_that_removal_finds() -> None:
    text = build_rules(4, Options(untracked_alerts=True))
    raw = text[text.index("*raw"):].splitlines()
    assert raw == ["*raw", ":NETGUARD-RAW - [0:0]",
                   "-A NETGUARD-RAW -m mark --mark 0x300000/0x700000 -j CT --notrack",
                   "-I OUTPUT 1 -j NETGUARD-RAW", "COMMIT"]
    assert "*raw" not in build_rules(4, Options())
    saved = "*raw\n:OUTPUT ACCEPT [0:0]\n:NETGUARD-RAW - [0:0]\n-A OUTPUT -j NETGUARD-RAW\n" \
            "-A NETGUARD-RAW -m mark --mark 0x300000/0x700000 -j CT --notrack\nCOMMIT\n"
    assert build_removal(saved) == "*raw\n-D OUTPUT -j NETGUARD-RAW\n-F NETGUARD-RAW\n-X NETGUARD-RAW\nCOMMIT\n"


def test_replacement_is_one_transaction_per_table() -> None:
    old = Options(marks=Marks(0xF0, 0x10, 0x20), untracked_alerts=True)
    saved = build_rules(4, old).replace(" 1 -j ", " -j ").replace("-I ", "-A ")  # as iptables-save prints them
    text = firewall.build_replacement(saved, build_rules(4, Options()))
    assert text is not None
    lines = text.splitlines()
    # filter: one section, chains redeclared (which flushes them), old jumps out, new rules in.
    assert lines.count("*filter") == 1 and lines.count("*raw") == 1 and lines.count("COMMIT") == 2
    start = lines.index("*filter")
    section = lines[start:lines.index("COMMIT", start)]
    assert section[1:3] == [":NETGUARD-FLOW - [0:0]", ":NETGUARD-DNS - [0:0]"]
    assert "-D OUTPUT -j NETGUARD-FLOW" in section
    assert section.index("-D OUTPUT -j NETGUARD-FLOW") < section.index("-I OUTPUT 1 -j NETGUARD-FLOW")
    assert not any("0x10/0xf0" in line for line in section if line.startswith("-A"))
    # raw: the chain the new options do not need is deleted in the same restore.
    raw = lines[lines.index("*raw"):]
    assert "-X NETGUARD-RAW" in raw and not any(line.startswith("-A NETGUARD-RAW") for line in raw)
    assert firewall.build_replacement("", None) is None


def test_server_packets_of_undecided_flows() -> None:
    for family in firewall.FAMILIES:
        server = [r for r in rules(family) if r.startswith("-A NETGUARD-REPLY")]
        q = "-j NFQUEUE --queue-num 7413"
        # Data-less ones too, with or without u32: a server's ACK of the bytes an allow was read from
        # makes it final (engine.core._confirm).
        assert server == ["-A NETGUARD-REPLY -i lo -m addrtype ! --src-type LOCAL -j RETURN",
                          f"-A NETGUARD-REPLY {q}"]
        fallback = [r for r in rules(family, skip_empty=False) if r.startswith("-A NETGUARD-REPLY")]
        assert fallback == server
        assert ":NETGUARD-REPLY - [0:0]" in rules(family)


def test_data_less_segments_leave_before_the_queue_and_only_without_syn_rst_or_urg() -> None:
    for family in firewall.FAMILIES:
        lines = rules(family)
        flow = [r for r in lines if r.startswith("-A NETGUARD-FLOW")]
        empty = [r for r in lines if r.startswith("-A NETGUARD-EMPTY")]
        queue_tcp = next(r for r in flow if "-p tcp" in r and "NFQUEUE" in r)
        decided = flow.index(next(r for r in flow if r.endswith("! --mark 0x0/0x700000 -j RETURN")))
        # Right after the decided flows leave: one gate, a goto (RETURN there leaves netguard's rules,
        # as a RETURN here would; never ACCEPT, so the rules after netguard's jump still apply).
        gate = flow[decided + 1]
        assert gate == (f"-A NETGUARD-FLOW -p tcp --tcp-flags SYN,RST,URG NONE -m u32 --u32 "
                        f"{firewall.EMPTY_GATE[family]} -g NETGUARD-EMPTY")
        assert flow[decided + 2] == queue_tcp
        # There: the exact tests, then the same queue rule (and what follows it) for whatever carries bytes.
        tests = firewall.empty_segment_tests(family)
        assert empty[:len(tests)] == [f"-A NETGUARD-EMPTY -m u32 --u32 {t} -j RETURN" for t in tests]
        after = flow[decided + 2:decided + 4]  # the queue rule and the one past the window
        assert empty[len(tests):] == [r.replace("NETGUARD-FLOW", "NETGUARD-EMPTY") for r in after]
        assert ":NETGUARD-EMPTY - [0:0]" in lines
        fallback = rules(family, skip_empty=False, dns_any_port=False, reread_hrr=False, confirm_tls=False)
        assert not any(("u32" in r and "-A NETGUARD-UDP" not in r and "-A NETGUARD-QUIC" not in r)
                       or "NETGUARD-EMPTY" in r or "NETGUARD-HRR" in r for r in fallback)
        # + NETGUARD-DNS-ANY (declared, the goto to it, its two header tests); the same exact tests in
        # NETGUARD-FOLLOW; NETGUARD-HRR (declared, its rule, the jumps from INPUT and FORWARD)
        # NETGUARD-UNCONFIRMED and NETGUARD-CONFIRM (declared, the jumps to them, the same exact tests,
        # mark, queue and the reject past the window; the loopback guard and the TLS record test)
        confirm = 2 + 2 + len(tests) + 3 + 2
        assert len(lines) == len(fallback) + 1 + 1 + len(empty) + 4 + len(tests) + 4 + confirm


@given(family=st.sampled_from(firewall.FAMILIES), offset=st.sampled_from(list(firewall.TCP_DATA_OFFSETS)))
def test_the_gate_lets_every_data_less_segment_through(family: firewall.Family, offset: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    ip = IP(dst="192.0.2.2") if family == 4 else IPv6(dst="2001:db8::2")
    ack = bytes(ip / TCP(flags="A", options=[("NOP", None)] * (4 * (offset - 5))))
    assert u32_matches(firewall.EMPTY_GATE[family], ack)
    hello = bytes(ip / TCP(flags="PA") / (b"\x16" * 517))
    assert not u32_matches(firewall.EMPTY_GATE[family], hello)


def u32_matches(expression: str, packet: bytes) -> bool:
    """xt_u32's evaluation (net/netfilter/xt_u32.c, u32_match_it) of the subset netguard writes:
    tests joined by &&, each a start offset, then & masks, >> shifts and @ jumps (the value so far is
    added to the position, and the number after @ is read from there), and one value or range; a
    read past the end fails."""
    for test in expression.split("&&"):
        location, value = test.split("=")
        first, *ops = location.replace(">>", " >>").replace("&", " &").replace("@", " @").split()
        pos = int(first, 0)
        if pos + 4 > len(packet):
            return False
        val = int.from_bytes(packet[pos:pos + 4], "big")
        at = 0
        for op in ops:
            if op[0] == "&":
                val &= int(op[1:], 0)
            elif op[0] == "@":
                at += val
                pos = int(op[1:], 0)
                if at + pos + 4 > len(packet):
                    return False
                val = int.from_bytes(packet[at + pos:at + pos + 4], "big")
            else:
                val >>= int(op[2:], 0)
        low, _, high = value.partition(":")
        if not int(low, 0) <= val <= int(high or low, 0):
            return False
    return True


@given(offset=st.sampled_from(list(firewall.TCP_DATA_OFFSETS)), size=st.integers(0, 70),
       family=st.sampled_from(firewall.FAMILIES), flags=st.sampled_from(["A", "FA", "PA"]))
def test_u32_tests_match_exactly_the_segments_without_payload(offset: int, size: int, family: firewall.Family,
                                                              flags: str) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    tcp = TCP(sport=40000, dport=443, flags=flags, options=[("NOP", None)] * (4 * (offset - 5))) / (b"x" * size)
    ip = IP(src="192.0.2.1", dst="192.0.2.2") if family == 4 else IPv6(src="2001:db8::1", dst="2001:db8::2")
    packet = bytes(ip / tcp)
    hits = [t for t in firewall.empty_segment_tests(family) if u32_matches(t, packet)]
    assert len(hits) == (1 if size == 0 else 0)


def test_u32_tests_leave_ip_options_extension_headers_and_fragments_queued() -> None:
    from scapy.layers.inet import IP, TCP, IPOption_NOP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

    ack = TCP(sport=40000, dport=443, flags="A")
    plain4, plain6 = bytes(IP(dst="192.0.2.2") / ack), bytes(IPv6(dst="2001:db8::2") / ack)
    assert any(u32_matches(t, plain4) for t in firewall.empty_segment_tests(4))
    assert any(u32_matches(t, plain6) for t in firewall.empty_segment_tests(6))
    for packet, family in ((bytes(IP(dst="192.0.2.2", options=[IPOption_NOP()] * 4) / ack), 4),
                           (bytes(IP(dst="192.0.2.2", flags="MF") / ack), 4),
                           (bytes(IP(dst="192.0.2.2", frag=10) / ack), 4),
                           (bytes(IPv6(dst="2001:db8::2") / IPv6ExtHdrDestOpt() / ack), 6)):
        assert not any(u32_matches(t, packet) for t in firewall.empty_segment_tests(family))  # type: ignore[arg-type]


def test_followed_flows_queue_their_data_with_the_follow_mark() -> None:
    for family in firewall.FAMILIES:
        follow = [r for r in rules(family) if r.startswith("-A NETGUARD-FOLLOW")]
        tests = firewall.empty_segment_tests(family)
        # Data-less segments leave (a download's ACKs never reach the queue), except those with URG (an
        # urgent pointer changes which bytes the server reads); data is queued marked.
        assert follow[:-2] == [f"-A NETGUARD-FOLLOW -p tcp --tcp-flags URG NONE -m u32 --u32 {t} -j RETURN"
                               for t in tests]
        assert follow[-2:] == ["-A NETGUARD-FOLLOW -j MARK --set-xmark 0x400000/0x700000",
                               "-A NETGUARD-FOLLOW -j NFQUEUE --queue-num 7413"]
        # Without u32 every packet of a followed flow is queued.
        assert [r for r in rules(family, skip_empty=False) if r.startswith("-A NETGUARD-FOLLOW")] == follow[-2:]


def test_follow_mark_is_the_fourth_value() -> None:
    assert Marks().follow == 0x400000
    assert Marks(0xF0, 0x10, 0x20).follow == 0x40
    assert Marks(0x7, 0x1, 0x2).follow == 0x4
    with pytest.raises(ValueError):
        _ = Marks(0x3, 0x1, 0x2).follow


def _server_hello(random: bytes) -> bytes:
    from scapy.layers.tls.handshake import TLSServerHello
    from scapy.layers.tls.record import TLS

    hello = TLSServerHello(  # type: ignore[no-untyped-call]
        version=0x0303, gmt_unix_time=int.from_bytes(random[:4], "big"), random_bytes=random[4:],
        sid=b"\x11" * 32, cipher=0x1301)
    return bytes(TLS(version=0x0303, msg=[hello]))  # type: ignore[no-untyped-call]


@given(family=st.sampled_from(firewall.FAMILIES), offset=st.sampled_from(list(firewall.TCP_DATA_OFFSETS)),
       tail=st.integers(0, 400))
def test_the_hrr_rule_matches_a_hello_retry_request_and_nothing_else(family: firewall.Family, offset: int,
                                                                       tail: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

    from netguard.wire import tls

    ip = IP(src="192.0.2.2", dst="192.0.2.1") if family == 4 else IPv6(src="2001:db8::2", dst="2001:db8::1")
    tcp = TCP(sport=443, dport=40000, flags="PA", options=[("NOP", None)] * (4 * (offset - 5)))
    hrr = _server_hello(tls.HRR_RANDOM) + b"\x14\x03\x03\x00\x01\x01" * (tail // 6)
    assert tls.is_hello_retry_request(hrr)  # the engine's own check (replay) agrees with scapy's bytes
    assert u32_matches(firewall.hrr_tests(family), bytes(ip / tcp / hrr))
    plain = _server_hello(bytes(32))
    assert not u32_matches(firewall.hrr_tests(family), bytes(ip / tcp / plain))
    assert not u32_matches(firewall.hrr_tests(family), bytes(ip / tcp / hrr[:40]))  # cut short: no read past
    if family == 6:  # an extension header shifts the payload: not matched (a server never sends one)
        assert not u32_matches(firewall.hrr_tests(6), bytes(ip / IPv6ExtHdrDestOpt() / tcp / hrr))


@given(family=st.sampled_from(firewall.FAMILIES), offset=st.sampled_from(list(firewall.TCP_DATA_OFFSETS)),
       retry=st.booleans())
def test_the_confirm_rule_matches_a_servers_tls_record_and_nothing_else(family: firewall.Family, offset: int,
                                                                       retry: bool) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

    from netguard.wire import tls

    ip = IP(src="192.0.2.2", dst="192.0.2.1") if family == 4 else IPv6(src="2001:db8::2", dst="2001:db8::1")
    tcp = TCP(sport=443, dport=40000, flags="PA", options=[("NOP", None)] * (4 * (offset - 5)))
    test = firewall.tls_record_test(family)
    hello = _server_hello(tls.HRR_RANDOM if retry else bytes(32))
    assert u32_matches(test, bytes(ip / tcp / hello))
    # Not a data-less segment (nothing to read there), nor one cut to a byte, nor an alert, nor a
    # protocol whose server speaks first.
    for other in (b"", hello[:1], b"\x15\x03\x03\x00\x02\x02\x28", b"SSH-2.0-OpenSSH_9.2\r\n"):
        assert not u32_matches(test, bytes(ip / tcp / other))
    if family == 6:  # an extension header: not matched (a server never sends one)
        assert not u32_matches(test, bytes(ip / IPv6ExtHdrDestOpt() / tcp / hello))


def test_unconfirmed_tls_flows_are_queued_until_the_record_and_need_u32_and_a_fifth_mark() -> None:
    for family in firewall.FAMILIES:
        lines = rules(family)
        unconfirmed = [r for r in lines if r.startswith("-A NETGUARD-UNCONFIRMED")]
        # The data-less segments leave (as a followed flow's), the rest is marked and queued within the
        # byte window; past it, closed mode's reset.
        tests = firewall.empty_segment_tests(family)
        assert unconfirmed[:len(tests)] == [f"-A NETGUARD-UNCONFIRMED -p tcp --tcp-flags URG NONE -m u32 --u32 {t} "
                                            "-j RETURN" for t in tests]
        assert unconfirmed[len(tests):] == [
            "-A NETGUARD-UNCONFIRMED -m connbytes --connbytes 0:131072 --connbytes-dir original --connbytes-mode "
            "bytes -j MARK --set-xmark 0x500000/0x700000",
            "-A NETGUARD-UNCONFIRMED -m mark --mark 0x500000/0x700000 -j NFQUEUE --queue-num 7413",
            "-A NETGUARD-UNCONFIRMED -p tcp ! --tcp-flags RST RST -j REJECT --reject-with tcp-reset"]
        assert [r for r in lines if r.startswith("-A NETGUARD-CONFIRM")] == [
            "-A NETGUARD-CONFIRM -i lo -m addrtype ! --src-type LOCAL -j RETURN",
            f"-A NETGUARD-CONFIRM -m u32 --u32 {firewall.tls_record_test(family)} -j CONNMARK --set-xmark "
            "0x100000/0x700000"]
        # (mask 0x13 with allowed 0x10: passed 0x2, follow 0x3, and no fifth value)
        for opts in (firewall.with_u32(Options(), False), Options(marks=Marks(0x13, 0x10, 0x01))):
            assert not opts.confirms_tls
            assert not any("CONFIRM" in r for r in build_rules(family, opts).splitlines())
    assert Options(marks=Marks(0x70, 0x10, 0x20)).confirms_tls


def test_the_hrr_rule_marks_allowed_flows_followed_in_their_first_reply_packets() -> None:
    for family in firewall.FAMILIES:
        lines = rules(family)
        [rule] = [r for r in lines if r.startswith("-A NETGUARD-HRR")]
        assert rule.startswith("-A NETGUARD-HRR -p tcp -m conntrack --ctdir REPLY -m connmark --mark "
                               "0x100000/0x700000 -m connbytes --connbytes 0:8 --connbytes-dir reply "
                               "--connbytes-mode packets -m u32 --u32 ")
        assert rule.endswith(" -j CONNMARK --set-xmark 0x400000/0x700000")
        assert len(firewall.hrr_tests(family).split("&&")) <= 11  # xt_u32: at most 11 tests
        # Its own chain, jumped to after NETGUARD-DNS (whose goto to NETGUARD-REPLY queues the server
        # packets of undecided flows: connection mark 0, never "allowed").
        shape = firewall.shape("\n".join(lines))
        assert shape.heads[("filter", "INPUT")] == ("NETGUARD-DNS", "NETGUARD-HRR")
        assert shape.heads[("filter", "FORWARD")] == ("NETGUARD-DNS", "NETGUARD-HRR", "NETGUARD-FLOW")
        assert not any("NETGUARD-HRR" in r for r in rules(family, reread_hrr=False))
        assert any(r.startswith("-A NETGUARD-REPLY") for r in rules(family, reread_hrr=False))
