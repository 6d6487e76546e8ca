"""Strategy: one error family for every wire parser.

`ParseError` is the only exception a parser lets out. `Truncated` means the bytes seen so far end
before the message does (more data could complete it); `Malformed` means no amount of further data
can make the message valid. Callers catch `ParseError` in one place.
"""

from __future__ import annotations


class ParseError(ValueError):
    """Base class: the bytes could not be parsed."""


class Truncated(ParseError):
    """The input ends before the message does."""


class Malformed(ParseError):
    """The input violates the format; more bytes would not help."""


class UnsupportedVersion(ParseError):
    """A well-formed packet of a protocol version this parser does not decode (e.g. QUIC)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported version 0x{version:08x}")
        self.version = version
