"""Strategy: DNS messages (RFC 1035) in, frozen values out; blocked replies built from a message.

Everything is read with the `Reader` discipline: names through the cursor, the fixed-size fields of
questions and records inline in `_parse` (check, then one unpack_from; see reader.py). Names:
labels of at most 63 bytes, names of at most 255 wire bytes, and compression pointers that must
point strictly before the previous jump target (dnspython's rule), so a hostile message cannot loop.
Answers keep A, AAAA (rdata length checked), CNAME (rdata fenced) and SVCB/HTTPS (RFC 9460: the
TargetName and the ipv4hint/ipv6hint addresses, the rest fenced and stepped over) data, and step
over every other type by its rdata length. The authority section is stepped over; the additional
section is read for the EDNS OPT record and for the address-carrying records (A, AAAA, SVCB,
HTTPS) a resolver adds there (RFC 9460 §4.2: the target's addresses), which a client may use.

Values are NamedTuples (immutable, and three times cheaper to build than frozen dataclasses; a
response builds several). Names are returned as on the wire, ASCII, without the trailing dot (the
root is ""); a byte outside printable ASCII, a '.' or a '\\' inside a label is written as `\\DDD`
(dnspython's escape), so a label can never masquerade as several labels. A/AAAA data is the raw
4/16 address bytes (the same form as `ip.Packet.src`/`dst`, so the engine matches them without
conversion); CNAME data is the target name; SVCB/HTTPS data is an `Svcb`; any other type has data
None. SVCB rules: a TargetName is read like any name (RFC 9460 forbids compressing it; a pointer is
followed all the same, as dnspython does, so a name cannot hide behind one); SvcParams must each
fit the rdata and a hint's length must be a multiple of its address size (else Malformed); keys
out of order or repeated are not refused (every hint is kept): what a lax client might use is
seen.

`build_blocked_reply` answers a query (or replaces a response) with NXDOMAIN or REFUSED carrying an
RFC 8914 Extended DNS Error when the client sent EDNS (an OPT record may only go to a client that
sent one, RFC 6891 §7). The ID, opcode, RD bit and question section are kept byte for byte.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netguard.wire.errors import Malformed, Truncated
from netguard.wire.reader import Reader

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_SVCB = 64  # RFC 9460
TYPE_HTTPS = 65
SVC_IPV4HINT = 4  # SvcParamKeys (RFC 9460 §14.3.2)
SVC_IPV6HINT = 6
RCODE_NOERROR = 0
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5
EDE_OPTION = 15  # RFC 8914
EDE_BLOCKED = 15
EDE_PROHIBITED = 18

_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080
_DO_BIT = 0x8000  # in the OPT record's TTL field (RFC 3225)

# RFC 1035 §2.3.4.
MAX_LABEL = 63
MAX_NAME_WIRE = 255
# A message holds at most 65535 bytes; capping the records bounds the work a hostile message with
# many compressed names can cause. Real answers carry a few dozen at most.
MAX_RECORDS = 1024
# EDNS UDP payload size we advertise in built replies (the DNS flag day 2020 value).
EDNS_PAYLOAD = 1232
# EXTRA-TEXT is for humans; keeping it short keeps the reply far below 512 bytes.
MAX_EXTRA_TEXT = 200
HEADER_LEN = 12

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_RR_FIXED = _RR.unpack_from
_Q_FIXED = struct.Struct("!HH").unpack_from
_U16_AT = struct.Struct("!H").unpack_from
# A NamedTuple's own __new__ is a Python function; building through tuple.__new__ skips it.
_new = tuple.__new__
_LEN = struct.Struct("!H")

# Label bytes written as-is; every other byte becomes \DDD.
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))
# Maps each of those bytes and "." to itself and every other byte to "a" (which it is not), so
# `name.translate(...) == name` holds exactly for a name that needs no escaping (one C pass;
# translate's deletechars is twice as dear).
_PLAIN_OR_DOT_ONLY = bytes(b if b in _PLAIN or b == 0x2E else 0x61 for b in range(256))


class Question(NamedTuple):
    """One question: name (see module doc), type and class."""

    name: str
    qtype: int
    qclass: int


class Svcb(NamedTuple):
    """SVCB/HTTPS rdata (RFC 9460): priority (0: AliasMode), TargetName ("" for the root, "."),
    and every ipv4hint/ipv6hint address (raw 4/16 bytes), in wire order."""

    priority: int
    target: str
    hints: tuple[bytes, ...]


class ResourceRecord(NamedTuple):
    """One record. `data`: 4/16 raw bytes for A/AAAA, a name for CNAME, an Svcb for SVCB/HTTPS,
    else None."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    data: bytes | str | Svcb | None


class DnsMessage(NamedTuple):
    """A parsed DNS message: header, questions, answers, whether an OPT record is present, the
    A/AAAA/SVCB/HTTPS records of the additional section, and for `build_blocked_reply` where the
    question section ends and the OPT record's TTL field (-1 without one)."""

    id: int
    flags: int
    opcode: int
    rcode: int
    is_response: bool
    truncated: bool
    questions: tuple[Question, ...]
    answers: tuple[ResourceRecord, ...]
    has_edns: bool
    additional: tuple[ResourceRecord, ...] = ()
    question_end: int = HEADER_LEN
    opt_ttl: int = -1


# Per message: offset -> (name bytes, label count, wire length, name) of names already decoded there.
NameCache = dict[int, tuple[bytes, int, int, str]]


def _read_name(r: Reader, seen: NameCache) -> str:
    """Read a possibly compressed name at the cursor; the cursor ends after its first encoding.

    A pointer to an offset where a name was already decoded reuses that result (`seen`): answers
    point at the question and at earlier CNAME targets, so most names cost one lookup."""
    data = r.data
    # Each pointer must go strictly before the last place a name segment started (`limit`).
    entry = limit = pos = r.pos
    end = r.end
    if pos + 1 < end:
        length = data[pos]
        if length >= 0xC0:  # a bare pointer to a name decoded before: the common case in answers
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target < pos:
                known = seen.get(target)
                if known is not None:
                    r.pos = pos + 2
                    return known[3]
        elif not length:
            r.pos = pos + 1
            return ""
    parts: list[bytes] = []
    labels = 0
    wire_len = 1
    resume = -1
    jumps: list[tuple[int, int, int]] = []
    while True:
        if pos >= end:
            raise (Malformed if r.fences else Truncated)(f"name runs past offset {end}")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > MAX_LABEL:
            if length & 0xC0 != 0xC0:
                raise Malformed(f"label type 0x{length & 0xC0:02x}")
            if pos + 1 >= end:
                raise (Malformed if r.fences else Truncated)("pointer cut short")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                raise Malformed(f"compression pointer to {target} does not point backwards")
            if resume < 0:
                resume = pos + 2
            known = seen.get(target)
            if known is not None:
                if not parts:  # a bare pointer to a known name: the common case in answers
                    r.pos = resume
                    return known[3]
                wire_len += known[2] - 1
                if wire_len > MAX_NAME_WIRE:
                    raise Malformed("name longer than 255 bytes")
                parts.append(known[0])
                labels += known[1]
                break
            jumps.append((target, len(parts), wire_len))
            # Pointers may reach before a fence (rdata names point into earlier records).
            end = len(data)
            limit = pos = target
            continue
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE:
            raise Malformed("name longer than 255 bytes")
        start = pos + 1
        pos = start + length
        if pos > end:
            raise (Malformed if r.fences else Truncated)("label runs past the end")
        parts.append(data[start:pos])
        labels += 1
    r.pos = resume if resume >= 0 else pos
    if not labels:
        return ""
    joined = b".".join(parts)
    # Fast path: printable ASCII and no '.' or '\\' inside a label (the dots are the joins).
    if joined.translate(_PLAIN_OR_DOT_ONLY) != joined or joined.count(b".") != labels - 1:
        # Only clean names are cached, so only the last part can be a cached (clean) suffix.
        tail = parts[-1] if len(parts) < labels else None
        raw = parts[:-1] if tail is not None else parts
        return ".".join([_escape(label) for label in raw] + ([tail.decode("ascii")] if tail is not None else []))
    name = joined.decode("ascii")
    seen[entry] = (joined, labels, wire_len, name)
    for target, index, wire_before in jumps:
        suffix = b".".join(parts[index:])
        seen[target] = (suffix, labels - index, wire_len - wire_before + 1, suffix.decode("ascii"))
    return name


def _escape(label: bytes) -> str:
    return "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label)


def _parse(data: bytes) -> DnsMessage:
    """Parse a message.

    The fixed-size fields are read inline (check against the end, then one unpack_from call); names
    go through `_read_name` with the cursor `r`, whose position is kept in step. Outside a record's
    rdata no fence is set, so an overrun here is Truncated."""
    end = len(data)
    if end < HEADER_LEN:
        raise _short(HEADER_LEN, 0, end)
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount + ancount + nscount + arcount > MAX_RECORDS:
        raise Malformed(f"more than {MAX_RECORDS} records")
    r = Reader(data, HEADER_LEN)
    seen: NameCache = {}
    questions = []
    for _ in range(qdcount):
        name = _read_name(r, seen)
        pos = r.pos
        if pos + 4 > end:
            raise _short(4, pos, end)
        r.pos = pos + 4
        questions.append(_new(Question, (name, *_Q_FIXED(data, pos))))
    question_end = r.pos
    answers = []
    for _ in range(ancount):
        name = _read_name(r, seen)
        pos = r.pos
        if pos + 10 > end:
            raise _short(10, pos, end)
        rtype, rclass, ttl, rdlength = _RR_FIXED(data, pos)
        pos += 10
        stop = pos + rdlength
        rdata: bytes | str | Svcb | None = None
        # A and AAAA lengths are judged before the bounds (a wrong length is Malformed even when cut).
        if rtype == TYPE_A and rclass == 1 and rdlength != 4:
            raise Malformed(f"A record of {rdlength} bytes")
        if rtype == TYPE_AAAA and rclass == 1 and rdlength != 16:
            raise Malformed(f"AAAA record of {rdlength} bytes")
        if stop > end:
            raise _short(rdlength, pos, end)
        if rclass == 1 and rtype in (TYPE_A, TYPE_AAAA):
            rdata = data[pos:stop]
        elif rtype == TYPE_CNAME:
            # The target name is fenced by rdlength: running past it is Malformed.
            r.pos = pos
            r.end = stop
            r.fences = 1
            rdata = _read_name(r, seen)
            r.end = end
            r.fences = 0
            if r.pos != stop:
                raise Malformed(f"block ends at {stop} but its contents end at {r.pos}")
        elif rtype in (TYPE_HTTPS, TYPE_SVCB):
            rdata = _read_svcb(r, seen, pos, stop)
        r.pos = stop
        answers.append(_new(ResourceRecord, (name, rtype, rclass, ttl, rdata)))
    opt_ttl = -1
    additional: list[ResourceRecord] = []
    # Authority records are only stepped over; an additional record may be the OPT record or carry
    # addresses.
    for i in range(nscount + arcount):
        name = _read_name(r, seen)
        pos = r.pos
        if pos + 10 > end:
            raise _short(10, pos, end)
        rtype, rclass, ttl, rdlength = _RR_FIXED(data, pos)
        pos += 10
        stop = pos + rdlength
        if stop > end:
            raise _short(rdlength, pos, end)
        r.pos = stop
        if i < nscount:
            continue
        if rtype == TYPE_OPT:
            if opt_ttl >= 0 or name:
                raise Malformed("second OPT record or OPT not at the root")
            opt_ttl = ttl
        elif rclass == 1 and rtype in (TYPE_A, TYPE_AAAA):
            if rdlength != (4 if rtype == TYPE_A else 16):
                raise Malformed(f"{'A' if rtype == TYPE_A else 'AAAA'} record of {rdlength} bytes")
            additional.append(_new(ResourceRecord, (name, rtype, rclass, ttl, data[pos:stop])))
        elif rtype in (TYPE_HTTPS, TYPE_SVCB):
            additional.append(_new(ResourceRecord, (name, rtype, rclass, ttl, _read_svcb(r, seen, pos, stop))))
            r.pos = stop
    # Trailing bytes after the last record are ignored, as resolvers do.
    return _new(
        DnsMessage,
        (
            ident,
            flags,
            (flags >> 11) & 0xF,
            flags & 0xF,
            bool(flags & _FLAG_QR),
            bool(flags & _FLAG_TC),
            tuple(questions),
            tuple(answers),
            opt_ttl >= 0,
            tuple(additional) if additional else (),
            question_end,
            opt_ttl,
        ),
    )


def _read_svcb(r: Reader, seen: NameCache, pos: int, stop: int) -> Svcb:
    """SVCB/HTTPS rdata in data[pos:stop] (already checked to lie inside the message): priority,
    TargetName (fenced by the rdata), then SvcParams, each key, length and value inside the rdata;
    ipv4hint/ipv6hint values are lists of 4/16-byte addresses."""
    data = r.data
    if pos + 2 > stop:
        raise Malformed(f"SVCB record of {stop - pos} bytes")
    priority = (data[pos] << 8) | data[pos + 1]
    end = r.end
    r.pos = pos + 2
    r.end = stop
    r.fences = 1
    target = _read_name(r, seen)
    r.end = end
    r.fences = 0
    pos = r.pos
    hints: list[bytes] = []
    while pos < stop:
        if pos + 4 > stop:
            raise Malformed(f"SvcParam header runs past the record at offset {pos}")
        key = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        value_end = pos + length
        if value_end > stop:
            raise Malformed(f"SvcParam {key} of {length} bytes runs past the record")
        if key in (SVC_IPV4HINT, SVC_IPV6HINT):
            size = 4 if key == SVC_IPV4HINT else 16
            if length % size:
                raise Malformed(f"{'ipv4hint' if size == 4 else 'ipv6hint'} of {length} bytes")
            hints += [data[a : a + size] for a in range(pos, value_end, size)]
        pos = value_end
    return _new(Svcb, (priority, target, tuple(hints)))


def _short(need: int, pos: int, end: int) -> Truncated:
    return Truncated(f"need {need} bytes at offset {pos}, have {end - pos}")


def parse_message(data: bytes) -> DnsMessage:
    """Parse a DNS message (UDP payload, or one message taken out of a TCP stream). Raises ParseError."""
    return _parse(data)


def looks_like_response(payload: bytes, offset: int = 0) -> bool:
    """Whether payload[offset:] begins with the header of a DNS response to a standard query, as the
    firewall's u32 test matches it on ports other than 53: QR set, opcode QUERY (0), one question."""
    return (len(payload) >= offset + HEADER_LEN and payload[offset + 2] & 0xF8 == 0x80
            and payload[offset + 4] == 0 and payload[offset + 5] == 1)


def split_tcp_messages(buf: bytes) -> tuple[list[bytes], bytes]:
    """Split DNS-over-TCP bytes (2-byte length prefix each) into whole messages and the leftover."""
    messages = []
    r = Reader(buf)
    while r.remaining() >= 2:
        start = r.pos
        length = r.u16()
        if length < HEADER_LEN:
            raise Malformed(f"DNS-over-TCP message of {length} bytes")
        if r.remaining() < length:
            r.pos = start
            break
        messages.append(r.take(length))
    return messages, buf[r.pos :]


def frame_tcp(message: bytes) -> bytes:
    """Prefix a message with its 2-byte length for DNS over TCP."""
    if len(message) > 0xFFFF:
        raise Malformed("message too long for DNS over TCP")
    return _LEN.pack(len(message)) + message


_RCODES = {"NXDOMAIN": RCODE_NXDOMAIN, "REFUSED": RCODE_REFUSED}


def build_blocked_reply(message: bytes, *, rcode: str, info_code: int, text: str,
                        parsed: DnsMessage | None = None) -> bytes:
    """Build an NXDOMAIN or REFUSED reply to `message` (a query or the response being replaced).

    Keeps the ID, opcode, RD bit and the question section. When the client used EDNS, the reply
    carries an OPT record with an Extended DNS Error (`info_code`, e.g. EDE_BLOCKED or
    EDE_PROHIBITED) whose EXTRA-TEXT is `text` (UTF-8, cut to MAX_EXTRA_TEXT bytes). `parsed`:
    `parse_message(message)` when the caller has it already (it is not parsed again).
    Raises ParseError if `message` cannot be parsed, ValueError for a bad rcode or info code.
    """
    if rcode not in _RCODES:
        raise ValueError(f"rcode must be NXDOMAIN or REFUSED, not {rcode!r}")
    if not 0 <= info_code <= 0xFFFF:
        raise ValueError(f"info code {info_code} out of range")
    if parsed is None:
        parsed = _parse(message)
    question_end, opt_ttl = parsed.question_end, parsed.opt_ttl
    flags = _FLAG_QR | _FLAG_RA | (parsed.flags & (0x7800 | _FLAG_RD)) | _RCODES[rcode]
    header = _HEADER.pack(parsed.id, flags, len(parsed.questions), 0, 0, 1 if parsed.has_edns else 0)
    out = header + message[HEADER_LEN:question_end]
    if parsed.has_edns:
        extra = text.encode("utf-8")[:MAX_EXTRA_TEXT].decode("utf-8", "ignore").encode("utf-8")
        option = struct.pack("!HHH", EDE_OPTION, 2 + len(extra), info_code) + extra
        out += b"\x00" + _RR.pack(TYPE_OPT, EDNS_PAYLOAD, opt_ttl & _DO_BIT, len(option)) + option
    return out
