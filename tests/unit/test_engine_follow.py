"""The engine reading past a flow's first name, fed packets crafted by scapy: every request of a
kept-alive HTTP connection, CONNECT and SOCKS tunnels and their first bytes, address literals in
any form a resolver reads, the second ClientHello after a HelloRetryRequest (the kernel marks the
flow "follow" and the engine gets `followed`), followed flows whose state is gone, and replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, IPv6, raw, wrpcap  # type: ignore[attr-defined]

from netguard.daemon.policyfiles import load_catalog
from netguard.engine import Action, Engine, Verdict, core
from netguard.lab.lab import python_client_hello
from netguard.policy import Policy, parse_policy
from netguard.replay import replay
from netguard.wire import tls

C4, PROXY4, GHCR4, DOCKER4 = "10.0.0.10", "10.0.0.200", "10.0.0.103", "10.0.0.102"
NOW = 1000.0
ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"


def policy(text: str = 'allow = ["dockerhub"]\n') -> Policy:
    return parse_policy(text, "test.toml", load_catalog())


class Conn:
    """One client TCP connection, as packets; `sent` counts the client's bytes so far."""

    def __init__(self, dst: str = PROXY4, dport: int = 3128, sport: int = 40000, src: str = C4) -> None:
        self.ip = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
        self.dport, self.sport, self.isn, self.sent = dport, sport, 1000, 0

    def syn(self) -> bytes:
        return raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags="S", seq=self.isn))

    def send(self, payload: bytes) -> bytes:
        packet = self.at(self.sent, payload)
        self.sent += len(payload)
        return packet

    def at(self, offset: int, payload: bytes, ttl: int | None = None) -> bytes:
        ip = self.ip.copy()
        if ttl is not None:
            if isinstance(ip, IP):
                ip.ttl = ttl
            else:
                ip.hlim = ttl
        return raw(ip / TCP(sport=self.sport, dport=self.dport, flags="PA", seq=self.isn + 1 + offset, ack=5000)
                   / payload)

    def ack(self) -> bytes:
        return raw(self.ip / TCP(sport=self.sport, dport=self.dport, flags="A", seq=self.isn + 1 + self.sent,
                                 ack=6000))


def learn(engine: Engine, name: str, address: str) -> None:
    answer = DNS(id=7, qr=1, rd=1, ra=1, qd=[DNSQR(qname=name)], an=[DNSRR(rrname=name, rdata=address, ttl=300)])
    v = engine.handle(raw(IP(src="10.0.0.53", dst=C4) / UDP(sport=53, dport=5353) / answer), NOW, from_client=False)
    assert v.event is not None


def events_of(verdicts: list[Verdict]) -> list[tuple[str, str | None, str]]:
    return [(v.action.value, v.event.host, v.event.source) for v in verdicts if v.event is not None]


# -- HTTP: every request of a kept-alive connection -------------------------------------------------

def test_the_second_request_to_a_proxy_is_judged() -> None:
    engine = Engine(policy())
    c = Conn()
    first = b"GET http://registry-1.docker.io/v2/ HTTP/1.1\r\nHost: registry-1.docker.io\r\n\r\n"
    assert engine.handle(c.syn(), NOW).action is Action.ACCEPT
    v = engine.handle(c.send(first), NOW)
    assert v.action is Action.FOLLOW and v.event is not None and v.event.host == ALLOWED
    # The kernel now queues the flow's data with the "follow" mark; the client waits for the answer.
    assert engine.handle(c.ack(), NOW, followed=True).action is Action.ACCEPT
    second = b"GET http://ghcr.io/v2/ HTTP/1.1\r\nHost: ghcr.io\r\n\r\n"
    v = engine.handle(c.send(second), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None
    assert (v.event.host, v.event.source, v.event.registry) == (BLOCKED, "http-host", "ghcr")
    assert engine.handle(c.send(b"more"), NOW, followed=True).action is Action.BLOCK  # remembered


def test_bodies_are_skipped_by_their_framing_whatever_the_segments() -> None:
    body = b"GET http://ghcr.io/ HTTP/1.1\r\n\r\n" * 3  # head-shaped bytes inside a body are body
    requests = [
        b"POST http://registry-1.docker.io/v2/x/blobs/uploads/ HTTP/1.1\r\nHost: registry-1.docker.io\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        b"\r\nPUT http://registry-1.docker.io/v2/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n",
        b"GET http://registry-1.docker.io/v2/ HTTP/1.1\r\n\r\n",
    ]
    for size in (1, 7, 100, 5000):
        engine = Engine(policy())
        c = Conn()
        stream = b"".join(requests)
        verdicts = [engine.handle(c.syn(), NOW)]
        for i in range(0, len(stream), size):
            # The kernel queues the flow marked "follow" once a verdict said so.
            followed = any(v.action is Action.FOLLOW for v in verdicts)
            verdicts.append(engine.handle(c.send(stream[i:i + size]), NOW, followed=followed))
        assert all(v.action in (Action.ACCEPT, Action.FOLLOW) for v in verdicts), size
        # One event per verdict (the last name a packet carried): every one allowed, the heads inside
        # the bodies never judged.
        assert {e[1] for e in events_of(verdicts)} == {ALLOWED}, size
        assert engine.undecided == 0 and len(engine._following) == 1
        blocked = engine.handle(c.send(b"GET / HTTP/1.1\r\nHost: ghcr.io\r\n\r\n"), NOW, followed=True)
        assert blocked.action is Action.BLOCK, size


def test_a_followed_flow_is_read_in_a_window() -> None:
    engine = Engine(policy())
    c = Conn()
    head = b"POST http://registry-1.docker.io/v2/ HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n"
    run = [engine.handle(c.syn(), NOW), engine.handle(c.send(head), NOW)]
    assert run[-1].action is Action.FOLLOW
    for _ in range(300):  # 400 KB of body, one segment at a time: nothing kept
        assert engine.handle(c.send(bytes(1400)), NOW, followed=True).action is Action.ACCEPT
    state = engine._following[next(iter(engine._following))]
    assert len(state.stream.prefix) == 0 and state.stream.limit == core.MAX_FOLLOW_WINDOW


def test_a_decoy_segment_on_a_followed_flow_is_blocked_even_fail_open() -> None:
    for text in ('allow = ["dockerhub"]\n', 'allow = ["dockerhub"]\nfail_mode = "open"\n'):
        engine = Engine(policy(text))
        c = Conn()
        engine.handle(c.syn(), NOW)
        engine.handle(c.send(b"GET http://registry-1.docker.io/ HTTP/1.1\r\n\r\n"), NOW)
        v = engine.handle(c.at(c.sent, b"GET http://registry-1.docker.io/ HTTP/1.1\r\n\r\n", ttl=3), NOW,
                          followed=True)
        assert v.action is Action.BLOCK and v.event is not None and v.event.rule == "ttl"


def test_a_followed_flow_without_state_reads_from_a_request_or_fails() -> None:
    # netguard restarted (or forgot the flow): the kernel still queues it marked "follow".
    c = Conn()
    engine = Engine(policy())
    v = engine.handle(c.at(5000, b"GET http://ghcr.io/v2/ HTTP/1.1\r\n\r\n"), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == BLOCKED
    engine = Engine(policy())
    v = engine.handle(c.at(5000, b"GET http://registry-1.docker.io/ HTTP/1.1\r\n\r\n"), NOW, followed=True)
    assert v.action is Action.FOLLOW
    engine = Engine(policy())
    v = engine.handle(c.at(5000, b"\x00\x17some body bytes in the middle of a request"), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and v.event.source == "none"


def test_followed_flows_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_FOLLOWED", 2)
    engine = Engine(policy())
    conns = [Conn(sport=41000 + i) for i in range(3)]
    for c in conns:
        engine.handle(c.syn(), NOW)
        head = b"POST http://registry-1.docker.io/ HTTP/1.1\r\nContent-Length: 100\r\n\r\n"
        assert engine.handle(c.send(head), NOW).action is Action.FOLLOW
    assert len(engine._following) == 2 and engine.stats.by_limit["followed"] == 1
    # The oldest flow's state went: its next bytes are mid-body, so its next packet gets the fail verdict.
    v = engine.handle(conns[0].send(b"\x00body"), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and v.event.source == "none"
    assert engine.handle(conns[2].send(b"\x00body"), NOW, followed=True).action is Action.ACCEPT


# -- tunnels: CONNECT and SOCKS, and what they carry -------------------------------------------------

CONNECT_OK = b"CONNECT registry-1.docker.io:443 HTTP/1.1\r\nHost: registry-1.docker.io:443\r\n\r\n"


def test_connect_keeps_the_flow_undecided_until_the_tunnel_speaks() -> None:
    engine = Engine(policy())
    c = Conn()
    verdicts = [engine.handle(c.syn(), NOW), engine.handle(c.send(CONNECT_OK), NOW),
                engine.handle(c.ack(), NOW), engine.handle(c.ack(), NOW), engine.handle(c.ack(), NOW),
                engine.handle(c.ack(), NOW)]
    assert [v.action for v in verdicts] == [Action.ACCEPT] * 6  # the proxy's 200, the client waits
    assert engine.undecided == 1
    v = engine.handle(c.send(python_client_hello(ALLOWED)), NOW)
    assert v.action is Action.ALLOW and v.event is not None and v.event.source == "tunnel-sni"
    # An allowed CONNECT target, then the blocked name inside: a proxy goes wherever it is told.
    engine = Engine(policy())
    c = Conn()
    run = [engine.handle(c.syn(), NOW), engine.handle(c.send(CONNECT_OK + python_client_hello(BLOCKED)), NOW)]
    assert run[-1].action is Action.BLOCK and run[-1].event is not None
    assert (run[-1].event.host, run[-1].event.source) == (BLOCKED, "tunnel-sni")


@pytest.mark.parametrize("negotiation, source", [
    (b"\x05\x01\x00" + b"\x05\x01\x00\x03\x07ghcr.io\x01\xbb", "socks5"),
    (b"\x05\x02\x00\x02" + b"\x01\x04user\x04pass" + b"\x05\x01\x00\x03\x07ghcr.io\x01\xbb", "socks5"),
    (b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00ghcr.io\x00", "socks4"),
])
def test_socks_targets_are_judged_like_connect_targets(negotiation: bytes, source: str) -> None:
    engine = Engine(policy())
    c = Conn(dport=1080)
    verdicts = [engine.handle(c.syn(), NOW)]
    # As a SOCKS5 client sends it: method list, wait, authentication, wait, request.
    for piece in (negotiation[:3], negotiation[3:-4], negotiation[-4:]):
        verdicts.append(engine.handle(c.send(piece), NOW))
        verdicts.append(engine.handle(c.ack(), NOW))
    blocked = [v for v in verdicts if v.action is Action.BLOCK]
    assert blocked and blocked[0].event is not None and (blocked[0].event.host, blocked[0].event.source) == (
        BLOCKED, source)


@pytest.mark.parametrize("literal", ["10.0.0.103", "10.0.103", "10.103", "167772263", "0xa000067", "012.0.0.0147",
                                     "[::ffff:10.0.0.103]", "[::ffff:a00:67]"])
def test_address_literals_name_the_address(literal: str) -> None:
    bare = literal.strip("[]")
    for data, port in (
        (f"CONNECT {literal}:443 HTTP/1.1\r\n\r\n".encode(), 3128),
        (f"GET http://{literal}/v2/ HTTP/1.1\r\n\r\n".encode(), 3128),
        (f"GET /v2/ HTTP/1.1\r\nHost: {literal}\r\n\r\n".encode(), 3128),
        (b"\x05\x01\x00\x05\x01\x00\x03" + bytes((len(bare),)) + bare.encode() + b"\x01\xbb", 1080),
        (b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00" + bare.encode() + b"\x00", 1080),
    ):
        engine = Engine(policy())
        learn(engine, BLOCKED, GHCR4)
        c = Conn(dport=port)
        v = [engine.handle(c.syn(), NOW), engine.handle(c.send(data), NOW)][-1]
        assert v.action is Action.BLOCK and v.event is not None, data
        assert (v.event.host, v.event.source) == (BLOCKED, "dns-table"), data


def test_a_socks_target_address_without_a_name_is_unknown_and_its_tunnel_is_read() -> None:
    engine = Engine(policy())
    c = Conn(dport=1080)
    data = b"\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x67\x01\xbb"  # an address DNS never named
    run = [engine.handle(c.syn(), NOW), engine.handle(c.send(data), NOW)]
    assert run[-1].action is Action.ACCEPT and run[-1].event is not None and run[-1].event.allowed
    v = engine.handle(c.send(python_client_hello(BLOCKED)), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.source == "tunnel-sni"


def test_udp_associate_and_gss_api_get_the_fail_verdict() -> None:
    for data in (b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", b"\x05\x01\x01\x01\x01\x00\x10"):
        for mode, action in (("closed", Action.BLOCK), ("open", Action.ALLOW)):
            engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
            c = Conn(dport=1080)
            v = [engine.handle(c.syn(), NOW), engine.handle(c.send(data), NOW)][-1]
            assert v.action is action and v.event is not None and v.event.source == "none"


def test_reload_cuts_a_tunnel_whose_target_became_blocked() -> None:
    engine = Engine(policy())
    c = Conn()
    run = [engine.handle(c.syn(), NOW), engine.handle(c.send(CONNECT_OK + python_client_hello("www.example.org")),
                                                       NOW)]
    assert run[-1].action is Action.ALLOW
    cut = engine.reload(policy("allow = []\n"), NOW + 1)
    assert [e.host for e in cut] == [ALLOWED]


# -- TLS: the second ClientHello after a HelloRetryRequest -------------------------------------------

CCS = b"\x14\x03\x03\x00\x01\x01"


def allowed_tls(engine: Engine) -> Conn:
    c = Conn(dst=GHCR4, dport=443)
    run = [engine.handle(c.syn(), NOW), engine.handle(c.send(python_client_hello(ALLOWED)), NOW)]
    assert run[-1].action is Action.ALLOW
    return c


def test_a_second_hello_naming_a_blocked_registry_is_blocked() -> None:
    engine = Engine(policy())
    c = allowed_tls(engine)
    assert engine.handle(c.ack(), NOW).action is Action.ALLOW  # unchanged without the kernel's word
    v = engine.handle(c.send(CCS + python_client_hello(BLOCKED)), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and (v.event.host, v.event.source) == (BLOCKED, "sni")


def test_a_second_hello_in_pieces_and_allowed() -> None:
    engine = Engine(policy())
    c = allowed_tls(engine)
    second = CCS + python_client_hello(ALLOWED)
    verdicts = [engine.handle(c.send(second[i:i + 50]), NOW, followed=True) for i in range(0, len(second), 50)]
    assert [v.action for v in verdicts[:-1]] == [Action.ACCEPT] * (len(verdicts) - 1)
    assert verdicts[-1].action is Action.ALLOW and verdicts[-1].event is not None
    # Decided again: a later re-open (the kernel rule matching once more) just keeps it allowed.
    assert engine.handle(c.send(b"\x17\x03\x03\x00\x01\x00"), NOW, followed=True).action is Action.ALLOW


def test_bytes_sent_before_the_kernel_followed_the_flow_are_the_fail_verdict() -> None:
    # A client that sends its second hello before the HRR arrives: it leaves unqueued; what comes
    # after it cannot show what the server read.
    engine = Engine(policy())
    c = allowed_tls(engine)
    c.sent += len(CCS + python_client_hello(BLOCKED))
    v = engine.handle(c.send(b"\x17\x03\x03\x00\x10" + bytes(16)), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and "unread" in v.event.reason


def test_replay_reads_the_second_hello_after_a_hello_retry_request(tmp_path: Path) -> None:
    c = Conn(dst=GHCR4, dport=443)
    server = IP(src=GHCR4, dst=C4)
    hrr = b"\x16\x03\x03\x00\x58\x02\x00\x00\x54\x03\x03" + tls.HRR_RANDOM + bytes(52)
    assert tls.is_hello_retry_request(hrr)
    packets = [
        IP(c.syn()),
        server / TCP(sport=443, dport=40000, flags="SA", seq=4999, ack=1001),  # the client acknowledges 5000
        IP(c.send(python_client_hello(ALLOWED))),
        server / TCP(sport=443, dport=40000, flags="PA", seq=5000, ack=1001 + c.sent) / hrr,
        IP(c.send(CCS + python_client_hello(BLOCKED))),
    ]
    wrpcap(str(tmp_path / "hrr.pcap"), packets)
    [line] = replay(tmp_path / "hrr.pcap", policy())
    assert line.event is not None and (line.event.host, line.event.allowed) == (BLOCKED, False)
    wrpcap(str(tmp_path / "plain.pcap"), packets[:3] + packets[4:])  # no HRR: the kernel never re-opens
    [line] = replay(tmp_path / "plain.pcap", policy())
    assert line.event is not None and (line.event.host, line.event.allowed) == (ALLOWED, True)


def test_segments_larger_than_the_queue_copies_inside_a_body() -> None:
    # On loopback (MTU 64 KiB) a segment can be larger than what NFQUEUE copies (about 4 KB): its IP
    # length says so. Inside a body being skipped the rest need not be seen; where a request may
    # begin it must be, so that is the fail verdict.
    copy = 3900
    engine = Engine(policy())
    c = Conn(dst="127.0.0.1", src="127.0.0.1")
    body = bytes(30000)
    head = b"POST http://registry-1.docker.io/ HTTP/1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    engine.handle(c.syn(), NOW)
    assert engine.handle(c.send(head), NOW).action is Action.FOLLOW
    for i in range(0, len(body), 10000):
        assert engine.handle(c.send(body[i:i + 10000])[:copy], NOW, followed=True).action is Action.ACCEPT
    v = engine.handle(c.send(b"GET http://ghcr.io/ HTTP/1.1\r\n\r\n"), NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == BLOCKED
    engine = Engine(policy())
    c = Conn(dst="127.0.0.1", src="127.0.0.1", sport=40001)
    engine.handle(c.syn(), NOW)
    engine.handle(c.send(head), NOW)
    assert engine.handle(c.send(body[:-2000]), NOW, followed=True).action is Action.ACCEPT
    # The body ends 2000 bytes into a 9000-byte segment; a request head begins there and runs past
    # what was copied.
    big = body[-2000:] + b"GET http://registry-1.docker.io/ HTTP/1.1\r\nX-Pad: " + b"a" * 7000
    v = engine.handle(c.send(big)[:copy], NOW, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and "not copied" in v.event.reason


def test_an_unknown_address_literal_to_a_learned_blocked_destination() -> None:
    # Straight to ghcr.io's address (learned from DNS), naming an address DNS never gave in Host:
    # the destination decides, as for an unknown name.
    engine = Engine(policy())
    learn(engine, BLOCKED, GHCR4)
    c = Conn(dst=GHCR4, dport=80)
    v = [engine.handle(c.syn(), NOW), engine.handle(c.send(b"GET / HTTP/1.1\r\nHost: 0x7f000001\r\n\r\n"), NOW)][-1]
    assert v.action is Action.BLOCK and v.event is not None and (v.event.host, v.event.source) == (BLOCKED, "dns-table")
