"""Test helpers: a tiny pcap reader and the corpus files (the parsers under test get raw IP bytes)."""

from __future__ import annotations

import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
DATA = CORPUS.parent

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276


def read_pcap(path: Path) -> list[bytes]:
    """Return each packet of a classic pcap file as raw IP bytes (link-layer header removed)."""
    blob = path.read_bytes()
    magic = blob[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    linktype = struct.unpack_from(endian + "I", blob, 20)[0]
    packets = []
    pos = 24
    while pos + 16 <= len(blob):
        _sec, _frac, caplen, _origlen = struct.unpack_from(endian + "IIII", blob, pos)
        frame = blob[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        packets.append(_strip_link(frame, linktype))
    return packets


def _strip_link(frame: bytes, linktype: int) -> bytes:
    if linktype == LINKTYPE_RAW:
        return frame
    if linktype == LINKTYPE_ETHERNET:
        offset = 14
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        while ethertype in (0x8100, 0x88A8):
            ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
            offset += 4
        return frame[offset:]
    if linktype == LINKTYPE_LINUX_SLL:
        return frame[16:]
    if linktype == LINKTYPE_LINUX_SLL2:
        return frame[20:]
    raise ValueError(f"link type {linktype} not supported")


def corpus_files(prefix: str) -> list[Path]:
    """Corpus pcaps whose name starts with `prefix`."""
    return sorted(CORPUS.glob(prefix + "*.pcap"))


def corpus_table() -> dict[str, dict[str, str]]:
    """The README table of the corpus: file name -> column name -> cell text."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in (CORPUS / "README.md").read_text().splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if not header:
            header = cells
            continue
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


# --- TLS and QUIC builders (test side: the parsers under test never see these helpers) ---


def u8(data: bytes) -> bytes:
    return struct.pack("!B", len(data)) + data


def u16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def u24(data: bytes) -> bytes:
    return struct.pack("!I", len(data))[1:] + data


def extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!H", ext_type) + u16(body)


def sni_extension(*names: bytes) -> bytes:
    return extension(0, u16(b"".join(b"\x00" + u16(name) for name in names)))


def client_hello(extensions: list[bytes], *, random: bytes = bytes(32), session: bytes = bytes(32)) -> bytes:
    """A ClientHello handshake message (type, 3-byte length, body)."""
    suites = struct.pack("!6H", 0x3A3A, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F)
    body = b"\x03\x03" + random + u8(session) + u16(suites) + b"\x01\x00" + u16(b"".join(extensions))
    return b"\x01" + u24(body)


def chromium_like_hello(sni: bytes = b"registry.blocked.test") -> bytes:
    """A ~1.9 KB post-quantum ClientHello shaped like Chromium's: GREASE, ECH GREASE, X25519MLKEM768."""
    key_shares = (
        struct.pack("!H", 0x4A4A) + u16(b"\x00")
        + struct.pack("!H", 0x11EC) + u16(bytes(range(256)) * 4 + bytes(192))
        + struct.pack("!H", 0x001D) + u16(bytes(32))
    )
    exts = [
        extension(0x2A2A, b""),
        sni_extension(sni),
        extension(23, b""),
        extension(0xFF01, b"\x00"),
        extension(10, u16(struct.pack("!4H", 0x4A4A, 0x11EC, 0x001D, 0x0017))),
        extension(11, b"\x01\x00"),
        extension(35, b""),
        extension(16, u16(u8(b"h2") + u8(b"http/1.1"))),
        extension(5, b"\x01\x00\x00\x00\x00"),
        extension(13, u16(struct.pack("!8H", 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601))),
        extension(18, b""),
        extension(51, u16(key_shares)),
        extension(45, b"\x01\x01"),
        extension(43, u8(struct.pack("!3H", 0x6A6A, 0x0304, 0x0303))),
        extension(27, b"\x02\x00\x02"),
        extension(17513, u16(u8(b"h2"))),
        extension(0xFE0D, b"\x00\x00\x01\x00\x01\x42\x00\x20" + bytes(32) + u16(bytes(336))),
        extension(0x1A1A, b"\x00"),
    ]
    return client_hello(exts)


def records(handshake: bytes, sizes: list[int] | None = None, version: int = 0x0301) -> bytes:
    """Wrap a handshake message in TLS records of the given fragment sizes (one record if None)."""
    out = b""
    pos = 0
    for size in sizes or [len(handshake)]:
        if pos >= len(handshake):
            break
        chunk = handshake[pos : pos + max(1, size)]
        pos += len(chunk)
        out += struct.pack("!BHH", 22, version, len(chunk)) + chunk
    if pos < len(handshake):
        out += struct.pack("!BHH", 22, version, len(handshake) - pos) + handshake[pos:]
    return out


def varint(value: int) -> bytes:
    if value < 0x40:
        return struct.pack("!B", value)
    if value < 0x4000:
        return struct.pack("!H", value | 0x4000)
    if value < 0x40000000:
        return struct.pack("!I", value | 0x80000000)
    return struct.pack("!Q", value | 0xC000000000000000)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect_initial(dcid: bytes, payload: bytes, *, pn: int = 0, scid: bytes = b"\x01\x02\x03\x04",
                    version: int = 1, pad_to: int = 1200, key_dcid: bytes | None = None, token: bytes = b"",
                    first: int | None = None) -> bytes:
    """Build and protect a client Initial packet (RFC 9001 §5; v2: RFC 9369), padded so the datagram
    is `pad_to`. `key_dcid`: protect with the keys of another DCID (as a client does once the server
    chose its connection ID); `first`: the first byte before header protection (default: the
    version's Initial type with a 4-byte packet number)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from netguard.wire.quic import client_initial_keys

    keys = client_initial_keys(key_dcid if key_dcid is not None else dcid, version)
    pn_bytes = struct.pack("!I", pn)
    if first is None:
        first = 0xD3 if version == 0x6B3343CF else 0xC3
    head = bytes((first,)) + struct.pack("!I", version) + u8(dcid) + u8(scid) + varint(len(token)) + token
    overhead = len(head) + 2 + len(pn_bytes) + 16
    if len(payload) + overhead < pad_to:
        payload += bytes(pad_to - overhead - len(payload))
    header = head + struct.pack("!H", 0x4000 | (len(pn_bytes) + len(payload) + 16)) + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, payload, header)
    pn_offset = len(header) - len(pn_bytes)
    sample = sealed[4 - len(pn_bytes) : 20 - len(pn_bytes)]
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    first = header[0] ^ (mask[0] & 0x0F)
    protected_pn = bytes(a ^ b for a, b in zip(pn_bytes, mask[1:5], strict=True))
    return bytes((first,)) + header[1:pn_offset] + protected_pn + sealed


def h2c_client(authorities: list[str], body: bytes = b"", huffman: bool = True) -> bytes:
    """What an HTTP/2 client (the `h2` library, python-hyper) sends without TLS: the preface, its
    SETTINGS, and one request per authority (a POST with `body` in DATA frames when given)."""
    import h2.config
    import h2.connection

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.encoder.huffman = huffman  # type: ignore[attr-defined]
    conn.initiate_connection()
    for authority in authorities:
        stream = conn.get_next_available_stream_id()
        method = b"POST" if body else b"GET"
        conn.send_headers(stream, [(b":method", method), (b":scheme", b"http"), (b":authority", authority.encode()),
                                   (b":path", b"/v2/"), (b"user-agent", b"curl/7.88.1")], end_stream=not body)
        if body:
            conn.send_data(stream, body, end_stream=True)
    return bytes(conn.data_to_send())


def reader_names(data: bytes, step: int = 0) -> list[tuple[str | None, str]]:
    """The names a classify.Reader finds in data fed as `step`-byte segments (0: at once), rebased
    as the engine rebases a followed flow; DONE ends the list."""
    from netguard.engine.classify import DONE, Reader

    reader = Reader()
    out: list[tuple[str | None, str]] = []
    window = b""
    pos = 0
    for cut in [len(data)] if not step else [*range(step, len(data), step), len(data)]:
        window += data[pos:cut]
        pos = cut
        while (found := reader.feed(window)) is not None:
            out.append((found.name, found.source))
            if found is DONE or reader.finished:
                return out
        window = window[reader.rebase():]
    return out
