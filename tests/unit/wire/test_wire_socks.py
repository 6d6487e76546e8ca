"""SOCKS4, SOCKS4a and SOCKS5 negotiations, client side: requests built by scapy (the oracle, for
what its SOCKS layer can build) and by hand after RFC 1928 / RFC 1929 / the SOCKS4(a) notes; every
prefix is pending, where the client waits for the proxy, what is not SOCKS and what is Malformed."""

# scapy's SOCKS layer carries no annotations.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.contrib.socks import SOCKS, SOCKS4Request, SOCKS5Request

from netguard.wire import socks
from netguard.wire.errors import Malformed, ParseError

NONE_ONLY = b"\x05\x01\x00"  # SOCKS5 method list: "no authentication"
WITH_AUTH = b"\x05\x02\x00\x02"  # "no authentication" and username/password


def userpass(user: bytes, password: bytes) -> bytes:
    return b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password


def request5_name(name: bytes, port: int, command: int = 1) -> bytes:
    return bytes((5, command, 0, 3, len(name))) + name + port.to_bytes(2, "big")


def test_socks4_from_scapy() -> None:
    data = bytes(SOCKS(vn=4) / SOCKS4Request(cd=1, dstport=443, dst="10.77.0.103", userid=b"alice"))
    assert socks.read_request(data) == socks.Request(4, 1, None, bytes([10, 77, 0, 103]), 443, len(data))


def test_socks4a_names_a_host() -> None:
    head = bytes(SOCKS(vn=4) / SOCKS4Request(cd=1, dstport=443, dst="0.0.0.1", userid=b""))
    data = head + b"ghcr.io\x00"
    assert socks.read_request(data) == socks.Request(4, 1, "ghcr.io", None, 443, len(data))
    bind = bytes(SOCKS(vn=4) / SOCKS4Request(cd=2, dstport=5000, dst="0.0.0.255", userid=b"u")) + b"quay.io\x00"
    request = socks.read_request(bind)
    assert isinstance(request, socks.Request) and (request.command, request.host) == (2, "quay.io")


@pytest.mark.parametrize("address", ["10.77.0.103", "fd77::103"])
def test_socks5_addresses_from_scapy(address: str) -> None:
    atyp = 1 if "." in address else 4
    request = bytes(SOCKS() / SOCKS5Request(cd=1, atyp=atyp, addr=address, port=8443))
    data = NONE_ONLY + request
    assert socks.read_request(data) == socks.Request(5, 1, None, ipaddress.ip_address(address).packed, 8443,
                                                     len(data))


def test_socks5_name_with_and_without_authentication() -> None:
    plain = NONE_ONLY + request5_name(b"ghcr.io", 443)
    assert socks.read_request(plain) == socks.Request(5, 1, "ghcr.io", None, 443, len(plain))
    auth = WITH_AUTH + userpass(b"user", b"secret") + request5_name(b"ghcr.io", 443)
    assert socks.read_request(auth) == socks.Request(5, 1, "ghcr.io", None, 443, len(auth))
    tunnel = auth + b"\x16\x03\x01"  # the tunnel's bytes begin where the request ends
    assert socks.read_request(tunnel) == socks.Request(5, 1, "ghcr.io", None, 443, len(auth))


def test_every_prefix_is_pending_and_waits_where_the_client_waits() -> None:
    auth = WITH_AUTH + userpass(b"user", b"secret")
    data = auth + request5_name(b"registry.example", 443)
    waits = {len(WITH_AUTH), len(auth)}  # after the method list and after the authentication
    for cut in range(1, len(data)):
        result = socks.read_request(data[:cut])
        assert result == (socks.WAITING if cut in waits else socks.NEED_MORE), cut
    socks4 = bytes(SOCKS(vn=4) / SOCKS4Request(cd=1, dstport=443, dst="0.0.0.9", userid=b"bob")) + b"a.example\x00"
    for cut in range(1, len(socks4)):
        assert socks.read_request(socks4[:cut]) == socks.NEED_MORE


@pytest.mark.parametrize("data", [
    b"\x04\x03\x01\xbb\x0a\x4d\x00\x67\x00",  # SOCKS4 command 3 does not exist
    b"\x05\x00",  # an empty method list: every server answers "no acceptable method"
    NONE_ONLY + b"\x00\x00\x00",  # no server takes version 0 after the method list
    b"\x05\x01\x02\x05\x01\x00\x01",  # only username/password offered, yet a request follows
    b"\x06\x01\x00",
])
def test_not_socks(data: bytes) -> None:
    assert isinstance(socks.read_request(data), socks.NotSocks)


@pytest.mark.parametrize("data, why", [
    (NONE_ONLY + bytes((5, 3, 0, 1, 0, 0, 0, 0, 0, 0)), "UDP ASSOCIATE"),
    (NONE_ONLY + bytes((5, 9, 0, 1, 10, 0, 0, 1, 0, 80)), "command"),
    (NONE_ONLY + bytes((5, 1, 0, 2, 10, 0, 0, 1, 0, 80)), "address type"),
    (NONE_ONLY + request5_name(b"", 443), "empty"),
    (NONE_ONLY + request5_name(b"ghcr.io\x00.allowed.test", 443), "NUL"),
    (NONE_ONLY + request5_name(b"ghcr io", 443), "space"),
    (NONE_ONLY + request5_name("ghcr.ïo".encode(), 443), "non-ASCII"),
    (b"\x05\x03\x00\x01\x02\x01\x01u\x01p", "GSS-API"),  # a one-byte username, or GSS-API's 01 01
    (b"\x05\x01\x01\x01\x01\x00\x04", "methods"),  # only GSS-API offered: its messages are not read
    (b"\x05\x02\x00\x80\x07", "methods"),  # a private method offered, then bytes that are no request
    (WITH_AUTH + userpass(b"u", b"p")[:0] + b"\x01\x02us\x01p\x04", "version"),
    (b"\x04\x01\x01\xbb\x00\x00\x00\x01" + b"u" * (socks.MAX_SOCKS4_FIELD + 1), "user id"),
    (b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00" + b"h" * (socks.MAX_NAME + 1), "host name"),
])
def test_malformed(data: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        socks.read_request(data)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        result = socks.read_request(data)
        if isinstance(result, socks.Request):
            assert 0 < result.end <= len(data)
            assert (result.host is None) != (result.address is None)


@given(name=st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?", fullmatch=True), port=st.integers(0, 65535),
       user=st.binary(min_size=2, max_size=255), password=st.binary(max_size=255))
def test_hypothesis_requests(name: str, port: int, user: bytes, password: bytes) -> None:
    data = WITH_AUTH + userpass(user, password) + request5_name(name.encode(), port)
    assert socks.read_request(data) == socks.Request(5, 1, name, None, port, len(data))
