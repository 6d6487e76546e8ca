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
