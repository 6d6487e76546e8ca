"""The engine on DNS and learned addresses, fed packets crafted by scapy (the independent oracle):
SVCB/HTTPS records followed like CNAMEs (targets judged, hints learned, in the answer and the
additional section), address conflicts (a name that is unknown or allowed, to an address DNS gave
only for a blocked host) for every kind of blocked host, the shared-CDN case where the name
decides, floods of names against blocked evidence, and DNS answers from ports other than 53."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, IPv6, raw  # type: ignore[attr-defined]
from scapy.layers.dns import DNSRRHTTPS, DNSRROPT, DNSRRSVCB, SvcParam

from netguard.daemon.policyfiles import load_catalog
from netguard.engine import Action, Engine, Verdict
from netguard.engine.names import MAX_CHAIN_NAMES, MAX_NAMES_PER_ADDRESS
from netguard.lab.lab import python_client_hello
from netguard.policy import Policy, parse_policy
from netguard.wire import dns

C4, C6 = "10.0.0.10", "fd00::10"
GHCR4, GHCR6, HUB4, SHADOW4, OTHER4 = "10.0.0.103", "fd00::103", "10.0.0.102", "10.0.0.120", "10.0.0.130"
NOW = 1000.0
GHCR, HUB = "ghcr.io", "registry-1.docker.io"


def policy(extra: str = "", block: str = "registry.shadow.example") -> Policy:
    return parse_policy(f'allow = ["dockerhub"]\nblock = ["{block}"]\n' + extra, "test.toml", load_catalog())


def answer(qname: str, records: list[Any], qtype: str = "A", extra: list[Any] | None = None) -> bytes:
    return raw(DNS(id=7, qr=1, rd=1, ra=1, qd=[DNSQR(qname=qname, qtype=qtype)], an=records,
                   ar=[*(extra or []), DNSRROPT(rclass=1232)]))


def a(owner: str, address: str, ttl: int = 300) -> Any:
    return DNSRR(rrname=owner, type="AAAA" if ":" in address else "A", rdata=address, ttl=ttl)


def cname(owner: str, target: str) -> Any:
    return DNSRR(rrname=owner, type="CNAME", rdata=target, ttl=300)


def https(owner: str, target: str, priority: int = 1, v4: list[str] | None = None, v6: list[str] | None = None,
          svcb: bool = False) -> Any:
    params = [SvcParam(key=1, value=[b"h2"])]
    if v4:
        params.append(SvcParam(key=4, value=v4))
    if v6:
        params.append(SvcParam(key=6, value=v6))
    cls = DNSRRSVCB if svcb else DNSRRHTTPS
    return cls(rrname=owner, ttl=300, svc_priority=priority, target_name=target, svc_params=params)


def udp(payload: bytes, sport: int = 53, v6: bool = False) -> bytes:
    ip = IPv6(src="fd00::53", dst=C6) if v6 else IP(src="10.0.0.53", dst=C4)
    return raw(ip / UDP(sport=sport, dport=33333) / payload)


def reply_of(v: Verdict) -> dns.DnsMessage:
    assert v.action is Action.REWRITE and v.payload is not None
    packet = IPv6(v.payload) if v.payload[0] >> 4 == 6 else IP(v.payload)
    return dns.parse_message(bytes(packet[UDP].payload))


class Conn:
    """One client TCP connection, as packets."""

    seq = 0

    def __init__(self, dst: str, dport: int = 443) -> None:
        Conn.seq += 1
        self.ip = IPv6(src=C6, dst=dst) if ":" in dst else IP(src=C4, dst=dst)
        self.dport, self.sport = dport, 40000 + Conn.seq

    def packets(self, payload: bytes) -> list[bytes]:
        return [raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags="S", seq=1000)),
                raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags="PA", seq=1001, ack=1) / payload)]


def connect(engine: Engine, dst: str, sni: str | None, now: float = NOW, dport: int = 443) -> Verdict:
    hello = python_client_hello(sni) if sni is not None else b"\x00\x01binary protocol"
    return [engine.handle(p, now) for p in Conn(dst, dport).packets(hello)][-1]


def blocked(v: Verdict, host: str = GHCR, conflict: bool = True) -> bool:
    e = v.event
    return (v.action is Action.BLOCK and e is not None and e.host == host and e.source == "dns-table"
            and ("address conflict" in e.reason) == conflict)


def allowed(v: Verdict) -> bool:
    return v.action is Action.ALLOW and v.event is not None and v.event.allowed


# --- SVCB / HTTPS ------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [0, 1], ids=["alias-mode", "service-mode"])
@pytest.mark.parametrize("svcb", [False, True], ids=["HTTPS", "SVCB"])
def test_an_svcb_target_is_judged_like_a_cname_and_its_hints_learned(priority: int, svcb: bool) -> None:
    engine = Engine(policy())
    msg = answer("www.unknown.test", [https("www.unknown.test", GHCR, priority, [GHCR4], [GHCR6], svcb)], "HTTPS")
    v = engine.handle(udp(msg), NOW)
    reply = reply_of(v)
    assert reply.rcode == dns.RCODE_NXDOMAIN and not reply.answers
    assert v.event is not None and v.event.host == GHCR and v.event.names == ("www.unknown.test", GHCR)
    # The hints were learned for every name of the chain: an IP literal to either is blocked by them.
    assert blocked(connect(engine, GHCR4, None), conflict=False)
    assert blocked(connect(engine, GHCR6, None), conflict=False)


def test_an_svcb_target_of_root_means_the_owner() -> None:
    engine = Engine(policy())
    v = engine.handle(udp(answer(GHCR, [https(GHCR, ".", 1, [GHCR4])], "HTTPS")), NOW)
    assert reply_of(v).rcode == dns.RCODE_NXDOMAIN and v.event is not None and v.event.names == (GHCR,)
    assert blocked(connect(engine, GHCR4, "www.unknown.test"))
    # An allowed owner with "." teaches its hints as its own.
    ok = engine.handle(udp(answer(HUB, [https(HUB, ".", 1, [HUB4])], "HTTPS")), NOW)
    assert ok.action is Action.ACCEPT and engine.names.names(bytes([10, 0, 0, 102]), NOW) == [HUB]


def test_svcb_hints_without_dns_block_still_stop_a_connection_named_otherwise() -> None:
    engine = Engine(policy("dns_block = false\n"))
    msg = answer("_8443._https.cdn.unknown.test", [https("_8443._https.cdn.unknown.test", GHCR, 1, [GHCR4])],
                 "HTTPS")
    v = engine.handle(udp(msg), NOW)
    # dns_block off: the answer passes (its event says which name would have blocked it).
    assert v.action is Action.ACCEPT and v.event is not None and v.event.host == GHCR
    assert v.event.names == ("cdn.unknown.test", GHCR)
    # The client connects to the hint with the origin name in its SNI (RFC 9460 ServiceMode).
    assert blocked(connect(engine, GHCR4, "cdn.unknown.test", dport=8443))


def test_additional_records_of_the_chain_are_followed_and_others_ignored() -> None:
    engine = Engine(policy("dns_block = false\n"))
    msg = answer("www.unknown.test", [https("www.unknown.test", "svc.unknown.test", 0)], "HTTPS",
                 extra=[https("svc.unknown.test", GHCR, 1), a(GHCR, GHCR4), a("unrelated.test", OTHER4)])
    v = engine.handle(udp(msg), NOW)
    assert v.action is Action.ACCEPT and v.event is not None and v.event.host == GHCR
    assert v.event.names == ("www.unknown.test", "svc.unknown.test", GHCR)
    assert engine.names.names(bytes([10, 0, 0, 103]), NOW) == ["www.unknown.test", "svc.unknown.test", GHCR]
    assert engine.names.names(bytes([10, 0, 0, 130]), NOW) == []  # not the answer's


def test_a_port_prefixed_owner_is_judged_as_its_host() -> None:
    engine = Engine(policy())
    v = engine.handle(udp(answer("_443._https.ghcr.io", [https("_443._https.ghcr.io", ".", 1, [GHCR4])], "HTTPS")),
                      NOW)
    assert reply_of(v).rcode == dns.RCODE_NXDOMAIN


# --- address conflicts ---------------------------------------------------------------------


def learn(engine: Engine, qname: str, records: list[Any], qtype: str = "A") -> Verdict:
    return engine.handle(udp(answer(qname, records, qtype), v6=qtype == "AAAA"), NOW)


@pytest.mark.parametrize("sni", ["www.unknown.test", HUB], ids=["unknown-name", "allowed-catalog-name"])
@pytest.mark.parametrize("family", [4, 6])
def test_a_name_to_an_address_dns_gave_only_for_a_blocked_registry_is_blocked(sni: str, family: int) -> None:
    engine = Engine(policy())
    address = GHCR4 if family == 4 else GHCR6
    learn(engine, GHCR, [a(GHCR, address)], "A" if family == 4 else "AAAA")  # rewritten, but learned
    v = connect(engine, address, sni)
    assert blocked(v) and v.event is not None
    assert v.event.registry == "ghcr" and sni in v.event.reason and address in v.event.reason
    # The same name to its own address passes.
    learn(engine, sni, [a(sni, OTHER4)])
    assert allowed(connect(engine, OTHER4, sni))


def test_a_policy_block_entry_is_evidence_too() -> None:
    engine = Engine(policy())
    learn(engine, "registry.shadow.example", [a("registry.shadow.example", SHADOW4)])
    v = connect(engine, SHADOW4, HUB)
    assert blocked(v, "registry.shadow.example") and v.event is not None and v.event.registry is None
    assert "registry.shadow.example" in v.event.reason


def test_with_unknown_hosts_denied_an_unknown_name_is_evidence_too() -> None:
    engine = Engine(policy('unknown_hosts = "deny"\n'))
    learn(engine, "evil-registry.example", [a("evil-registry.example", OTHER4)])
    assert blocked(connect(engine, OTHER4, HUB), "evil-registry.example")


def test_a_shared_address_lets_the_name_decide() -> None:
    engine = Engine(policy())
    learn(engine, GHCR, [a(GHCR, GHCR4)])
    learn(engine, HUB, [a(HUB, GHCR4)])  # a shared CDN: the allowed name resolves there too
    assert allowed(connect(engine, GHCR4, HUB))
    assert blocked(connect(engine, GHCR4, "www.unknown.test"))  # never given this address
    assert blocked(connect(engine, GHCR4, None), conflict=False)  # no name: the blocked one wins
    assert connect(engine, GHCR4, GHCR).action is Action.BLOCK


def test_an_alias_whose_chain_holds_a_blocked_name_does_not_count_as_sharing() -> None:
    engine = Engine(policy("dns_block = false\n"))
    learn(engine, "dl.unknown.test", [cname("dl.unknown.test", GHCR), a(GHCR, GHCR4)])
    assert blocked(connect(engine, GHCR4, "dl.unknown.test"))
    # A direct answer for the same name to the same address is sharing (the name decides).
    learn(engine, "dl.unknown.test", [a("dl.unknown.test", GHCR4)])
    assert allowed(connect(engine, GHCR4, "dl.unknown.test"))


def test_plain_http_host_is_judged_the_same_way() -> None:
    engine = Engine(policy())
    learn(engine, GHCR, [a(GHCR, GHCR4)])
    v = [engine.handle(p, NOW) for p in Conn(GHCR4, 80).packets(b"GET /v2/ HTTP/1.1\r\nHost: " + HUB.encode()
                                                               + b"\r\n\r\n")][-1]
    assert blocked(v) and v.event is not None and "(http-host)" in v.event.reason


def test_a_reload_that_blocks_a_learned_name_cuts_the_flows_named_otherwise() -> None:
    engine = Engine(policy())
    learn(engine, "dl.unknown.test", [cname("dl.unknown.test", "cdn.unknown.test"), a("cdn.unknown.test", OTHER4)])
    assert allowed(connect(engine, OTHER4, "dl.unknown.test"))
    cut = engine.reload(policy(block="cdn.unknown.test"), NOW + 1)
    assert [e.host for e in cut] == ["cdn.unknown.test"] and "address conflict" in cut[0].reason
    assert blocked(connect(engine, OTHER4, "dl.unknown.test", NOW + 2), "cdn.unknown.test")


# --- floods against blocked evidence -------------------------------------------------------


def test_a_wildcard_flood_for_the_blocked_address_does_not_wash_out_the_evidence() -> None:
    engine = Engine(policy())
    learn(engine, GHCR, [a(GHCR, GHCR4, ttl=60)])
    for i in range(4 * MAX_NAMES_PER_ADDRESS):
        name = f"x{i}.wild.unknown.test"
        engine.handle(udp(answer(name, [a(name, GHCR4, ttl=86400)])), NOW + 1)
    assert blocked(connect(engine, GHCR4, None, NOW + 2), conflict=False)
    assert blocked(connect(engine, GHCR4, "x1.wild.unknown.test", NOW + 2))  # pushed out itself
    # The evidence ends with its TTL (MIN_TTL), not before.
    assert allowed(connect(engine, GHCR4, None, NOW + 61))


def test_a_flood_of_unrelated_names_filling_the_table_does_not_wash_out_the_evidence() -> None:
    engine = Engine(policy())
    engine.names.max_entries = 500
    learn(engine, GHCR, [a(GHCR, GHCR4)])
    for i in range(2000):
        name = f"n{i}.flood.unknown.test"
        v = engine.handle(udp(answer(name, [a(name, f"11.0.{i // 256}.{i % 256}", ttl=86400)])), NOW + 1)
        assert v.action is Action.ACCEPT  # learned: the entry expiring first gave way
    assert len(engine.names) == 501 and engine.names.protected == 1
    assert blocked(connect(engine, GHCR4, HUB, NOW + 2))


@pytest.mark.parametrize("mode, action", [("closed", Action.REWRITE), ("open", Action.ACCEPT)])
def test_a_full_protected_part_gives_the_fail_verdict(mode: str, action: Action) -> None:
    engine = Engine(policy(f'dns_block = false\nfail_mode = "{mode}"\n'))
    engine.names.max_protected = 1
    assert learn(engine, GHCR, [a(GHCR, GHCR4)]).action is Action.ACCEPT
    v = learn(engine, "quay.io", [a("quay.io", OTHER4)])
    assert v.action is action and engine.stats.by_limit == {"names": 1}
    if mode == "closed":
        assert reply_of(v).rcode == dns.RCODE_NXDOMAIN
    assert blocked(connect(engine, GHCR4, HUB))  # the evidence already held stays


def test_an_answer_with_too_many_names_gives_the_fail_verdict() -> None:
    engine = Engine(policy())
    names = [f"n{i}.unknown.test" for i in range(MAX_CHAIN_NAMES + 1)]
    records = [cname(n, t) for n, t in itertools.pairwise(names)] + [a(names[-1], OTHER4)]
    v = learn(engine, names[0], records)
    assert reply_of(v).rcode == dns.RCODE_NXDOMAIN and v.event is not None
    assert f"more than {MAX_CHAIN_NAMES} names" in v.event.reason
    ok = learn(engine, names[1], records[1:])
    assert ok.action is Action.ACCEPT and len(engine.names) == MAX_CHAIN_NAMES


# --- DNS answers from other ports ----------------------------------------------------------


@pytest.mark.parametrize("from_client", [False, None], ids=["input", "forward"])
def test_a_dns_answer_from_another_port_is_judged_and_learned(from_client: bool | None) -> None:
    engine = Engine(policy())
    v = engine.handle(udp(answer(GHCR, [a(GHCR, GHCR4)]), sport=5353), NOW, from_client=from_client)
    assert reply_of(v).rcode == dns.RCODE_NXDOMAIN
    assert blocked(connect(engine, GHCR4, HUB))


def test_unreadable_dns_shaped_reply_from_another_port_gets_the_fail_verdict() -> None:
    engine = Engine(policy())
    bad = answer(GHCR, [a(GHCR, GHCR4)])[:-20]
    assert dns.looks_like_response(bad)
    v = engine.handle(udp(bad, sport=5353), NOW, from_client=False)
    assert v.action is Action.DROP and v.event is not None and "unreadable DNS answer" in v.event.reason


def test_at_forward_a_quic_initial_is_not_taken_for_a_dns_answer() -> None:
    # A QUIC long header has version bytes where a DNS response has QR and QDCOUNT.
    engine = Engine(policy())
    initial = bytes([0xC3, 0, 0, 0, 1, 8]) + bytes(8) + bytes([0]) + bytes(1200)
    assert not dns.looks_like_response(initial)
    raw_packet = raw(IP(src=C4, dst=GHCR4) / UDP(sport=44444, dport=443) / initial)
    v = engine.handle(raw_packet, NOW, from_client=None)
    # Read as the client's flow (whatever the QUIC reader makes of it), not as an answer.
    assert v.action is not Action.REWRITE
    assert v.event is None or (v.event.source != "dns-answer" and "unreadable DNS answer" not in v.event.reason)


def tcp_answer(payload: bytes, sport: int = 5353, seq: int = 77) -> bytes:
    return raw(IP(src="10.0.0.53", dst=C4) / TCP(sport=sport, dport=40000, flags="PA", seq=seq, ack=1) / payload)


@pytest.mark.parametrize("from_client", [False, None], ids=["input", "forward"])
def test_a_dns_over_tcp_answer_from_another_port_is_rewritten_in_place(from_client: bool | None) -> None:
    engine = Engine(policy())
    framed = dns.frame_tcp(answer(GHCR, [a(GHCR, GHCR4)]))
    v = engine.handle(tcp_answer(framed), NOW, from_client=from_client)
    assert v.action is Action.REWRITE and v.payload is not None
    payload = bytes(IP(v.payload)[TCP].payload)
    assert len(payload) == len(framed)
    [reply], rest = dns.split_tcp_messages(payload)
    assert rest == b"" and dns.parse_message(reply).rcode == dns.RCODE_NXDOMAIN
    assert blocked(connect(engine, GHCR4, HUB))


@pytest.mark.parametrize("mode, action", [("closed", Action.DROP), ("open", Action.ACCEPT)])
def test_a_dns_over_tcp_answer_from_another_port_split_across_segments_gets_the_fail_verdict(
        mode: str, action: Action) -> None:
    # Only segments that begin with a response header are queued there: the rest would pass unread.
    engine = Engine(policy(f'fail_mode = "{mode}"\n'))
    framed = dns.frame_tcp(answer("www.unknown.test", [cname("www.unknown.test", GHCR), a(GHCR, GHCR4)]))
    v = engine.handle(tcp_answer(framed[:30]), NOW, from_client=False)
    assert v.action is action and v.event is not None and "split across segments" in v.event.reason


# --- NAT64 (RFC 6052 well-known prefix) ----------------------------------------------------------


def test_a_connection_through_nat64_is_judged_by_what_dns_taught_for_the_ipv4_address() -> None:
    engine = Engine(policy())
    engine.handle(udp(answer(GHCR, [a(GHCR, "203.0.113.7")])), NOW)
    # No name in the bytes: judged by address, the IPv4 one inside 64:ff9b::/96.
    assert blocked(connect(engine, "64:ff9b::cb00:7107", None), conflict=False)
    # An allowed name to it is an address conflict, as it is over IPv4.
    assert blocked(connect(engine, "64:ff9b::203.0.113.7", HUB))
    # Outside the well-known prefix the same low 32 bits are another address.
    assert connect(engine, "64:ff9c::cb00:7107", None).event is not None
    assert not blocked(connect(engine, "64:ff9c::cb00:7107", None), conflict=False)


def test_a_dns64_answer_teaches_the_ipv4_address_too() -> None:
    engine = Engine(policy())
    # A DNS64 resolver synthesises the AAAA from ghcr.io's A record.
    engine.handle(udp(answer(GHCR, [a(GHCR, "64:ff9b::203.0.113.8")], "AAAA"), v6=True), NOW)
    assert blocked(connect(engine, "64:ff9b::203.0.113.8", None), conflict=False)
    assert blocked(connect(engine, "203.0.113.8", None), conflict=False)
