"""Host names and host patterns, normalised in one place.

Strategy: every name that reaches a decision (from a policy file, the command line, a TLS SNI, an
HTTP Host header or a DNS answer) goes through `normalise_host`, so matching can compare plain
strings: lower case, no trailing dot, IDNA (UTS 46, non-transitional) A-labels, LDH labels only.
ASCII names skip the idna library unless they carry an A-label, because this runs once per new
connection on the daemon's hot path.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit

import idna

MAX_NAME = 253  # RFC 1035 name length in text form, without the trailing dot
MAX_LABEL = 63  # RFC 1035 label length
_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_IPV4 = re.compile(r"\d+(?:\.\d+){3}")


class HostError(ValueError):
    """A host name or pattern that cannot be used; the message says why."""


def normalise_host(text: str) -> str:
    """Return the canonical form of a host name, or raise HostError saying what is wrong."""
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise HostError("empty host name")
    if name.isascii():
        name = name.lower()
        if "xn--" in name:
            name = _idna(name)
    else:
        name = _idna(name)
    _check_ldh(name, text)
    return name


def _idna(name: str) -> str:
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as e:
        raise HostError(f"not a valid internationalised name: {e}") from None


def _check_ldh(name: str, original: str) -> None:
    if len(name) > MAX_NAME:
        raise HostError(f"name is {len(name)} characters long; at most {MAX_NAME} are allowed")
    if _IPV4.fullmatch(name) or ":" in name:
        raise HostError(f"{original!r} is an IP address, not a host name")
    for label in name.split("."):
        if not label:
            raise HostError(f"empty label in {original!r} (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL:
            raise HostError(f"label {label[:20]!r}... is {len(label)} characters; at most {MAX_LABEL}")
        if not _LDH.fullmatch(label):
            raise HostError(
                f"label {label!r} in {original!r}: only letters, digits and inner hyphens are allowed"
            )


def split_port(text: str) -> tuple[str, int | None]:
    """Split `host[:port]` into its parts; the port must be 1..65535."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        return text, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HostError(f"port {port_text!r} in {text!r}: expected a number from 1 to 65535")
    return host, int(port_text)


class Pattern(NamedTuple):
    """A policy host pattern: `host`, `*.domain` (one or more labels below domain), optional port.
    (The pattern table does not keep these: it is keyed by the name string, see table.py.)"""

    name: str  # the exact host, or the domain below which a wildcard matches
    wildcard: bool
    port: int | None

    def __str__(self) -> str:
        text = f"*.{self.name}" if self.wildcard else self.name
        return text if self.port is None else f"{text}:{self.port}"


def parse_pattern(text: str) -> tuple[Pattern, str | None]:
    """Parse a host pattern as written in a policy; return it and a warning, if the text was
    accepted only after rewriting (a pasted URL)."""
    warning = None
    raw = text.strip()
    if "://" in raw:
        parts = urlsplit(raw)
        if not parts.netloc:
            raise HostError(f"{text!r} looks like a URL but has no host")
        raw = parts.netloc
        warning = f"{text!r} is a URL; using {raw!r} (scheme and path are ignored)"
    elif "/" in raw:
        raise HostError(f"{text!r}: a host pattern has no '/' (write the host, or paste a whole URL)")
    if "@" in raw:
        raise HostError(f"{text!r}: user information is not part of a host pattern")
    host, port = split_port(raw)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise HostError(f"{text!r}: '*' is allowed only as the whole leftmost label, as in '*.example.com'")
    if wildcard and not host.strip("."):
        raise HostError(f"{text!r}: a wildcard needs a domain after '*.'")
    name = normalise_host(host)
    if wildcard and "." not in name:
        raise HostError(f"{text!r} would match a whole top-level domain; name a domain below it")
    return Pattern(name, wildcard, port), warning
