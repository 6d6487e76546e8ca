"""Address literals as a proxy's resolver reads them: text -> the 4 or 16 address bytes, or None.

Strategy: a host field (an HTTP Host header or request target, a CONNECT target, a SOCKS4a or SOCKS5
domain) that a proxy hands to getaddrinfo is an address, not a name, whenever glibc reads it as one
numerically. That is more than dotted decimal: `inet_aton` takes one to four parts, each decimal,
octal (leading 0) or hex (0x), the last part filling the remaining bytes (`10.77.103`, `0x0a4d0067`,
`012.0115.0.0147`), and `inet_pton` takes IPv6 with an embedded dotted quad and, in getaddrinfo, a
`%scope` suffix. `parse_address` follows those functions rule for rule, so what it returns None for a
proxy also resolves as a name (one leniency: an interface name as the scope of a link-local address,
whose existence is the machine's, is taken). An IPv4-mapped IPv6 address
(`::ffff:a.b.c.d`) is returned as the IPv4 address it reaches: a dual-stack socket connects to it over
IPv4. Pure string work; the tests check it against the C library's own getaddrinfo.
"""

from __future__ import annotations

_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_OCTAL = frozenset("01234567")
# inet_aton: the largest value of the last part, by the number of parts before it.
_LAST_MAX = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)
_MAPPED = bytes(10) + b"\xff\xff"
# A host field longer than this is no address literal (the longest IPv6 text with an embedded quad and
# a scope is far shorter); it saves scanning a long name.
MAX_LITERAL = 128


def parse_address(text: str) -> bytes | None:
    """The address bytes (4 for IPv4, also for an IPv4-mapped IPv6 address; else 16) that `text`
    names as glibc's getaddrinfo reads a numeric host, or None if it is not an address literal."""
    if not text or len(text) > MAX_LITERAL:
        return None
    if ":" in text:
        address, percent, scope = text.partition("%")
        v6 = _inet_pton6(address)
        if v6 is None or (percent and not _scope_ok(v6, scope)):
            return None
        if v6.startswith(_MAPPED):
            return v6[12:]
        return v6
    if text[0] not in _DIGITS:  # every inet_aton part starts with a digit
        return None
    return _inet_aton(text)


def is_address(text: str) -> bool:
    """Whether `text` is an address literal (see parse_address)."""
    return parse_address(text) is not None


def _scope_ok(address: bytes, scope: str) -> bool:
    """glibc's scope suffix: a number up to 2^32 - 1, or for a link-local (unicast or multicast) or
    node-local multicast address an interface name (which interfaces exist is not known here: any)."""
    if scope and set(scope) <= _DIGITS:
        return int(scope) <= 0xFFFFFFFF
    link_local = address[0] == 0xFE and address[1] & 0xC0 == 0x80
    multicast_local = address[0] == 0xFF and address[1] & 0x0F in (1, 2)
    return bool(scope) and (link_local or multicast_local)


def _number(part: str) -> int | None:
    """One inet_aton part: C's strtoul with base 0, which must use up the whole part."""
    if not part or part[0] not in _DIGITS:
        return None
    if part[0] == "0" and len(part) > 1:
        if part[1] in "xX":
            digits = part[2:]
            if not digits or not set(digits) <= _HEX:
                return None
            return int(digits, 16)
        if not set(part) <= _OCTAL:
            return None
        return int(part, 8)
    if not set(part) <= _DIGITS:
        return None
    return int(part)


def _inet_aton(text: str) -> bytes | None:
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values = [_number(p) for p in parts]
    head: list[int] = []
    for value in values[:-1]:
        if value is None or value > 0xFF:
            return None
        head.append(value)
    last = values[-1]
    if last is None or last > _LAST_MAX[len(head)]:
        return None
    word = last
    for i, value in enumerate(head):
        word |= value << (24 - 8 * i)
    return word.to_bytes(4, "big")


def _inet_pton4(text: str) -> bytes | None:
    """Strict dotted decimal, as inet_pton: four parts, no leading zeros, each at most 255."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    out = bytearray()
    for part in parts:
        if not part or len(part) > 3 or not set(part) <= _DIGITS or (len(part) > 1 and part[0] == "0"):
            return None
        value = int(part)
        if value > 0xFF:
            return None
        out.append(value)
    return bytes(out)


def _inet_pton6(text: str) -> bytes | None:
    """inet_pton(AF_INET6): hex groups of 1 to 4 digits, one '::' at most, a dotted quad last."""
    if text.startswith(":") and not text.startswith("::"):
        return None
    if text.endswith(":") and not text.endswith("::"):
        return None
    if text.count("::") > 1 or ":::" in text:
        return None
    head_text, gap, tail_text = text.partition("::")
    head = _groups(head_text, last_may_be_quad=not gap)
    tail = _groups(tail_text, last_may_be_quad=True) if gap else b""
    if head is None or tail is None:
        return None
    if gap:
        if len(head) + len(tail) > 14:
            return None
        return head + bytes(16 - len(head) - len(tail)) + tail
    return head if len(head) == 16 else None


def _groups(text: str, *, last_may_be_quad: bool) -> bytes | None:
    if not text:
        return b""
    groups = text.split(":")
    out = bytearray()
    for i, group in enumerate(groups):
        if "." in group:
            if i != len(groups) - 1 or not last_may_be_quad:
                return None
            quad = _inet_pton4(group)
            if quad is None:
                return None
            out += quad
            continue
        if not group or len(group) > 4 or not set(group) <= _HEX:
            return None
        out += int(group, 16).to_bytes(2, "big")
    return bytes(out)
