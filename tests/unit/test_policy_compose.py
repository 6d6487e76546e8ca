"""Policy keys for organisations (mode, local_allow), and an organisation policy with a local file
laid over it and the policy server's host pinned (netguard.policy.compose). Pure, no root."""

from __future__ import annotations

import pytest

from netguard.daemon.policyfiles import load_catalog
from netguard.policy import Policy, PolicyError, decide, parse_policy
from netguard.policy.compose import combine, pin_host
from netguard.policy.explain import explain

ORG_URL = "https://config.corp.example/netguard/policy.toml"
LOCAL = "/etc/netguard/local.toml"


def org(text: str) -> Policy:
    return parse_policy(text, ORG_URL, load_catalog(), "organisation policy")


def local(text: str) -> Policy:
    return parse_policy(text, LOCAL, load_catalog(), "local")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        org(text)
    return [p.message for p in e.value.problems]


def test_mode_and_local_allow_defaults_and_values() -> None:
    p = org('name = "acme"\n')
    assert (p.mode, p.local_allow) == ("enforce", False)
    p = org('mode = "monitor"\nlocal_allow = true\n')
    assert (p.mode, p.local_allow) == ("monitor", True)
    assert problems('mode = "audit"\n') == ['mode = \'audit\': expected "enforce" or "monitor"']
    assert problems('local_allow = "yes"\n') == ["local_allow: expected true or false"]
    assert "did you mean 'mode'" in problems('mdoe = "monitor"\n')[0]


def test_every_entry_names_its_document() -> None:
    p = org('allow = ["ghcr", "registry.corp.example"]\nblock = ["registry.shadow.example"]\n')
    assert {rule.document for _, rule in p.table} == {ORG_URL}


def test_local_file_adds_blocks_and_says_so() -> None:
    o = org('name = "acme"\nallow = ["dockerhub", "ghcr", "registry.corp.example"]\n')
    p = combine(o, local('block = ["ghcr.io", "registry.shadow.example"]\n'))
    assert p.label == f"acme [{ORG_URL}]"
    d = decide("ghcr.io", 443, p)
    assert not d.allowed and d.rule == "block = ghcr.io"
    assert d.reason.endswith(f"(from {LOCAL})")
    assert not decide("registry.shadow.example", None, p).allowed
    # The organisation's own entries keep their document and say nothing extra.
    for host in ("registry.corp.example", "registry-1.docker.io"):
        d = decide(host, 443, p)
        assert d.allowed and "(from" not in d.reason
    assert {rule.document for _, rule in p.table} == {ORG_URL, LOCAL}


def test_specificity_still_decides_between_documents() -> None:
    # A local wildcard block does not override the organisation's exact allow (the more specific wins).
    p = combine(org('allow = ["registry.corp.example"]\n'), local('block = ["*.corp.example"]\n'))
    assert decide("registry.corp.example", None, p).allowed
    assert not decide("other.corp.example", None, p).allowed


def test_local_allows_are_left_out_unless_the_organisation_permits_them() -> None:
    text = 'allow = ["quay", "myteam.azurecr.io"]\nblock = ["registry.shadow.example"]\n'
    p = combine(org('allow = ["dockerhub"]\n'), local(text))
    assert not decide("quay.io", 443, p).allowed
    assert not decide("myteam.azurecr.io", 443, p).allowed
    assert not decide("registry.shadow.example", 443, p).allowed
    assert "quay" not in p.allow_ids
    warning = next(w for w in p.warnings if "left out" in w)
    assert "allow = myteam.azurecr.io" in warning and "allow = quay" in warning and LOCAL in warning

    p = combine(org('allow = ["dockerhub"]\nlocal_allow = true\n'), local(text))
    d = decide("cdn02.quay.io", 443, p)
    assert d.allowed and d.rule == "allow = quay" and d.reason.endswith(f"(from {LOCAL})")
    assert decide("myteam.azurecr.io", 443, p).allowed
    assert not decide("other.azurecr.io", 443, p).allowed
    assert "quay" in p.allow_ids and not any("left out" in w for w in p.warnings)


def test_local_settings_are_the_organisations() -> None:
    o = org('mode = "monitor"\nunknown_hosts = "deny"\n')
    p = combine(o, local('mode = "enforce"\nunknown_hosts = "allow"\nfail_mode = "open"\nblock = ["x.example"]\n'))
    assert (p.mode, p.unknown_hosts, p.fail_mode) == ("monitor", "deny", "closed")
    assert any("ignored" in w and "unknown_hosts, fail_mode" in w and "mode" in w for w in p.warnings)
    assert not decide("x.example", None, p).allowed


def test_policy_server_is_allowed_and_outranks_every_entry() -> None:
    o = org('unknown_hosts = "deny"\nblock = ["config.corp.example", "config.corp.example:8443", "*.corp.example"]\n')
    assert not decide("config.corp.example", 8443, o).allowed
    p = pin_host(o, "config.corp.example", 8443, ORG_URL)
    for port in (8443, None, 443):  # the URL's port, DNS answers (no port), and any other port
        d = decide("config.corp.example", port, p)
        assert d.allowed and d.rule == "policy server config.corp.example" + (":8443" if port == 8443 else ""), d
        assert d.reason.startswith("config.corp.example is the organisation's policy server: allowed by")
    assert not decide("other.corp.example", 8443, p).allowed
    assert not decide("evil.example", 443, p).allowed  # unknown_hosts = deny still holds for the rest
    assert any("would be blocked" in w for w in p.warnings)
    # explain shows the pins first; the organisation's entries at the same patterns are replaced (the
    # warning names them), broader ones are shadowed.
    e = explain("config.corp.example", 8443, p)
    assert [m.text for m in e.matches] == ["policy server config.corp.example:8443",
                                           "policy server config.corp.example", "block = *.corp.example"]


def test_policy_server_on_a_registry_host_keeps_its_registry_and_warns() -> None:
    p = pin_host(org('allow = ["dockerhub"]\n'), "acme.jfrog.io", 443, ORG_URL)
    d = decide("acme.jfrog.io", 443, p)
    assert d.allowed and d.registry == "jfrog"
    assert any("acme.jfrog.io would be blocked" in w for w in p.warnings)
    assert not decide("other.jfrog.io", 443, p).allowed
    quiet = pin_host(org('allow = ["dockerhub"]\n'), "config.corp.example", 443, ORG_URL)
    assert not any("would be blocked" in w for w in quiet.warnings)
