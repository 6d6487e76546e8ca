"""Reassembly of a client's first bytes by TCP sequence number.

Strategy: offsets relative to the first payload byte (ISN + 1), modulo 2**32. Pieces that arrive out
of order are kept in a dict by offset; the contiguous prefix grows as gaps fill. Bytes already
stored must match any retransmission that covers them: an overlap that carries different bytes is
the classic evasion (one byte string for the filter, another for the server) and is reported as a
conflict. Bounded: bytes beyond `limit` and more than MAX_PIECES held pieces are a limit hit.

Urgent data: the bytes a server's application reads are not the bytes on the wire when a segment
carries the URG flag. Linux (tcp_check_urg, tcp_urg, tcp_recvmsg; tcp_stdurg = 0, no SO_OOBINLINE,
the defaults) takes the byte at seq + urgent pointer - 1 (at seq for a pointer of 0) out of the
stream as out-of-band data. It holds one urgent byte at a time: a pointer at or before the one it
holds is ignored, a later one replaces it, and whether the earlier byte then stays in the stream
depends on how far the application has read (timing). A pointer to a byte the receiver already has
is ignored, unless that byte is still out of order (it cannot tell which). `urgent` records one
pointer and reports those cases it cannot settle as AMBIGUOUS; `delivered` is the prefix as the
application reads it. The pointer is recorded before the segment's bytes are added (Linux checks
URG before it queues the text), so the urgent byte is never already part of what was read: the
delivered bytes only ever grow at the end.
"""

from __future__ import annotations

import enum

# Out-of-order pieces held at once: a ClientHello in 1-byte segments, all shuffled, needs as many as
# it has bytes; a real client needs a handful.
MAX_PIECES = 2048


class Result(enum.Enum):
    OK = "ok"
    CONFLICT = "conflict"  # overlapping bytes differ
    LIMIT = "limit"  # beyond the byte limit or too many pieces
    AMBIGUOUS = "ambiguous"  # an urgent pointer whose effect on the server's stream depends on timing


class Stream:
    """The first `limit` bytes of one direction of a TCP flow."""

    __slots__ = ("_pieces", "base", "limit", "prefix", "urgent_at")

    def __init__(self, base: int, limit: int) -> None:
        self.base = base  # sequence number of byte 0
        self.limit = limit
        self.prefix = bytearray()  # contiguous bytes from offset 0, as sent (urgent byte included)
        self._pieces: dict[int, bytes] = {}  # offset -> bytes, beyond the prefix
        self.urgent_at: int | None = None  # offset of the urgent byte the receiver takes out (< 0: passed)

    def has_data(self) -> bool:
        """Whether any byte arrived (in order or not)."""
        return bool(self.prefix or self._pieces)

    def delivered(self) -> bytes:
        """The contiguous prefix as the server's application reads it: without the urgent byte."""
        at = self.urgent_at
        if at is None or not 0 <= at < len(self.prefix):
            return bytes(self.prefix)
        return bytes(self.prefix[:at] + self.prefix[at + 1:])

    def urgent(self, seq: int, pointer: int) -> Result:
        """A segment at `seq` with the URG flag and this urgent pointer (call before `add`)."""
        offset = (seq + max(pointer, 1) - 1 - self.base) & 0xFFFFFFFF
        if offset >= 0x80000000:
            return Result.OK  # before byte 0: data the receiver has had since the handshake
        if self.urgent_at is not None:
            if offset <= self.urgent_at:
                return Result.OK  # the same pointer again (every segment carries it), or an older one
            return Result.AMBIGUOUS  # a second urgent byte: whether the first stays depends on timing
        if self._holds(offset):
            return Result.AMBIGUOUS  # the receiver ignores it if it has that byte in order
        self.urgent_at = offset
        return Result.OK

    def _holds(self, offset: int) -> bool:
        if offset < len(self.prefix):
            return True
        return any(start <= offset < start + len(piece) for start, piece in self._pieces.items())

    def add(self, seq: int, data: bytes) -> Result:
        """Add a segment's payload. Grows `prefix` when the bytes connect."""
        if not data:
            return Result.OK
        offset = (seq - self.base) & 0xFFFFFFFF
        if offset >= 0x80000000:
            # Starts before byte 0 (a retransmission of the SYN's data or garbage): keep the part
            # from byte 0 on.
            skip = 0x100000000 - offset
            if skip >= len(data):
                return Result.OK
            data, offset = data[skip:], 0
        end = offset + len(data)
        if end > self.limit:
            return Result.LIMIT
        # Bytes already in the prefix must match.
        have = len(self.prefix)
        if offset < have and self.prefix[offset:min(end, have)] != data[:min(end, have) - offset]:
            return Result.CONFLICT
        for start, piece in self._pieces.items():
            lo, hi = max(start, offset), min(start + len(piece), end)
            if lo < hi and piece[lo - start:hi - start] != data[lo - offset:hi - offset]:
                return Result.CONFLICT
        if end <= have:
            return Result.OK
        if offset > have:
            old = self._pieces.get(offset)
            if old is None or len(old) < len(data):
                if old is None and len(self._pieces) >= MAX_PIECES:
                    return Result.LIMIT
                self._pieces[offset] = data
            return Result.OK
        self.prefix += data[have - offset:]
        self._absorb()
        return Result.OK

    def seq_of(self, n: int) -> int:
        """The sequence number of delivered byte n (the urgent byte, taken out, is skipped)."""
        at = self.urgent_at
        return (self.base + n + (1 if at is not None and 0 <= at <= n else 0)) & 0xFFFFFFFF

    def advance(self, n: int) -> None:
        """Forget the first n delivered bytes of the prefix (read already; with the urgent byte among
        them, that too): offsets start after them. Used to read a long-lived stream (a kept-alive HTTP
        connection) in a window of `limit` bytes. An urgent byte passed stays known as one before the
        start (a negative offset): a later urgent pointer cannot be settled (see `urgent`)."""
        at = self.urgent_at
        if at is not None and 0 <= at < n:
            n += 1
        if not 0 <= n <= len(self.prefix):
            raise ValueError("advance past the prefix")
        if not n:
            return
        self.base = (self.base + n) & 0xFFFFFFFF
        del self.prefix[:n]
        self._pieces = {start - n: piece for start, piece in self._pieces.items()}
        if at is not None:
            self.urgent_at = at - n

    def skip(self, n: int) -> None:
        """Move the start n bytes ahead of an empty prefix: bytes that were sent but never seen."""
        if self.prefix:
            raise ValueError("skip with bytes in the prefix")
        self.base = (self.base + n) & 0xFFFFFFFF
        if self.urgent_at is not None:
            self.urgent_at -= n
        self._pieces = {start - n: piece for start, piece in self._pieces.items() if start + len(piece) > n}
        for start in [s for s in self._pieces if s < 0]:
            piece = self._pieces.pop(start)
            self._pieces[0] = piece[-start:]
        self._absorb()

    def _absorb(self) -> None:
        # Move held pieces that now touch the prefix into it.
        moved = True
        while moved and self._pieces:
            moved = False
            have = len(self.prefix)
            for start in sorted(self._pieces):
                if start > have:
                    break
                piece = self._pieces.pop(start)
                if start + len(piece) > have:
                    self.prefix += piece[have - start:]
                    have = len(self.prefix)
                moved = True
