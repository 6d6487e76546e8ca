"""The engine on QUIC: every Initial of a datagram on any UDP port, v1 and v2, datagrams held until
their connection is judged, each new connection on an allowed 5-tuple judged, conflicting CRYPTO
bytes blocked, versions netguard cannot read, the byte budget and the other limits. Packets are
built with scapy (IP/UDP) around Initials protected by the test helper (and by aioquic's client)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scapy.all import IP, UDP, IPv6, raw  # type: ignore[attr-defined]

from netguard.daemon.policyfiles import load_catalog
from netguard.engine import Action, Engine, Verdict, classify, core
from netguard.lab.lab import python_client_hello
from netguard.policy import Policy, parse_policy
from netguard.wire import quic

sys.path.insert(0, str(Path(__file__).resolve().parent / "wire"))
from wirecorpus import (
    chromium_like_hello,
    client_hello,
    crypto_frame,
    extension,
    protect_initial,
    sni_extension,
)

C4, S4 = "10.0.0.10", "10.0.0.102"
NOW = 1000.0
ALLOWED, BLOCKED = "registry-1.docker.io", "ghcr.io"


def policy(text: str = 'allow = ["dockerhub"]\n') -> Policy:
    return parse_policy(text, "test.toml", load_catalog())


def hello(name: str) -> bytes:
    return python_client_hello(name)[5:]  # the handshake message, without its TLS record header


def udp(payload: bytes, dport: int = 443, sport: int = 50000, six: bool = False) -> bytes:
    ip = IPv6(src="fd00::10", dst="fd00::102") if six else IP(src=C4, dst=S4)
    return bytes(raw(ip / UDP(sport=sport, dport=dport) / payload))


def initial(dcid: bytes, frames: bytes, **kw: object) -> bytes:
    return protect_initial(dcid, frames, **kw)  # type: ignore[arg-type]


def split(dcid: bytes, message: bytes, at: int, **kw: object) -> tuple[bytes, bytes]:
    """A ClientHello in two Initial datagrams: bytes [0, at) and [at, end)."""
    return (initial(dcid, crypto_frame(0, message[:at]), pn=0, **kw),
            initial(dcid, crypto_frame(at, message[at:]), pn=1, **kw))


@pytest.mark.parametrize("version", [quic.VERSION_1, quic.VERSION_2])
@pytest.mark.parametrize("dport", [443, 4433, 8443, 53])
def test_one_initial_on_any_port(version: int, dport: int) -> None:
    engine = Engine(policy())
    for sport, name, action in ((50001, ALLOWED, Action.ALLOW), (50002, BLOCKED, Action.BLOCK)):
        v = engine.handle(udp(initial(bytes(8), crypto_frame(0, hello(name)), version=version), dport, sport), NOW)
        assert v.action is action and v.event is not None and v.event.host == name
        assert v.event.source == "quic-sni" and v.event.key.dport == dport


def test_aioquic_client_datagrams() -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    engine = Engine(policy())
    for sport, (name, version, big) in enumerate([(BLOCKED, quic.VERSION_1, False), (BLOCKED, quic.VERSION_2, True),
                                                  (ALLOWED, quic.VERSION_2, True)], start=40000):
        config = QuicConfiguration(is_client=True, server_name=name, original_version=version,
                                   quantum_readiness_test=big)
        conn = QuicConnection(configuration=config)
        conn.connect((S4, 443), now=0.0)
        verdicts = [engine.handle(udp(d, sport=sport), NOW) for d, _ in conn.datagrams_to_send(now=0.0)]
        if big:  # a ClientHello over two datagrams: the first is held until the second decides
            first, last = verdicts
            assert first.action is Action.HOLD and first.token is not None
            settle = Action.ALLOW if name == ALLOWED else Action.DROP
            assert last.held == ((first.token, settle),)
        assert verdicts[-1].action is (Action.ALLOW if name == ALLOWED else Action.BLOCK)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("name", "action", "settle"), [(ALLOWED, Action.ALLOW, Action.ALLOW),
                                                         (BLOCKED, Action.BLOCK, Action.DROP)])
def test_a_split_hello_is_held_until_judged(reverse: bool, name: str, action: Action, settle: Action) -> None:
    engine = Engine(policy())
    datagrams = split(b"D" * 8, hello(name), 100)
    first, second = (engine.handle(udp(d), NOW) for d in (datagrams[::-1] if reverse else datagrams))
    assert first.action is Action.HOLD and first.token is not None and first.event is None
    assert second.action is action and second.held == ((first.token, settle),)


def test_frames_an_initial_may_hold() -> None:
    # PADDING, PING, ACK (with ranges), ACK_ECN, several CRYPTO frames out of order in one packet.
    message = hello(BLOCKED)
    ack = b"\x02\x05\x00\x01\x00\x01\x01"
    ack_ecn = b"\x03\x05\x00\x00\x00\x01\x02\x03"
    frames = (b"\x00\x00\x01" + ack + crypto_frame(50, message[50:120]) + b"\x01" + ack_ecn
              + crypto_frame(120, message[120:]) + b"\x00" * 5 + crypto_frame(0, message[:50]))
    v = Engine(policy()).handle(udp(initial(bytes(8), frames)), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == BLOCKED


def test_every_coalesced_initial_is_read() -> None:
    # An allowed name first, then a second connection (another DCID) to a blocked one, after a
    # 0-RTT and a Handshake packet; the datagram is padded with zeros after the last packet.
    zero_rtt = b"\xd3" + (1).to_bytes(4, "big") + b"\x08" + b"A" * 8 + b"\x00\x40\x20" + bytes(32)
    handshake = b"\xe3" + (1).to_bytes(4, "big") + b"\x08" + b"A" * 8 + b"\x00\x40\x20" + bytes(32)
    a = initial(b"A" * 8, crypto_frame(0, hello(ALLOWED)), pad_to=0)
    b = initial(b"B" * 8, crypto_frame(0, hello(BLOCKED)), pad_to=0)
    v = Engine(policy()).handle(udp(a + zero_rtt + handshake + b + bytes(200)), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == BLOCKED


def test_a_coalesced_packet_under_the_first_ones_keys_feeds_that_connection() -> None:
    # A server hands the whole datagram to the connection its first packet names and decrypts every
    # Initial in it with that connection's keys, whatever their DCIDs say (aioquic does).
    message = hello(BLOCKED)
    head = initial(b"X" * 8, crypto_frame(0, message[:100]), pad_to=0)
    rest = initial(b"Y" * 8, crypto_frame(100, message[100:]), key_dcid=b"X" * 8, pad_to=0)
    v = Engine(policy()).handle(udp(head + rest), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == BLOCKED


def test_a_later_initial_under_the_server_chosen_id_belongs_to_its_connection() -> None:
    # First half under the client's DCID D (held); the rest under a connection ID the server chose,
    # still with D's keys (RFC 9001 §5.2): it completes D's ClientHello.
    engine = Engine(policy())
    message = hello(BLOCKED)
    first = engine.handle(udp(initial(b"D" * 8, crypto_frame(0, message[:100]))), NOW)
    assert first.action is Action.HOLD and first.token is not None
    rest = initial(b"S" * 8, crypto_frame(100, message[100:]), key_dcid=b"D" * 8)
    v = engine.handle(udp(rest), NOW)
    assert v.action is Action.BLOCK and v.held == ((first.token, Action.DROP),)


def test_each_new_connection_on_an_allowed_pair_is_judged() -> None:
    engine = Engine(policy())
    assert engine.handle(udp(initial(b"A" * 8, crypto_frame(0, hello(ALLOWED)))), NOW).action is Action.ALLOW
    # The client's own later Initials (ACK only, under the server's connection ID): no new connection.
    ack = initial(b"S" * 8, b"\x02\x00\x00\x00\x00", key_dcid=b"A" * 8, pn=1)
    v = engine.handle(udp(ack), NOW)
    assert v.action is Action.ALLOW and v.event is None
    # A Handshake packet of the allowed connection: nothing to read.
    handshake = b"\xe3" + (1).to_bytes(4, "big") + b"\x08" + b"S" * 8 + b"\x00\x40\x20" + bytes(32)
    assert engine.handle(udp(handshake), NOW).action is Action.ALLOW
    # A second connection to an allowed name passes; one to a blocked name is stopped, split or not.
    second = engine.handle(udp(initial(b"B" * 8, crypto_frame(0, hello("www.example.org")))), NOW)
    assert second.action is Action.ALLOW and second.event is not None and second.event.host == "www.example.org"
    head, tail = split(b"C" * 8, hello(BLOCKED), 60)
    held = engine.handle(udp(head), NOW)
    assert held.action is Action.HOLD and held.token is not None
    v = engine.handle(udp(tail), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == BLOCKED
    assert v.held == ((held.token, Action.DROP),)
    # The pair is now blocked: everything after is, too.
    assert engine.handle(udp(ack), NOW).action is Action.BLOCK


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_connection_cannot_be_judged_twice(mode: str) -> None:
    # A decoy ClientHello (allowed name) that never reaches the server (low TTL, a datagram under
    # 1200 bytes, a bad checksum...), then the real one under the same DCID: its bytes disagree.
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    message = hello(ALLOWED)
    decoy = initial(b"D" * 8, crypto_frame(0, message), pad_to=600)
    assert engine.handle(udp(decoy), NOW).action is Action.ALLOW
    v = engine.handle(udp(initial(b"D" * 8, crypto_frame(0, hello(BLOCKED)), pn=1)), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.rule == "overlap"
    # A retransmission with the same bytes is fine.
    engine = Engine(policy())
    assert engine.handle(udp(decoy), NOW).action is Action.ALLOW
    assert engine.handle(udp(initial(b"D" * 8, crypto_frame(0, message), pn=1)), NOW).action is Action.ALLOW


def test_overlapping_crypto_frames_that_disagree_are_blocked_in_either_mode() -> None:
    message = hello(ALLOWED)
    for mode in ("closed", "open"):
        engine = Engine(policy(f'fail_mode = "{mode}"\nallow = ["dockerhub"]\n'))
        first = engine.handle(udp(initial(b"D" * 8, crypto_frame(0, message[:200]))), NOW)
        assert first.action is Action.HOLD and first.token is not None
        bad = initial(b"D" * 8, crypto_frame(150, b"\xff" * 100), pn=1)
        v = engine.handle(udp(bad), NOW)
        assert v.action is Action.BLOCK and v.event is not None and v.event.rule == "overlap"
        assert v.held == ((first.token, Action.DROP),)


@pytest.mark.parametrize(("mode", "action"), [("closed", Action.DROP), ("open", Action.ACCEPT)])
def test_a_version_netguard_cannot_read(mode: str, action: Action) -> None:
    # The fail verdict for that datagram alone: the client may retry on the same socket with v1/v2
    # after version negotiation, and that Initial is read as usual.
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    draft = initial(b"D" * 8, crypto_frame(0, hello(BLOCKED)), version=1)
    draft = draft[:1] + (0xFF00001D).to_bytes(4, "big") + draft[5:]
    v = engine.handle(udp(draft), NOW)
    assert v.action is action and v.event is not None and v.event.allowed is (mode == "open")
    assert "0xff00001d" in v.event.reason
    again = engine.handle(udp(initial(b"E" * 8, crypto_frame(0, hello(BLOCKED)))), NOW)
    assert again.action is Action.BLOCK and again.event is not None and again.event.host == BLOCKED
    # A coalesced packet of another version after a v1 one: the same.
    v1 = initial(b"F" * 8, crypto_frame(0, hello(ALLOWED)), pad_to=0)
    assert engine.handle(udp(v1 + draft, sport=50009), NOW).action is action
    # Elsewhere than port 443 such a datagram is not QUIC to netguard (the firewall does not queue it).
    assert engine.handle(udp(draft, dport=5000), NOW) == Verdict(Action.ACCEPT)


def test_what_is_not_a_client_initial_decides_nothing() -> None:
    engine = Engine(policy())
    for payload in (b"\x16\xfe\xfd" + bytes(60),  # DTLS
                    b"\x41" + bytes(1200),  # a short header
                    initial(b"D" * 8, crypto_frame(0, hello(BLOCKED)), key_dcid=b"K" * 8),  # keys of no one's
                    b"\xc3\x00\x00\x00\x01\x15" + bytes(1200)):  # a DCID of 21 bytes
        assert engine.handle(udp(payload), NOW) == Verdict(Action.ACCEPT)
    assert engine.stats.allowed == engine.stats.blocked == 0


def test_a_hello_without_a_name_is_judged_by_address() -> None:
    engine = Engine(policy('allow = ["dockerhub"]\nunknown_hosts = "deny"\n'))
    v = engine.handle(udp(initial(bytes(8), crypto_frame(0, python_client_hello(None)[5:]))), NOW)
    assert v.action is Action.BLOCK and v.event is not None and v.event.source == "address"


def test_ipv6() -> None:
    head, tail = split(b"D" * 8, hello(BLOCKED), 80, version=quic.VERSION_2)
    engine = Engine(policy())
    assert engine.handle(udp(head, six=True), NOW).action is Action.HOLD
    assert engine.handle(udp(tail, six=True), NOW).action is Action.BLOCK


@pytest.mark.parametrize(("mode", "action", "settle"), [("closed", Action.BLOCK, Action.DROP),
                                                         ("open", Action.ALLOW, Action.ALLOW)])
def test_the_byte_budget_per_flow(monkeypatch: pytest.MonkeyPatch, mode: str, action: Action,
                                  settle: Action) -> None:
    # A ClientHello that never completes: datagrams are held up to the flow's byte budget.
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    message = chromium_like_hello(BLOCKED.encode())
    tokens = []
    for pn in range(core.MAX_QUIC_FLOW_BYTES // 1200 + 1):
        v = engine.handle(udp(initial(b"D" * 8, crypto_frame(pn, message[pn : pn + 1]), pn=pn)), NOW)
        if v.action is not Action.HOLD:
            break
        assert v.token is not None
        tokens.append(v.token)
    assert v.action is action and v.event is not None and v.event.rule == f"fail_mode = {mode}"
    assert engine.stats.by_limit == {"bytes": 1}
    # 1200-byte datagrams (and one CRYPTO byte each kept): the budget holds this many.
    assert len(tokens) == core.MAX_QUIC_FLOW_BYTES // 1201 and v.held == tuple((t, settle) for t in tokens)


def test_a_legitimate_large_hello_fits_the_budget() -> None:
    # The largest ClientHello netguard reads (16 KiB), in 1200-byte Initials, shuffled.
    name = sni_extension(b"big.example.test")
    short = client_hello([name, extension(21, b"")])
    message = client_hello([name, extension(21, bytes(quic.MAX_CRYPTO_BYTES - len(short)))])
    assert len(message) == quic.MAX_CRYPTO_BYTES
    pieces = [(i, message[i : i + 1100]) for i in range(0, len(message), 1100)]
    pieces = pieces[1::2] + pieces[::2]
    engine = Engine(policy())
    verdicts = [engine.handle(udp(initial(b"D" * 8, crypto_frame(o, d), pn=n)), NOW) for n, (o, d) in enumerate(pieces)]
    assert all(v.action is Action.HOLD for v in verdicts[:-1])
    last = verdicts[-1]
    assert last.action is Action.ALLOW and last.event is not None and last.event.host == "big.example.test"
    assert last.held == tuple((v.token, Action.ALLOW) for v in verdicts[:-1])


def test_held_datagrams_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_HELD_DATAGRAMS", 3)
    engine = Engine(policy())
    message = hello(BLOCKED)
    verdicts = [engine.handle(udp(initial(bytes((i,)) * 8, crypto_frame(0, message[:50])), sport=40000 + i), NOW)
                for i in range(4)]
    assert [v.action for v in verdicts] == [Action.HOLD] * 3 + [Action.BLOCK]
    assert engine.stats.by_limit == {"held": 1}


def test_quic_flows_are_bounded_and_an_evicted_flow_drops_its_held_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_QUIC_FLOWS", 2)
    engine = Engine(policy())
    message = hello(BLOCKED)
    verdicts = [engine.handle(udp(initial(bytes((i,)) * 8, crypto_frame(0, message[:50])), sport=40000 + i), NOW)
                for i in range(3)]
    # The third flow evicted the first: its held datagram is dropped with the third's verdict.
    assert [v.action for v in verdicts] == [Action.HOLD] * 3
    assert verdicts[2].held == ((verdicts[0].token, Action.DROP),)
    # The evicted flow is read anew: its second half alone completes nothing (held).
    rest = engine.handle(udp(initial(bytes((0,)) * 8, crypto_frame(50, message[50:]), pn=1), sport=40000), NOW)
    assert rest.action is Action.HOLD


@pytest.mark.parametrize(("mode", "settle"), [("closed", Action.DROP), ("open", Action.ALLOW)])
def test_an_idle_flow_with_a_partial_hello_gets_the_fail_verdict(mode: str, settle: Action) -> None:
    engine = Engine(policy(f'allow = ["dockerhub"]\nfail_mode = "{mode}"\n'))
    first = engine.handle(udp(initial(b"D" * 8, crypto_frame(0, hello(ALLOWED)[:100]))), NOW)
    assert first.token is not None
    assert engine.expire(NOW + core.FLOW_IDLE - 1) == []
    assert engine.expire(NOW + core.FLOW_IDLE + 1) == [(first.token, settle)]
    v = engine.handle(udp(b"\x41" + bytes(50)), NOW + core.FLOW_IDLE + 2)
    assert v.action is (Action.BLOCK if mode == "closed" else Action.ALLOW)
    assert v.event is not None and "idle" in v.event.reason
    # A flow whose connections are all judged is forgotten quietly.
    engine.handle(udp(initial(b"E" * 8, crypto_frame(0, hello(ALLOWED))), sport=50001), NOW)
    assert engine.expire(NOW + 3 * core.FLOW_IDLE) == []


def test_connections_per_flow_are_bounded() -> None:
    engine = Engine(policy())
    message = hello(ALLOWED)
    for i in range(classify.MAX_QUIC_CONNECTIONS):
        assert engine.handle(udp(initial(bytes((i,)) * 8, crypto_frame(0, message[:40]), pn=i)), NOW).action \
            is Action.HOLD
    v = engine.handle(udp(initial(b"\xff" * 8, crypto_frame(0, message[:40]))), NOW)
    assert v.action is Action.BLOCK and len(v.held) == classify.MAX_QUIC_CONNECTIONS
    # Judged connections make room for new ones.
    engine = Engine(policy())
    for i in range(classify.MAX_QUIC_CONNECTIONS + 3):
        assert engine.handle(udp(initial(bytes((i,)) * 8, crypto_frame(0, message))), NOW).action is Action.ALLOW


def test_reload_cuts_a_flow_whose_second_connection_became_blocked() -> None:
    engine = Engine(policy('allow = ["dockerhub", "quay"]\n'))
    assert engine.handle(udp(initial(b"A" * 8, crypto_frame(0, hello(ALLOWED)))), NOW).action is Action.ALLOW
    assert engine.handle(udp(initial(b"B" * 8, crypto_frame(0, hello("quay.io")))), NOW).action is Action.ALLOW
    cut = engine.reload(policy('allow = ["dockerhub"]\n'), NOW)
    assert [(e.host, e.allowed) for e in cut] == [("quay.io", False)]


def test_a_datagram_cut_by_the_queue_copy() -> None:
    # NFQUEUE copies about 4 KB: the rest of a QUIC datagram is unseen, so it gets the fail verdict;
    # any other big datagram (a GSO batch's segment never is one) passes.
    engine = Engine(policy())
    big = udp(initial(b"D" * 8, crypto_frame(0, hello(ALLOWED)), pad_to=6000))
    v = engine.handle(big[:4000], NOW)
    assert v.action is Action.DROP and v.event is not None and "copies" in v.event.reason
    other = udp(b"\x04" + bytes(6000), dport=51820)
    assert engine.handle(other[:4000], NOW) == Verdict(Action.ACCEPT)


def test_replay_reads_quic_on_any_port_and_after_a_decision(tmp_path: Path) -> None:
    from scapy.all import wrpcap

    from netguard.replay import render, replay

    allowed = initial(b"A" * 8, crypto_frame(0, hello(ALLOWED)), version=quic.VERSION_2)
    blocked = initial(b"B" * 8, crypto_frame(0, hello(BLOCKED)))
    packets = [IP(udp(allowed, dport=4433, sport=40000)),
               IP(src=S4, dst=C4) / UDP(sport=4433, dport=40000) / (b"\xc3" + bytes(1200)),  # the server's side
               IP(udp(b"\x41" + bytes(100), dport=4433, sport=40000)),
               IP(udp(blocked, dport=4433, sport=40000)),  # a second connection on the same pair
               IP(udp(b"\x12\x34\x01\x00" + bytes(20), dport=53, sport=40001))]  # not QUIC: no line
    path = tmp_path / "quic.pcap"
    wrpcap(str(path), packets)
    [line] = replay(path, policy())
    assert line.event is not None and line.event.host == BLOCKED and line.key.dport == 4433
    assert "ghcr.io (quic-sni)  block" in render(line)
