"""The engine, fed packets crafted by scapy (the independent oracle): names from SNI, HTTP, QUIC and
DNS, reassembly, every limit and its fail verdict, reload, and the packets it writes."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, IPv6, raw  # type: ignore[attr-defined]

from netguard.daemon.policyfiles import load_catalog
from netguard.engine import Action, Engine, Verdict, core, packets
from netguard.engine.names import MAX_TTL
from netguard.engine.verdict import FlowKey
from netguard.lab.lab import python_client_hello
from netguard.policy import Policy, parse_policy
from netguard.wire import dns

C4, S4, BLOCKED4 = "10.0.0.10", "10.0.0.102", "10.0.0.103"
C6, S6 = "fd00::10", "fd00::102"
NOW = 1000.0


def policy(text: str = 'allow = ["dockerhub"]\n') -> Policy:
    return parse_policy(text, "test.toml", load_catalog())




class Conn:
    """One client TCP connection, as packets."""

    def __init__(self, dst: str = S4, src: str = C4, dport: int = 443, sport: int = 40000, isn: int = 1000) -> None:
        self.ip = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
        self.dport, self.sport, self.isn = dport, sport, isn

    def syn(self) -> bytes:
        return raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags="S", seq=self.isn))

    def data(self, offset: int, payload: bytes, flags: str = "PA") -> bytes:
        return raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags=flags, seq=self.isn + 1 + offset,
                                 ack=5000) / payload)

    def ack(self) -> bytes:
        return raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags="A", seq=self.isn + 1, ack=5000))


def checksums_ok(packet: bytes) -> bool:
    """Our lengths and checksums equal the ones scapy computes for the same packet."""
    ours = IP(packet)
    copy = IP(packet)
    del copy[IP].len, copy[IP].chksum
    l4 = copy[TCP] if copy.haslayer(TCP) else copy[UDP]
    del l4.chksum
    if copy.haslayer(UDP):
        del copy[UDP].len
    theirs = IP(raw(copy))
    layer = TCP if ours.haslayer(TCP) else UDP
    return bool(theirs.chksum == ours.chksum and theirs.len == ours.len
                and theirs[layer].chksum == ours[layer].chksum)


def run(engine: Engine, packets: list[bytes]) -> list[Verdict]:
    return [engine.handle(p, NOW) for p in packets]


@pytest.mark.parametrize("dst, src", [(S4, C4), (S6, C6)])
@pytest.mark.parametrize("name, action", [("registry-1.docker.io", Action.ALLOW), ("ghcr.io", Action.BLOCK),
                                          ("GHCR.IO.", Action.BLOCK), ("www.example.org", Action.ALLOW)])
def test_sni_decides(dst: str, src: str, name: str, action: Action) -> None:
    c = Conn(dst, src)
    syn, hello = run(Engine(policy()), [c.syn(), c.data(0, python_client_hello(name))])
    assert syn.action is Action.ACCEPT and syn.event is None
    assert hello.action is action
    assert hello.event is not None and hello.event.source == "sni"
    assert hello.event.host == name.lower().rstrip(".")
    assert hello.event.key.text() == {"proto": "tcp", "src": src, "sport": 40000, "dst": dst, "dport": 443}


@pytest.mark.parametrize("seed", range(5))
def test_one_byte_segments_in_any_order(seed: int) -> None:
    hello = python_client_hello("ghcr.io")
    c = Conn()
    order = list(range(len(hello)))
    random.Random(seed).shuffle(order)
    engine = Engine(policy())
    verdicts = run(engine, [c.syn()] + [c.data(i, hello[i:i + 1]) for i in order])
    # Undecided until the last missing byte arrives, whatever the order.
    assert all(v.action is Action.ACCEPT for v in verdicts[:-1])
    assert verdicts[-1].action is Action.BLOCK and verdicts[-1].event is not None
    assert verdicts[-1].event.host == "ghcr.io"


def test_retransmission_is_fine_and_a_conflicting_overlap_blocks_even_fail_open() -> None:
    hello = python_client_hello("registry-1.docker.io")
    c = Conn()
    engine = Engine(policy())
    assert run(engine, [c.syn(), c.data(0, hello[:100]), c.data(0, hello[:100])])[-1].action is Action.ACCEPT
    assert engine.handle(c.data(100, hello[100:]), NOW).action is Action.ALLOW

    for text in ('allow = ["dockerhub"]\n', 'allow = ["dockerhub"]\nfail_mode = "open"\n'):
        c = Conn(sport=40001)
        engine = Engine(policy(text))
        forged = hello[:50] + bytes((hello[50] ^ 0xFF,)) + hello[51:100]
        v = run(engine, [c.syn(), c.data(0, hello[:100]), c.data(0, forged)])[-1]
        assert v.action is Action.BLOCK and v.event is not None and v.event.rule == "overlap"


@pytest.mark.parametrize("mode, action", [("closed", Action.BLOCK), ("open", Action.ALLOW)])
def test_a_server_name_we_cannot_read_gets_the_fail_verdict(mode: str, action: Action) -> None:
    hello = python_client_hello("ghcr.io").replace(b"ghcr.io", b"ghcr.i\xff")  # non-ASCII: reported, not guessed
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    c = Conn()
    v = run(engine, [c.syn(), c.data(0, hello)])[-1]
    assert v.action is action
    assert v.event is not None and "server_name" in v.event.reason


@pytest.mark.parametrize("mode, action", [("closed", Action.BLOCK), ("open", Action.ALLOW)])
def test_byte_limit_gives_the_fail_verdict(mode: str, action: Action) -> None:
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    c = Conn()
    # A handshake record header announcing 16 KiB, then bytes past the per-flow limit.
    head = struct.pack("!BHH", 22, 0x0301, 16384) + b"\x01\x00\x3f\xfc"
    verdicts = run(engine, [c.syn(), c.data(0, head), c.data(core.MAX_FLOW_BYTES, b"x")])
    assert verdicts[1].action is Action.ACCEPT
    assert verdicts[2].action is action
    assert engine.stats.by_limit == {"bytes": 1}


@pytest.mark.parametrize("mode, action", [("closed", Action.BLOCK), ("open", Action.ALLOW)])
def test_flow_limit_gives_the_fail_verdict(mode: str, action: Action) -> None:
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    engine.max_flows = 2
    verdicts = run(engine, [Conn(sport=p).syn() for p in (1, 2, 3)])
    assert [v.action for v in verdicts] == [Action.ACCEPT, Action.ACCEPT, action]
    assert engine.stats.by_limit == {"flows": 1}
    # Idle flows expire and make room.
    engine.expire(NOW + core.FLOW_IDLE + 1)
    assert engine.undecided == 0


def dns_answer(qname: str, chain: list[str], address: str, ttl: int = 300, edns: bool = True) -> bytes:
    from scapy.layers.dns import DNSRROPT

    records = []
    owner = qname
    for target in chain:
        records.append(DNSRR(rrname=owner, type="CNAME", rdata=target, ttl=ttl))
        owner = target
    qtype = "AAAA" if ":" in address else "A"
    records.append(DNSRR(rrname=owner, type=qtype, rdata=address, ttl=ttl))
    msg = DNS(id=7, qr=1, rd=1, ra=1, qd=[DNSQR(qname=qname, qtype=qtype)], an=records,
              ar=[DNSRROPT(rclass=1232)] if edns else [])
    return raw(msg)


def udp_answer(payload: bytes) -> bytes:
    return raw(IP(src="10.0.0.53", dst=C4) / UDP(sport=53, dport=33333) / payload)


def test_dns_answer_with_cname_to_blocked_registry_becomes_nxdomain_and_teaches_the_address() -> None:
    engine = Engine(policy())
    v = engine.handle(udp_answer(dns_answer("dl.allowed.test", ["edge.allowed.test", "ghcr.io"], BLOCKED4)), NOW)
    assert v.action is Action.REWRITE and v.payload is not None
    assert checksums_ok(v.payload)
    rewritten = IP(v.payload)
    reply = dns.parse_message(bytes(rewritten[UDP].payload))
    assert reply.rcode == dns.RCODE_NXDOMAIN and reply.id == 7 and not reply.answers
    assert v.event is not None and v.event.names == ("dl.allowed.test", "edge.allowed.test", "ghcr.io")
    # A connection to the learned address without any name (not TLS, not HTTP) is blocked by it.
    c = Conn(BLOCKED4, dport=5000)
    verdict = run(engine, [c.syn(), c.data(0, b"\x00\x01binary protocol")])[-1]
    assert verdict.action is Action.BLOCK and verdict.event is not None
    assert verdict.event.source == "dns-table" and verdict.event.host == "ghcr.io"
    # TTLs are bounded: after MAX_TTL the address is unknown again (unknown_hosts = allow).
    later = Conn(BLOCKED4, dport=5000, sport=41000)
    engine.handle(later.syn(), NOW + MAX_TTL + 1)
    v2 = engine.handle(later.data(0, b"\x00\x01binary"), NOW + MAX_TTL + 1)
    assert v2.action is Action.ALLOW and v2.event is not None and v2.event.source == "address"


def test_unknown_sni_on_an_address_learned_for_a_blocked_registry_is_blocked() -> None:
    engine = Engine(policy('allow = ["dockerhub"]\ndns_block = false\n'))
    v = engine.handle(udp_answer(dns_answer("dl.allowed.test", ["ghcr.io"], BLOCKED4)), NOW)
    assert v.action is Action.ACCEPT  # dns_block off: the answer passes
    c = Conn(BLOCKED4)
    verdict = run(engine, [c.syn(), c.data(0, python_client_hello("dl.allowed.test"))])[-1]
    assert verdict.action is Action.BLOCK and verdict.event is not None and verdict.event.host == "ghcr.io"
    # An address learned for an allowed registry leaves an unknown SNI its own decision.
    engine.handle(udp_answer(dns_answer("registry-1.docker.io", [], S4)), NOW)
    other = Conn(S4, sport=40100)
    verdict = run(engine, [other.syn(), other.data(0, python_client_hello("www.example.org"))])[-1]
    assert verdict.action is Action.ALLOW and verdict.event is not None
    assert verdict.event.source == "sni" and verdict.event.host == "www.example.org"


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_name_table_limit_gives_the_fail_verdict(mode: str) -> None:
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    engine.names.max_entries = 1
    v = engine.handle(udp_answer(dns_answer("a.example.org", ["b.example.org"], "10.0.0.9")), NOW)
    assert engine.stats.by_limit == {"names": 1}
    if mode == "closed":
        assert v.action is Action.REWRITE and v.payload is not None
        reply = dns.parse_message(bytes(IP(v.payload)[UDP].payload))
        assert reply.rcode == dns.RCODE_NXDOMAIN
    else:
        assert v.action is Action.ACCEPT


def test_dns_over_tcp_answer_is_rewritten_in_place() -> None:
    msg = dns_answer("ghcr.io", [], BLOCKED4)
    framed = dns.frame_tcp(msg)
    seg = raw(IP(src="10.0.0.53", dst=C4) / TCP(sport=53, dport=40000, flags="PA", seq=77, ack=1) / framed)
    v = Engine(policy()).handle(seg, NOW)
    assert v.action is Action.REWRITE and v.payload is not None
    out = IP(v.payload)
    payload = bytes(out[TCP].payload)
    assert len(payload) == len(framed) and out[TCP].seq == 77
    assert checksums_ok(v.payload)
    [reply], rest = dns.split_tcp_messages(payload)
    assert rest == b"" and dns.parse_message(reply).rcode == dns.RCODE_NXDOMAIN


@pytest.mark.parametrize("request_head, action, source", [
    (b"GET /v2/ HTTP/1.1\r\nHost: ghcr.io\r\n\r\n", Action.BLOCK, "http-host"),
    (b"GET /v2/ HTTP/1.1\r\nHost: registry-1.docker.io:80\r\n\r\n", Action.FOLLOW, "http-host"),
    (b"CONNECT ghcr.io:443 HTTP/1.1\r\nHost: ghcr.io:443\r\n\r\n", Action.BLOCK, "http-connect"),
    (b"GET http://ghcr.io/v2/ HTTP/1.1\r\n\r\n", Action.BLOCK, "http-host"),
])
def test_http_names(request_head: bytes, action: Action, source: str) -> None:
    c = Conn(dport=80)
    engine = Engine(policy())
    head = run(engine, [c.syn()] + [c.data(i, request_head[i:i + 7]) for i in range(0, len(request_head), 7)])
    assert all(v.action is Action.ACCEPT for v in head[:-1])
    assert head[-1].action is action and head[-1].event is not None and head[-1].event.source == source


def test_ambiguous_http_is_the_fail_verdict() -> None:
    c = Conn(dport=80)
    v = run(Engine(policy()), [c.syn(), c.data(0, b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: ghcr.io\r\n\r\n")])
    assert v[-1].action is Action.BLOCK and v[-1].event is not None and v[-1].event.source == "none"


@pytest.mark.parametrize("mode, action", [("closed", Action.DROP), ("open", Action.ACCEPT)])
def test_unreadable_packet(mode: str, action: Action) -> None:
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    assert engine.handle(b"\x45\x00garbage", NOW).action is action
    assert engine.handle(b"", NOW).action is action


def test_decided_flow_keeps_its_verdict_and_reload_finds_flows_to_cut() -> None:
    engine = Engine(policy())
    c = Conn()
    assert run(engine, [c.syn(), c.data(0, python_client_hello("registry-1.docker.io"))])[-1].action is Action.ALLOW
    assert engine.handle(c.data(600, b"more"), NOW).action is Action.ALLOW  # queued behind the decision
    cut = engine.reload(policy('allow = ["ghcr"]\n'), NOW + 1)
    assert [e.key.dport for e in cut] == [443] and cut[0].host == "registry-1.docker.io"
    assert engine.handle(c.data(700, b"more"), NOW).action is Action.BLOCK


def test_server_speaks_first_flow_is_decided_by_address() -> None:
    # Data-less client segments decide nothing, however many; the server's first bytes do.
    c = Conn(dport=22)
    engine = Engine(policy())
    assert {v.action for v in run(engine, [c.syn()] + [c.ack() for _ in range(10)])} == {Action.ACCEPT}
    banner = raw(IP(src=S4, dst=C4) / TCP(sport=22, dport=40000, flags="PA", seq=5000, ack=c.isn + 1)
                 / b"SSH-2.0-OpenSSH_9.2\r\n")
    v = engine.handle(banner, NOW, from_client=False)
    assert v.action is Action.ALLOW and v.event is not None and v.event.source == "address"
    assert v.event.key == FlowKey(6, bytes([10, 0, 0, 10]), 40000, bytes([10, 0, 0, 102]), 22)


def test_tls_alert_is_built_toward_the_client() -> None:
    engine = Engine(policy('allow = ["dockerhub"]\nblock_action = "tls-alert"\n'))
    c = Conn()
    hello = python_client_hello("ghcr.io")
    v = run(engine, [c.syn(), c.data(0, hello)])[-1]
    assert v.action is Action.BLOCK and len(v.inject) == 1
    alert = IP(v.inject[0])
    assert (alert.src, alert.dst, alert[TCP].sport, alert[TCP].dport) == (S4, C4, 443, 40000)
    assert alert[TCP].seq == 5000 and alert[TCP].ack == 1001 + len(hello)
    assert bytes(alert[TCP].payload) == b"\x15\x03\x03\x00\x02\x02\x31"
    assert checksums_ok(v.inject[0])


def test_a_packet_cut_by_the_queue_copy_range_is_still_read() -> None:
    # NFQUEUE copies at most ~4 KB: the IP length field then says more than the bytes at hand.
    c = Conn()
    engine = Engine(policy())
    engine.handle(c.syn(), NOW)
    hello = python_client_hello("ghcr.io")
    whole = c.data(0, hello + bytes(6000))
    v = engine.handle(whole[:4016], NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == "ghcr.io"
    c6 = Conn(S6, C6)
    engine.handle(c6.syn(), NOW)
    v6 = engine.handle(c6.data(0, hello + bytes(6000))[:4016], NOW)
    assert v6.action is Action.BLOCK and v6.event is not None and v6.event.host == "ghcr.io"


def test_a_client_flow_from_port_53_is_not_taken_for_dns() -> None:
    # A root process may bind source port 53 for its own connection to a blocked registry.
    c = Conn(sport=53)
    v = run(Engine(policy()), [c.syn(), c.data(0, python_client_hello("ghcr.io"))])
    assert v[-1].action is Action.BLOCK and v[-1].event is not None and v[-1].event.source == "sni"
    # Where the hook says "client" (OUTPUT), even without the SYN.
    engine = Engine(policy())
    v2 = engine.handle(c.data(0, python_client_hello("ghcr.io")), NOW, from_client=True)
    assert v2.action is Action.BLOCK and v2.event is not None and v2.event.source == "sni"
    # Where it says "answer" (INPUT), a packet from port 53 is read as DNS.
    answer = udp_answer(dns_answer("ghcr.io", [], BLOCKED4))
    assert Engine(policy()).handle(answer, NOW, from_client=False).action is Action.REWRITE


def test_a_forged_reset_in_the_middle_of_a_client_hello_changes_nothing() -> None:
    hello = python_client_hello("ghcr.io")
    c = Conn()
    engine = Engine(policy())
    rst = raw(c.ip / TCP(sport=c.sport, dport=c.dport, flags="R", seq=c.isn + 1 + 10**6))
    verdicts = run(engine, [c.syn(), c.data(0, hello[:100]), rst, c.data(100, hello[100:])])
    assert verdicts[2].action is Action.ACCEPT
    assert verdicts[3].action is Action.BLOCK and verdicts[3].event is not None
    assert verdicts[3].event.host == "ghcr.io"


@pytest.mark.parametrize("mode, action", [("closed", Action.BLOCK), ("open", Action.ALLOW)])
def test_idle_flow_that_sent_bytes_gets_the_fail_verdict(mode: str, action: Action) -> None:
    hello = python_client_hello("ghcr.io")
    c = Conn()
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    run(engine, [c.syn(), c.data(0, hello[:100])])
    engine.expire(NOW + core.FLOW_IDLE_DATA - 1)  # a slow client: no verdict of netguard's own
    assert engine.stats.by_limit == {} and engine.undecided == 1
    engine.expire(NOW + core.FLOW_IDLE_DATA + 1)
    assert engine.stats.by_limit == {"idle": 1}
    # The rest alone would name nothing (not a TLS start): the flow keeps the fail verdict.
    v = engine.handle(c.data(100, hello[100:]), NOW + core.FLOW_IDLE_DATA + 2)
    assert v.action is action and v.event is not None and v.event.source == "none"
    assert "idle" in v.event.reason


def test_idle_flow_without_bytes_is_read_from_its_start_later() -> None:
    c = Conn()
    engine = Engine(policy())
    engine.handle(c.syn(), NOW)
    engine.expire(NOW + core.FLOW_IDLE + 1)
    assert engine.undecided == 0 and engine.stats.by_limit == {}
    hello = python_client_hello("ghcr.io")
    later = NOW + core.FLOW_IDLE + 2
    # Second half first: without the remembered start it would be read as a stream of its own.
    assert engine.handle(c.data(200, hello[200:]), later).action is Action.ACCEPT
    v = engine.handle(c.data(0, hello[:200]), later)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == "ghcr.io"


def test_a_decoy_with_another_ttl_is_blocked() -> None:
    # A decoy ClientHello naming an allowed registry, sent with a TTL that expires before the
    # server, would otherwise decide the flow "allowed"; the real one (blocked name) would follow.
    c = Conn()
    decoy = raw(c.ip.__class__(src=C4, dst=S4, ttl=2) / TCP(sport=c.sport, dport=443, flags="PA", seq=c.isn + 1,
                                                             ack=5000) / python_client_hello("registry-1.docker.io"))
    syn = raw(IP(src=C4, dst=S4, ttl=64) / TCP(sport=c.sport, dport=443, flags="S", seq=c.isn))
    engine = Engine(policy('allow = ["dockerhub"]\nfail_mode = "open"\n'))
    v = run(engine, [syn, decoy])[-1]
    assert v.action is Action.BLOCK and v.event is not None and v.event.rule == "ttl"


def _quic_initial(version: int) -> bytes:
    # A long-header Initial of another version: netguard cannot read it.
    return bytes((0xC3,)) + version.to_bytes(4, "big") + b"\x08" + bytes(8) + b"\x00" + bytes(1200)


@pytest.mark.parametrize("mode, action", [("closed", Action.DROP), ("open", Action.ACCEPT)])
def test_quic_of_another_version_gets_the_fail_verdict(mode: str, action: Action) -> None:
    # For that datagram (the flow stays undecided): more in test_engine_quic.py.
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    v = engine.handle(raw(IP(src=C4, dst=S4) / UDP(sport=5000, dport=443) / _quic_initial(0xFF00001D)), NOW)
    assert v.action is action and v.event is not None and v.event.source == "none"
    # Not QUIC at all (say, DTLS on 443): nothing to read, nothing decided.
    other = engine.handle(raw(IP(src=C4, dst=S4) / UDP(sport=5001, dport=443) / (b"\x16\xfe\xfd" + bytes(60))), NOW)
    assert other.action is Action.ACCEPT and other.event is None


def test_a_name_seen_before_is_decided_by_the_policy_in_force() -> None:
    # Decisions are cached per (name, port); a reload must not answer from the old policy's.
    engine = Engine(policy('allow = ["dockerhub"]\nblock = ["files.example.com:8443"]\n'))
    hello = python_client_hello("registry-1.docker.io")
    first = run(engine, [Conn(sport=40001).syn(), Conn(sport=40001).data(0, hello)])[-1]
    again = run(engine, [Conn(sport=40002).syn(), Conn(sport=40002).data(0, hello)])[-1]
    assert first.action is again.action is Action.ALLOW
    assert first.event is not None and again.event is not None and first.event.reason == again.event.reason
    # The same name on another port is its own decision.
    files = python_client_hello("files.example.com")
    assert run(engine, [Conn(sport=40003).syn(), Conn(sport=40003).data(0, files)])[-1].action is Action.ALLOW
    on_8443 = Conn(dport=8443, sport=40004)
    assert run(engine, [on_8443.syn(), on_8443.data(0, files)])[-1].action is Action.BLOCK
    engine.reload(policy('allow = ["ghcr"]\n'), NOW)
    after = run(engine, [Conn(sport=40005).syn(), Conn(sport=40005).data(0, hello)])[-1]
    assert after.action is Action.BLOCK and after.event is not None and after.event.rule == "dockerhub is not in allow"


def test_cached_decisions_are_bounded_and_an_evicted_name_is_decided_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_CACHED_DECISIONS", 4)
    engine = Engine(policy())
    names = [f"n{i}.example.org" for i in range(10)] + ["ghcr.io"]
    for i, name in enumerate(names + names[:1]):
        c = Conn(sport=41000 + i)
        v = run(engine, [c.syn(), c.data(0, python_client_hello(name))])[-1]
        assert v.action is (Action.BLOCK if name == "ghcr.io" else Action.ALLOW)
        assert v.event is not None and v.event.host == name
        assert len(engine._decisions) <= 4


@pytest.mark.parametrize("seed", range(3))
def test_checksum_is_the_ones_complement_sum_of_the_words(seed: int) -> None:
    rng = random.Random(seed)
    samples = [b"", b"\x00", b"\xff", b"\xff\xff", b"\xff\xff" * 9, b"\x00\x00" * 5, b"\x00\x01\xff\xfe"]
    samples += [rng.randbytes(rng.randrange(1, 1600)) for _ in range(300)]
    for data in samples:
        padded = data + b"\x00" * (len(data) % 2)
        total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        assert packets.checksum(data) == ~total & 0xFFFF, data
