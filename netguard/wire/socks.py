"""Strategy: the client side of a SOCKS4, SOCKS4a or SOCKS5 negotiation, read up to the request.

`read_request` is called with all client bytes seen so far (a negotiation is a few hundred bytes at
most, so each call parses from the start). It returns the request once it is whole (what the proxy
will connect to: a host name, or the 4 / 16 address bytes, and the port, plus where the tunnel's
bytes begin), `NEED_MORE` or `WAITING` while it is incomplete (`WAITING`: the bytes end where the
client must wait for the proxy's answer before it sends on, which SOCKS5 does after its method list
and after its RFC 1929 username/password), or `NOT_SOCKS`.

Where the stream becomes SOCKS: once a proxy would have taken it so far. A SOCKS4 request is SOCKS
from a valid version and command; SOCKS5 from a whole method list and a next message that the
server can accept after it (a request, version 5, if "no authentication" was offered; RFC 1929,
version 1, if username/password was). Before that point, bytes that break the rules are `NOT_SOCKS`
(every SOCKS server would refuse them); after it, they are Malformed, and so is a negotiation
netguard cannot follow: GSS-API (RFC 1961) or a private method, UDP ASSOCIATE (its datagrams name
their own destinations), an address type or command a server would refuse, a host name that a
server might read differently than netguard (NUL, controls, spaces, non-ASCII) or an over-long
field. Neither a username nor a password is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from netguard.wire.errors import Malformed

VERSION_4: Final = 4
VERSION_5: Final = 5
CMD_CONNECT: Final = 1
CMD_BIND: Final = 2
CMD_UDP_ASSOCIATE: Final = 3
ATYP_IPV4: Final = 1
ATYP_DOMAIN: Final = 3
ATYP_IPV6: Final = 4
METHOD_NONE: Final = 0x00
METHOD_GSSAPI: Final = 0x01
METHOD_USERPASS: Final = 0x02
USERPASS_VERSION: Final = 1

# SOCKS4's user id and SOCKS4a's host name are NUL-terminated with no length. Servers bound them
# (Dante: 255-byte names); a longer field is not a client's, and we must not buffer without end.
MAX_SOCKS4_FIELD = 1024
# A host name has at most 253 characters (RFC 1035); SOCKS4a's has no length byte to bound it.
MAX_NAME = 255

_NAME_BYTES = frozenset(range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class Pending:
    """Not whole yet; `waiting`: the bytes end where the client waits for the proxy's answer."""

    waiting: bool


@dataclass(frozen=True, slots=True)
class NotSocks:
    """The bytes are not a SOCKS negotiation any server would take."""

    reason: str


@dataclass(frozen=True, slots=True)
class Request:
    """A whole SOCKS request: what the proxy connects to (`host` for a name, `address` for 4 or 16
    address bytes), the port, the command, and `end`: where the tunnel's bytes begin."""

    version: int
    command: int
    host: str | None
    address: bytes | None
    port: int
    end: int


NEED_MORE = Pending(False)
WAITING = Pending(True)


def looks_like_socks(first_byte: int) -> bool:
    """Cheap check: the version byte of SOCKS4 or SOCKS5."""
    return first_byte in (VERSION_4, VERSION_5)


def read_request(data: bytes) -> Request | Pending | NotSocks:
    """Read a SOCKS negotiation from the client's first bytes. Raises Malformed (see module doc)."""
    if not data:
        return NEED_MORE
    if data[0] == VERSION_4:
        return _socks4(data)
    if data[0] == VERSION_5:
        return _socks5(data)
    return NotSocks(f"version byte {data[0]}")


def _c_string(data: bytes, start: int, limit: int, what: str) -> tuple[bytes, int] | None:
    """The NUL-terminated field at start and the offset after its NUL; None while incomplete."""
    end = data.find(b"\x00", start, start + limit + 1)
    if end < 0:
        if len(data) - start > limit:
            raise Malformed(f"SOCKS4 {what} longer than {limit} bytes")
        return None
    return data[start:end], end + 1


def _socks4(data: bytes) -> Request | Pending | NotSocks:
    # VN CD DSTPORT(2) DSTIP(4) USERID NUL [HOST NUL when DSTIP is 0.0.0.x, x != 0: SOCKS4a]
    if len(data) < 2:
        return NEED_MORE
    command = data[1]
    if command not in (CMD_CONNECT, CMD_BIND):
        return NotSocks(f"SOCKS4 command {command}")
    if len(data) < 8:
        return NEED_MORE
    port = int.from_bytes(data[2:4], "big")
    address = data[4:8]
    user = _c_string(data, 8, MAX_SOCKS4_FIELD, "user id")
    if user is None:
        return NEED_MORE
    _, pos = user
    if address[:3] != b"\x00\x00\x00" or address[3] == 0:
        return Request(VERSION_4, command, None, bytes(address), port, pos)
    host = _c_string(data, pos, MAX_NAME, "host name")
    if host is None:
        return NEED_MORE
    name, end = host
    return Request(VERSION_4, command, _host_name(name), None, port, end)


def _socks5(data: bytes) -> Request | Pending | NotSocks:
    # Method list: VER NMETHODS METHODS...
    if len(data) < 2:
        return NEED_MORE
    count = data[1]
    if count == 0:
        return NotSocks("SOCKS5 method list is empty")
    pos = 2 + count
    if len(data) < pos:
        return NEED_MORE
    offered = frozenset(data[2:pos])
    if len(data) == pos:
        return WAITING  # the proxy chooses a method; the client waits for it
    following = data[pos]
    readable = {METHOD_NONE, METHOD_USERPASS}
    if following == VERSION_5 and METHOD_NONE in offered:
        return _socks5_request(data, pos)
    if following == USERPASS_VERSION and METHOD_USERPASS in offered:
        if METHOD_GSSAPI in offered and pos + 1 < len(data) and data[pos + 1] == 1:
            # GSS-API's first message is 01 01 (version, message type) too: a one-byte username
            # cannot be told from it.
            raise Malformed("SOCKS5: RFC 1929 with a one-byte username or GSS-API, cannot tell")
        after = _userpass(data, pos)
        if after is None:
            return NEED_MORE
        if len(data) == after:
            return WAITING  # the proxy answers the authentication; the client waits for it
        if data[after] != VERSION_5:
            raise Malformed(f"SOCKS5: version {data[after]} where the request belongs")
        return _socks5_request(data, after)
    if offered - readable:
        # The proxy may have chosen a method netguard cannot follow (GSS-API, a private one).
        raise Malformed(f"SOCKS5: methods {sorted(offered - readable)} offered, then bytes netguard cannot follow")
    return NotSocks(f"SOCKS5: byte {following} after the method list")


def _userpass(data: bytes, pos: int) -> int | None:
    # RFC 1929: VER ULEN UNAME PLEN PASSWD
    if len(data) < pos + 2:
        return None
    pos += 2 + data[pos + 1]
    if len(data) < pos + 1:
        return None
    pos += 1 + data[pos]
    return pos if len(data) >= pos else None


def _socks5_request(data: bytes, pos: int) -> Request | Pending:
    # VER CMD RSV ATYP DST.ADDR DST.PORT
    if len(data) < pos + 4:
        return NEED_MORE
    command, atyp = data[pos + 1], data[pos + 3]
    if command == CMD_UDP_ASSOCIATE:
        raise Malformed("SOCKS5 UDP ASSOCIATE: the datagrams name their own destinations")
    if command not in (CMD_CONNECT, CMD_BIND):
        raise Malformed(f"SOCKS5 command {command}")
    start = pos + 4
    if atyp == ATYP_IPV4:
        end = start + 4
    elif atyp == ATYP_IPV6:
        end = start + 16
    elif atyp == ATYP_DOMAIN:
        if len(data) < start + 1:
            return NEED_MORE
        if data[start] == 0:
            raise Malformed("SOCKS5 empty host name")
        end = start + 1 + data[start]
    else:
        raise Malformed(f"SOCKS5 address type {atyp}")
    if len(data) < end + 2:
        return NEED_MORE
    port = int.from_bytes(data[end : end + 2], "big")
    if atyp == ATYP_DOMAIN:
        return Request(VERSION_5, command, _host_name(data[start + 1 : end]), None, port, end + 2)
    return Request(VERSION_5, command, None, bytes(data[start:end]), port, end + 2)


def _host_name(raw: bytes) -> str:
    # A server hands the name to its resolver as a C string: a NUL would cut it short there, and
    # spaces, controls or non-ASCII bytes are read differently by different resolvers.
    if not raw:
        raise Malformed("SOCKS empty host name")
    if len(raw) > MAX_NAME:
        raise Malformed(f"SOCKS host name longer than {MAX_NAME} bytes")
    if not set(raw) <= _NAME_BYTES:
        raise Malformed("SOCKS host name with NUL, control, space or non-ASCII bytes")
    return raw.decode("ascii")
