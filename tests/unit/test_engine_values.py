"""The hot path's shortcuts build the same values as the slow, obvious code: FlowKey, Verdict and
Event made through tuple.__new__ (engine.verdict), and the inlined IPv4 header checksum test
(engine.packets.ipv4_header_ok) against the RFC 1071 checksum, on scapy-built headers."""

from __future__ import annotations

import random

from scapy.all import IP, TCP, raw  # type: ignore[attr-defined]

from netguard.engine.packets import checksum, ipv4_header_ok
from netguard.engine.verdict import Action, Event, FlowKey, Verdict, decided, event_of, flow_key

SAMPLES = 300  # random headers per property: enough to meet odd lengths, options and bad sums


def test_flow_key_and_reply_equal_the_constructor() -> None:
    key = flow_key(6, b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443)
    built = FlowKey(6, b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443)
    assert key == built and type(key) is FlowKey and hash(key) == hash(built)
    assert key.reply() == FlowKey(6, b"\x0a\x00\x00\x02", 443, b"\x0a\x00\x00\x01", 40000)
    assert type(key.reply()) is FlowKey and key.reply().reply() == key and key.reply().sport == 443


def test_verdict_and_event_equal_the_constructors() -> None:
    key = FlowKey(17, b"\x01" * 16, 53, b"\x02" * 16, 5353)
    event = event_of(1.5, key, True, "registry-1.docker.io", "sni", "docker", "Docker Hub", "allow", "why")
    assert event == Event(1.5, key, True, "registry-1.docker.io", "sni", "docker", "Docker Hub", "allow", "why")
    assert type(event) is Event and event.names == ()
    named = event_of(1.5, key, False, None, "dns-answer", None, None, "r", "w", ("a", "b"))
    assert named == Event(1.5, key, False, None, "dns-answer", None, None, "r", "w", ("a", "b"))
    for action in Action:
        for ev in (None, event):
            v = decided(action, ev)
            assert v == Verdict(action, event=ev) and type(v) is Verdict
            assert (v.payload, v.inject, v.token, v.held) == (None, (), None, ())


def test_ipv4_header_ok_agrees_with_the_checksum() -> None:
    rng = random.Random(11)
    for _ in range(SAMPLES):
        options = bytes(rng.randrange(256) for _ in range(4 * rng.randrange(0, 11)))
        good = raw(IP(src="10.0.0.1", dst="10.0.0.2", id=rng.randrange(65536), ttl=rng.randrange(256),
                      options=options) / TCP())
        size = (good[0] & 0x0F) * 4
        assert ipv4_header_ok(good) and checksum(good[:size]) == 0
        bad = bytearray(good)
        bad[rng.randrange(size)] ^= 1 << rng.randrange(8)
        assert ipv4_header_ok(bytes(bad)) == (checksum(bytes(bad[:(bad[0] & 0x0F) * 4])) == 0
                                             and len(bad) >= (bad[0] & 0x0F) * 4)
        assert not ipv4_header_ok(good[:size - 1])
    assert not ipv4_header_ok(bytes(20))  # all zeros: a sum of 0 is not 0xFFFF
    assert not ipv4_header_ok(b"\x40" + bytes(19))  # header length 0
