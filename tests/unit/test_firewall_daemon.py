"""How `netguard run` picks its firewall backend from doctor's report, and refuses with its reasons."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from netguard.daemon import run as daemon
from netguard.doctor import report as doctor


def fake_report(verdict: str, backends: tuple[str, ...], reasons: tuple[str, ...] = ()) -> object:
    return SimpleNamespace(verdict=verdict, backends=backends, reasons=reasons)


def test_refuses_with_doctors_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "assess", lambda: fake_report("cannot", (), ("nfnetlink_queue is missing",)))
    with pytest.raises(daemon.StartError, match="cannot enforce: nfnetlink_queue is missing"):
        daemon.choose_backend(None)


def test_takes_the_first_backend_it_supports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "assess", lambda: fake_report("ok", ("nft", "iptables-legacy")))
    assert daemon.choose_backend(None) == "nft"
    monkeypatch.setattr(doctor, "assess", lambda: fake_report("ok", ("some-future-backend", "iptables-legacy")))
    assert daemon.choose_backend(None) == "iptables-legacy"
    monkeypatch.setattr(doctor, "assess", lambda: fake_report("degraded", ("some-future-backend",), ("no IPv6",)))
    with pytest.raises(daemon.StartError, match="no firewall backend"):
        daemon.choose_backend(None)


def test_the_refusal_never_ends_in_an_empty_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "assess", lambda: fake_report("ok", ("some-future-backend",)))
    with pytest.raises(daemon.StartError) as refused:
        daemon.choose_backend(None)
    text = str(refused.value)
    assert text == ("no firewall backend netguard can use here (doctor found: some-future-backend; this netguard's "
                    "run supports nft, iptables-nft, iptables-legacy)")


def test_requested_backend() -> None:
    assert daemon.choose_backend("iptables-nft") == "iptables-nft"
    with pytest.raises(daemon.StartError):
        daemon.choose_backend("pf")


def test_firewall_options_follow_the_policy() -> None:
    from netguard.daemon.policyfiles import load_catalog
    from netguard.policy import parse_policy

    p = parse_policy('allow = []\nfail_mode = "open"\nqueue_num = 9\nmark_mask = 0xf0\nmark_allowed = 0x10\n'
                     'mark_blocked = 0x20\n', "t.toml", load_catalog())
    opts = daemon.firewall_options(p)
    assert (opts.queue_num, opts.fail_open, opts.marks.mask, opts.marks.allowed, opts.marks.blocked) == \
        (9, True, 0xF0, 0x10, 0x20)
