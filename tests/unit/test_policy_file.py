"""Policy files: every problem reported with file:line:col; nothing partly applied; decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from netguard.daemon.policyfiles import load_catalog, load_policy
from netguard.policy import PolicyError, decide, parse_catalog, parse_policy

REPO = Path(__file__).resolve().parents[2]


def policy(text: str):  # type: ignore[no-untyped-def]
    return parse_policy(text, "p.toml", load_catalog())


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        policy(text)
    return [str(p) for p in e.value.problems]


def test_shipped_catalog_covers_the_required_registries() -> None:
    ids = set(load_catalog().registries)
    assert {"dockerhub", "ghcr", "quay", "redhat", "mcr", "acr", "gcr", "artifact-registry", "ecr", "ecr-public",
            "k8s", "gitlab", "ngc", "jfrog"} <= ids


@pytest.mark.parametrize(
    ("host", "allowed", "registry"),
    [
        ("registry-1.docker.io", True, "dockerhub"),
        ("REGISTRY-1.Docker.IO.", True, "dockerhub"),
        ("auth.docker.io", True, "dockerhub"),
        ("ghcr.io", False, "ghcr"),
        ("quay.io", False, "quay"),
        ("cdn02.quay.io", False, "quay"),
        ("registry.redhat.io", False, "redhat"),
        ("mcr.microsoft.com", False, "mcr"),
        ("westeurope.data.mcr.microsoft.com", False, "mcr"),
        ("myteam.azurecr.io", False, "acr"),
        ("myteam.westeurope.data.azurecr.io", False, "acr"),
        ("gcr.io", False, "gcr"),
        ("us.gcr.io", False, "gcr"),
        ("europe-west4-docker.pkg.dev", False, "artifact-registry"),
        ("123456789012.dkr.ecr.eu-central-1.amazonaws.com", False, "ecr"),
        ("123456789012.dkr-ecr.eu-central-1.on.aws", False, "ecr"),
        ("public.ecr.aws", False, "ecr-public"),
        ("registry.k8s.io", False, "k8s"),
        ("k8s.gcr.io", False, "k8s"),
        ("registry.gitlab.com", False, "gitlab"),
        ("nvcr.io", False, "ngc"),
        ("acme.jfrog.io", False, "jfrog"),
        ("evil.example", True, None),
        ("s3.amazonaws.com", True, None),  # shared CDN hosts stay out of the catalog
        ("storage.googleapis.com", True, None),
        ("azurecr.io.evil.com", True, None),
    ],
)
def test_default_policy(host: str, allowed: bool, registry: str | None) -> None:
    d = decide(host, None, load_policy(None))
    assert (d.allowed, d.registry) == (allowed, registry)
    if not allowed:
        assert "default policy [embedded]" in d.reason


def test_unknown_hosts_deny() -> None:
    d = decide("evil.example", 443, policy('unknown_hosts = "deny"'))
    assert not d.allowed
    assert d.rule == "unknown_hosts = deny"


def test_allow_patterns_and_block_patterns_override_catalog() -> None:
    p = policy('allow = ["myteam.azurecr.io", "registry.corp.example:5000"]\nblock = ["*.evil.example"]')
    assert decide("myteam.azurecr.io", 443, p).allowed
    assert not decide("other.azurecr.io", 443, p).allowed
    assert decide("myteam.azurecr.io", 443, p).registry == "acr"
    assert decide("registry.corp.example", 5000, p).allowed
    blocked = decide("registry.evil.example", 443, p)
    assert not blocked.allowed and blocked.rule == "block = *.evil.example"
    assert not decide("registry-1.docker.io", 443, p).allowed  # dockerhub is not in this allow list


def test_pasted_url_is_normalised_with_a_warning() -> None:
    p = policy('allow = ["https://ghcr.io/"]')
    assert decide("ghcr.io", 443, p).allowed
    assert p.warnings and "p.toml:1:" in p.warnings[0] and "URL" in p.warnings[0]


def test_settings_and_defaults() -> None:
    p = policy('fail_mode = "open"\nblock_action = "tls-alert"\ndns_block = false\nqueue_num = 9\n'
               'mark_mask = 0xf0\nmark_allowed = 0x10\nmark_blocked = 0x20')
    assert (p.fail_mode, p.block_action, p.dns_block, p.queue_num) == ("open", "tls-alert", False, 9)
    assert (p.mark_mask, p.mark_allowed, p.mark_blocked) == (0xF0, 0x10, 0x20)
    d = policy("")
    assert (d.fail_mode, d.unknown_hosts, d.block_action, d.dns_block) == ("closed", "allow", "reset", True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('alow = ["ghcr"]', "p.toml:1:1: unknown key 'alow'; did you mean 'allow'?"),
        ('allow = ["ghcr", "githb"]', "p.toml:1:18: allow: unknown registry id 'githb'"),
        ('allow = [\n  "*.",\n]', "p.toml:2:3: allow: '*.': a wildcard needs a domain"),
        ('allow = ["a..b"]', "p.toml:1:10: allow: empty label in 'a..b'"),
        ('allow = ["*.*.com"]', "p.toml:1:10: allow: '*.*.com': '*' is allowed only"),
        ('allow = ["ghcr", "ghcr"]', "p.toml:1:18: allow: 'ghcr' is listed twice"),
        ('block = ["x.example", "X.example."]', "p.toml:1:23: block: 'X.example.' is listed twice"),
        ('allow = ["x.example"]\nblock = ["x.example"]', "p.toml:2:10: x.example is in both allow and block"),
        ('block = ["ghcr"]', "p.toml:1:10: block: 'ghcr' is a registry id"),
        ('unknown_hosts = "probe"', 'p.toml:1:1: unknown_hosts = \'probe\': expected "allow" or "deny"'),
        ("dns_block = 1", "p.toml:1:1: dns_block: expected true or false"),
        ("queue_num = 70000", "p.toml:1:1: queue_num: expected an integer from 0 to 0xffff"),
        ("mark_allowed = 0x20\nmark_blocked = 0x20", "mark_allowed and mark_blocked must be different"),
        ("mark_allowed = 0x1", "must lie inside mark_mask"),
        ("mark_mask = 0x50\nmark_allowed = 0x10\nmark_blocked = 0x40", "needs a third and a fourth value"),
        ("mark_mask = 0x30\nmark_allowed = 0x10\nmark_blocked = 0x20", "needs a third and a fourth value"),
        ('allow = ["ghcr"\n', "p.toml:1:16: not valid TOML: Unclosed array"),
        ("allow = 3", "p.toml:1:1: allow: expected a list of strings"),
    ],
)
def test_problems_point_at_the_text(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    assert len(problems('alow = []\nallow = ["githb", "*."]\nfail_mode = "sometimes"')) == 4


def test_catalog_rejects_a_pattern_under_two_registries() -> None:
    entry = '[[registry]]\nid = "{0}"\nname = "{0}"\nhosts = ["x.io"]\n'
    text = entry.format("a") + entry.format("b")
    with pytest.raises(PolicyError, match="listed under both 'a' and 'b'"):
        parse_catalog(text, "c.toml")


def test_shipped_files_are_the_packaged_ones() -> None:
    # the package reads rules/ through netguard.rules: the files operators read are the ones used
    assert load_policy(None).name == "default policy"
    assert (REPO / "rules" / "default.toml").is_file()
