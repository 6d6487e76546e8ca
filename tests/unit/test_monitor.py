"""Monitor mode at the daemon's apply point (netguard.daemon.monitor): every verdict that would stop
something lets it pass instead, with the allowed mark for flows; what was let through is judged again
when enforcement starts. Driven by the real engine with packets built by scapy."""

from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP

from netguard.daemon.monitor import MAX_LET_THROUGH, Monitor, blocks
from netguard.daemon.policyfiles import load_catalog
from netguard.engine import Action, Engine, Event, FlowKey, Verdict
from netguard.lab.lab import python_client_hello
from netguard.policy import parse_policy

CLIENT, SERVER = "10.0.0.2", "10.0.0.9"
MONITOR = 'name = "rollout"\nmode = "monitor"\nallow = ["dockerhub"]\n'


def policy(text: str = MONITOR):  # type: ignore[no-untyped-def]
    return parse_policy(text, "p.toml", load_catalog())


def hello(name: str, sport: int) -> list[bytes]:
    syn = IP(src=CLIENT, dst=SERVER, ttl=64) / TCP(sport=sport, dport=443, flags="S", seq=1000)
    data = IP(src=CLIENT, dst=SERVER, ttl=64) / TCP(sport=sport, dport=443, flags="PA", seq=1001, ack=1) / \
        python_client_hello(name)
    return [bytes(syn), bytes(data)]


def decide_flow(engine: Engine, name: str, sport: int) -> Verdict:
    verdicts = [engine.handle(p, 1.0, from_client=True) for p in hello(name, sport)]
    return verdicts[-1]


def test_blocked_flow_gets_the_allowed_mark_and_no_alert() -> None:
    p = policy(MONITOR + 'block_action = "tls-alert"\n')
    engine, monitor = Engine(p), Monitor()
    v = decide_flow(engine, "ghcr.io", 40000)
    assert v.action is Action.BLOCK and v.inject  # what enforcement would do: block, with a TLS alert
    out = monitor.let_pass(v)
    assert out.action is Action.ALLOW and out.inject == () and out.event is v.event
    assert monitor.would_block == 1 and list(monitor.let_through) == [v.event.key]  # type: ignore[union-attr]
    allowed = decide_flow(engine, "registry-1.docker.io", 40001)
    assert monitor.let_pass(allowed) is allowed and monitor.would_block == 1


def test_dns_answer_passes_unchanged() -> None:
    engine, monitor = Engine(policy()), Monitor()
    answer = IP(src="10.0.0.53", dst=CLIENT) / UDP(sport=53, dport=5353) / DNS(
        id=7, qr=1, qd=DNSQR(qname="ghcr.io"), an=DNSRR(rrname="ghcr.io", rdata="10.0.0.9", ttl=60))
    v = engine.handle(bytes(answer), 1.0, from_client=False)
    assert v.action is Action.REWRITE and v.event is not None and not v.event.allowed
    out = monitor.let_pass(v)
    assert out.action is Action.ACCEPT and out.payload is None and out.event is v.event
    assert monitor.would_block == 1 and not monitor.let_through  # nothing to cut: not a flow
    assert monitor.let_pass(Verdict(Action.DROP)).action is Action.ACCEPT  # unreadable packets pass too


def test_a_multipath_syn_is_sent_on_without_the_option_in_monitor_mode_too() -> None:
    # Taking the option out blocks nothing; it keeps what the engine reads the server's bytes.
    engine, monitor = Engine(policy()), Monitor()
    syn = IP(src=CLIENT, dst=SERVER, ttl=64) / TCP(sport=40100, dport=443, flags="S", seq=1000,
                                                   options=[("MSS", 1460), (30, bytes([0x01, 0x81]))])
    v = engine.handle(bytes(syn), 1.0, from_client=True)
    assert v.action is Action.REWRITE and v.payload is not None and v.event is None
    assert monitor.let_pass(v) is v and monitor.would_block == 0


def test_switching_to_enforce_cuts_what_the_new_policy_blocks() -> None:
    engine, monitor = Engine(policy()), Monitor()
    for i, name in enumerate(("ghcr.io", "quay.io")):
        monitor.let_pass(decide_flow(engine, name, 41000 + i))
    enforce_ghcr_allowed = policy('allow = ["dockerhub", "ghcr"]\n')
    cut = monitor.to_cut(enforce_ghcr_allowed)
    assert [e.host for e in cut] == ["quay.io"]
    assert not monitor.let_through  # forgotten once judged


def test_settings_and_evasions_are_judged_by_the_new_policy() -> None:
    key = FlowKey(6, bytes(4), 1, bytes(4), 443)
    deny = Event(0.0, key, False, "10.0.0.9", "address", None, None, "unknown_hosts = deny", "")
    closed = Event(0.0, key, False, None, "none", None, None, "fail_mode = closed", "")
    overlap = Event(0.0, key, False, None, "none", None, None, "overlap", "")
    strict = policy('unknown_hosts = "deny"\n')
    relaxed = policy('fail_mode = "open"\n')
    assert blocks(deny, strict) and not blocks(deny, relaxed)
    assert blocks(closed, strict) and not blocks(closed, relaxed)
    assert blocks(overlap, relaxed)


def test_let_through_is_bounded() -> None:
    monitor = Monitor()
    for i in range(MAX_LET_THROUGH + 10):
        key = FlowKey(6, bytes(4), i, bytes(4), 443)
        event = Event(0.0, key, False, "ghcr.io", "sni", "ghcr", "GHCR", "ghcr is not in allow", "")
        monitor.let_pass(Verdict(Action.BLOCK, event=event))
    assert len(monitor.let_through) == MAX_LET_THROUGH
    assert next(iter(monitor.let_through)).sport == 10  # the oldest went first


def test_datagrams_held_for_a_blocked_quic_connection_pass_in_monitor_mode() -> None:
    held = Verdict(Action.BLOCK, held=((7, Action.DROP), (8, Action.ALLOW)))
    out = Monitor().let_pass(held)
    assert out.action is Action.ALLOW and out.held == ((7, Action.ALLOW), (8, Action.ALLOW))
    dropped = Monitor().let_pass(Verdict(Action.DROP, held=((9, Action.DROP),)))
    assert dropped.action is Action.ACCEPT and dropped.held == ((9, Action.ALLOW),)


def test_a_followed_http_connection_is_read_and_logged_until_its_first_would_block() -> None:
    # FOLLOW lets its packet pass as it is (the connection stays followed: its next request is
    # judged); the first request enforcement would block turns the connection allowed, once.
    engine, monitor = Engine(policy()), Monitor()

    def seg(offset: int, payload: bytes, flags: str = "PA") -> bytes:
        return bytes(IP(src=CLIENT, dst=SERVER, ttl=64) / TCP(sport=42000, dport=80, flags=flags, seq=1001 + offset,
                                                              ack=1) / payload)

    syn = bytes(IP(src=CLIENT, dst=SERVER, ttl=64) / TCP(sport=42000, dport=80, flags="S", seq=1000))
    assert engine.handle(syn, 1.0, from_client=True).action is Action.ACCEPT
    first = b"GET /v2/ HTTP/1.1\r\nHost: registry-1.docker.io\r\n\r\n"
    v = engine.handle(seg(0, first), 1.0, from_client=True)
    assert v.action is Action.FOLLOW and monitor.let_pass(v) is v
    second = b"GET /v2/ HTTP/1.1\r\nHost: ghcr.io\r\n\r\n"
    v = engine.handle(seg(len(first), second), 2.0, from_client=True, followed=True)
    assert v.action is Action.BLOCK and v.event is not None and v.event.host == "ghcr.io"
    out = monitor.let_pass(v)
    assert out.action is Action.ALLOW and monitor.would_block == 1
    assert [e.host for e in monitor.to_cut(policy('allow = ["dockerhub"]\n'))] == ["ghcr.io"]


def test_socks_and_tunnel_names_are_judged_again_when_enforcement_starts() -> None:
    key = FlowKey(6, bytes(4), 1, bytes(4), 1080)
    strict = policy('allow = ["dockerhub"]\n')
    for source in ("socks4", "socks5", "tunnel-sni"):
        event = Event(0.0, key, False, "ghcr.io", source, "ghcr", "GHCR", "ghcr is not in allow", "")
        assert blocks(event, strict) and not blocks(event, policy('allow = ["dockerhub", "ghcr"]\n'))
    # An address literal a SOCKS client named: judged by unknown_hosts, as the engine judged it.
    literal = Event(0.0, key, False, "192.0.2.7", "socks4", None, None, "unknown_hosts = deny", "")
    assert blocks(literal, policy('unknown_hosts = "deny"\n')) and not blocks(literal, strict)
