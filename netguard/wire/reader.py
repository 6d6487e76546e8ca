"""Strategy: one bounds-checked cursor through which every parser reads.

After dnspython's `Parser`: the cursor holds the whole buffer, a position and an end. Every read
checks the end first. `restrict_to(n)` fences a length-prefixed block: reads inside cannot pass the
block's end, and leaving the block requires it to be consumed exactly. Running past the end of the
real input raises `Truncated` (more bytes could come); running past a fence raises `Malformed` (the
block's own length prefix said it was shorter). Fixed-layout headers are read with one precompiled
`struct.Struct` per header, which keeps the hot path to a single bounds check and a single C call.

Where a method call per field is too dear (the ClientHello body, DNS names), the parser takes the
cursor's state into locals for one tight function and keeps the same discipline: the block's end is
known before the first read, every read is preceded by its check against it, and an overrun raises
what the cursor would (Malformed inside a complete block, Truncated at the end of the input).
"""

from __future__ import annotations

import struct
from typing import Any

from netguard.wire.errors import Malformed, Truncated

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Reader:
    """A cursor over `data`; every read is bounds-checked against the current end."""

    __slots__ = ("data", "end", "fences", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data)
        self.fences = 0

    def _short(self, need: int) -> Exception:
        # Past a fence the enclosing length prefix is complete, so the block is inconsistent.
        if self.fences:
            return Malformed(f"field of {need} bytes overruns its block at offset {self.pos}")
        return Truncated(f"need {need} bytes at offset {self.pos}, have {self.end - self.pos}")

    def remaining(self) -> int:
        """Bytes left before the current end."""
        return self.end - self.pos

    def u8(self) -> int:
        """Read one unsigned byte."""
        pos = self.pos
        if pos >= self.end:
            raise self._short(1)
        self.pos = pos + 1
        return self.data[pos]

    def u16(self) -> int:
        """Read a big-endian unsigned 16-bit integer."""
        pos = self.pos
        if pos + 2 > self.end:
            raise self._short(2)
        self.pos = pos + 2
        return int(_U16.unpack_from(self.data, pos)[0])

    def u24(self) -> int:
        """Read a big-endian unsigned 24-bit integer."""
        pos = self.pos
        if pos + 3 > self.end:
            raise self._short(3)
        self.pos = pos + 3
        d = self.data
        return (d[pos] << 16) | (d[pos + 1] << 8) | d[pos + 2]

    def u32(self) -> int:
        """Read a big-endian unsigned 32-bit integer."""
        pos = self.pos
        if pos + 4 > self.end:
            raise self._short(4)
        self.pos = pos + 4
        return int(_U32.unpack_from(self.data, pos)[0])

    def varint(self) -> int:
        """Read a QUIC variable-length integer (RFC 9000 §16)."""
        pos = self.pos
        if pos >= self.end:
            raise self._short(1)
        first = self.data[pos]
        size = 1 << (first >> 6)
        if pos + size > self.end:
            raise self._short(size)
        value = first & 0x3F
        for i in range(1, size):
            value = (value << 8) | self.data[pos + i]
        self.pos = pos + size
        return value

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        """Read a fixed-layout header in one step."""
        pos = self.pos
        if pos + layout.size > self.end:
            raise self._short(layout.size)
        self.pos = pos + layout.size
        return layout.unpack_from(self.data, pos)

    def take(self, n: int) -> bytes:
        """Read `n` bytes."""
        pos = self.pos
        if n < 0:
            raise Malformed("negative length")
        if pos + n > self.end:
            raise self._short(n)
        self.pos = pos + n
        return self.data[pos : pos + n]

    def skip(self, n: int) -> None:
        """Move past `n` bytes."""
        if n < 0:
            raise Malformed("negative length")
        if self.pos + n > self.end:
            raise self._short(n)
        self.pos += n

    def rest(self) -> bytes:
        """Read everything up to the current end."""
        pos = self.pos
        self.pos = self.end
        return self.data[pos : self.end]

    def restrict_to(self, n: int) -> _Fence:
        """Fence the next `n` bytes: `with reader.restrict_to(n): ...` must consume them exactly."""
        if n < 0:
            raise Malformed("negative length")
        if self.pos + n > self.end:
            raise self._short(n)
        return _Fence(self, self.pos + n)


class _Fence:
    """Context manager behind `Reader.restrict_to` (a class, not contextlib: it is on the hot path)."""

    __slots__ = ("_end", "_reader", "_saved_end")

    def __init__(self, reader: Reader, end: int) -> None:
        self._reader = reader
        self._end = end
        self._saved_end = reader.end

    def __enter__(self) -> Reader:
        reader = self._reader
        reader.end = self._end
        reader.fences += 1
        return reader

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        reader = self._reader
        reader.end = self._saved_end
        reader.fences -= 1
        if exc_type is None and reader.pos != self._end:
            raise Malformed(f"block ends at {self._end} but its contents end at {reader.pos}")
