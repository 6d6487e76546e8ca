"""Address literals: netguard reads a host field as an address exactly when the C library's
getaddrinfo (AI_NUMERICHOST: glibc's inet_aton and inet_pton, and a scope suffix) does, and gives
the same address. The oracle is this machine's libc."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from netguard.wire.addr import MAX_LITERAL, is_address, parse_address


def libc(text: str) -> bytes | None:
    """What getaddrinfo makes of text as a numeric host (None: not numeric); mapped IPv6 as IPv4. The
    host goes in as UTF-8 bytes, as a C proxy hands it over (a str would pass Python's IDNA codec)."""
    if "\x00" in text:
        return None
    try:
        infos = socket.getaddrinfo(text.encode(), None, flags=socket.AI_NUMERICHOST, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    address = ipaddress.ip_address(str(infos[0][4][0]).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


@pytest.mark.parametrize("text, address", [
    ("10.77.0.103", "10.77.0.103"),
    ("10.77.103", "10.77.0.103"),  # the last part fills the remaining bytes
    ("10.5046375", "10.77.0.103"),
    ("172818535", "10.77.0.103"),  # one integer
    ("0x0a4d0067", "10.77.0.103"),  # hex
    ("0XA.0x4D.0.0x67", "10.77.0.103"),
    ("012.0115.0.0147", "10.77.0.103"),  # octal
    ("00000000000000000012.77.0.103", "10.77.0.103"),
    ("::ffff:10.77.0.103", "10.77.0.103"),  # IPv4-mapped: a dual-stack socket reaches the IPv4 address
    ("::ffff:a4d:67", "10.77.0.103"),
    ("fd77::103", "fd77::103"),
    ("FD77:0:0:0:0:0:0:103", "fd77::103"),
    ("fe80::1%lo", "fe80::1"),  # getaddrinfo takes a scope: an interface for link-local addresses
    ("fd77::103%1", "fd77::103"),  # a number for any
    ("::10.77.0.103", "::a4d:67"),  # IPv4-compatible: an IPv6 address
    ("1:2:3:4:5:6:10.77.0.103", "1:2:3:4:5:6:a4d:67"),
])
def test_literals_a_resolver_reads(text: str, address: str) -> None:
    assert parse_address(text) == ipaddress.ip_address(address).packed
    assert libc(text) == parse_address(text)


@pytest.mark.parametrize("text", [
    "ghcr.io", "1.2.3.4.", "1.2.3.4 ", " 1.2.3.4", "1..2", ".1", "08.1", "0x", "0x.1", "1.2.3.09", "+1",
    "4294967296", "0x100000000", "1.16777216", "1.2.65536", "256.1.1.1", "1.2.3.4.5", "1e1", "",
    "::ffff:01.2.3.4", "::ffff:1.2.3", "00001::", "1::2::3", ":1::", "1:", "fe80::1%", "[::1]", "1.2.3.4%lo",
    "::ffff:0x1.2.3.4", "1:2:3:4:5:6:7:8:9", "1.2.3.4::", "0x7f.1x", "fd77::1%lo", "fe80::1%4294967296",
])
def test_not_literals(text: str) -> None:
    assert parse_address(text) is None and not is_address(text)
    assert libc(text) is None


_PARTS = st.one_of(
    st.integers(0, 0x1FFFFFFFF).map(str),
    st.integers(0, 0x1FFFFFFFF).map(lambda n: f"0x{n:x}"),
    st.integers(0, 0x1FFFFFFFF).map(lambda n: f"0{n:o}"),
    st.text("0123456789abcdefxX", min_size=0, max_size=6),
)


@settings(max_examples=3000)
@given(parts=st.lists(_PARTS, min_size=1, max_size=5))
def test_inet_aton_forms_agree_with_libc(parts: list[str]) -> None:
    text = ".".join(parts)
    assert parse_address(text) == libc(text), text


@settings(max_examples=3000)
@given(text=st.text("0123456789abcdefABCDEF:.%lox", max_size=45))
@example("::ffff:1.2.3.4%lo")
@example("1::")
@example("::")
@example(":::")
def test_ipv6_forms_agree_with_libc(text: str) -> None:
    scope = text.partition("%")[2]
    assume((scope.isascii() and scope.isdigit()) or scope in ("", "lo"))  # other interface names are this machine's
    assert parse_address(text) == libc(text), text


@given(text=st.text(max_size=60))
def test_any_text_agrees_with_libc(text: str) -> None:
    scope = text.partition("%")[2]
    assume((scope.isascii() and scope.isdigit()) or scope in ("", "lo") or ":" not in text)
    assert parse_address(text) == libc(text), text


def test_long_text_is_no_literal() -> None:
    assert parse_address("1" * (MAX_LITERAL + 1)) is None
