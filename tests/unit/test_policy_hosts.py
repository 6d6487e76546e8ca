"""Host normalisation and pattern parsing: one place, table-tested."""

from __future__ import annotations

import pytest

from netguard.policy import HostError, Pattern, normalise_host, parse_pattern, split_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ghcr.io", "ghcr.io"),
        ("REGISTRY-1.Docker.IO.", "registry-1.docker.io"),
        ("  quay.io  ", "quay.io"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),  # UTS 46 non-transitional: ß stays ß
        ("ＧＨＣＲ.io", "ghcr.io"),  # full-width letters map to ASCII
        ("a" * 63 + ".io", "a" * 63 + ".io"),
        ("localhost", "localhost"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise_host(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (".", "empty"),
        ("a..b", "empty label"),
        (".ghcr.io", "empty label"),
        ("a" * 64 + ".io", "at most 63"),
        (("a" * 60 + ".") * 5 + "io", "at most 253"),
        ("-bad.io", "hyphens"),
        ("bad-.io", "hyphens"),
        ("under_score.io", "only letters"),
        ("sp ace.io", "only letters"),
        ("10.1.2.3", "IP address"),
        ("fd00::1", "IP address"),
        ("xn--zz-invalid.example", "internationalised"),
    ],
)
def test_normalise_rejects_with_reason(text: str, why: str) -> None:
    with pytest.raises(HostError, match=why):
        normalise_host(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("ghcr.io", "ghcr.io", None), ("registry.corp.example:5000", "registry.corp.example", 5000)],
)
def test_split_port(text: str, host: str, port: int | None) -> None:
    assert split_port(text) == (host, port)


@pytest.mark.parametrize("text", ["ghcr.io:0", "ghcr.io:65536", "ghcr.io:http", "ghcr.io:"])
def test_split_port_rejects(text: str) -> None:
    with pytest.raises(HostError, match="port"):
        split_port(text)


@pytest.mark.parametrize(
    ("text", "pattern", "warns"),
    [
        ("registry.corp.example", Pattern("registry.corp.example", False, None), False),
        ("registry.corp.example:5000", Pattern("registry.corp.example", False, 5000), False),
        ("*.azurecr.io", Pattern("azurecr.io", True, None), False),
        ("*.AzureCR.io.", Pattern("azurecr.io", True, None), False),
        ("*.azurecr.io:443", Pattern("azurecr.io", True, 443), False),
        ("https://ghcr.io/", Pattern("ghcr.io", False, None), True),
        ("https://Registry.Corp.Example:5000/v2/", Pattern("registry.corp.example", False, 5000), True),
    ],
)
def test_parse_pattern(text: str, pattern: Pattern, warns: bool) -> None:
    got, warning = parse_pattern(text)
    assert got == pattern
    assert (warning is not None) == warns


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("*.", "needs a domain"),
        ("*", "only as the whole leftmost label"),
        ("a..b", "empty label"),
        ("*.*.com", "only as the whole leftmost label"),
        ("foo*.example.com", "only as the whole leftmost label"),
        ("*.com", "top-level domain"),
        ("ghcr.io/v2", "no '/'"),
        ("https:///v2", "no host"),
        ("user@ghcr.io", "user information"),
    ],
)
def test_parse_pattern_rejects(text: str, why: str) -> None:
    with pytest.raises(HostError, match=why):
        parse_pattern(text)
