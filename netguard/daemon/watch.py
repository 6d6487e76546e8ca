"""Noticing, while the daemon runs, that netguard's rules are no longer what it installed.

Strategy: one `iptables -F OUTPUT`, a firewall reload or `nft flush ruleset` would otherwise end
enforcement in silence. Right after each of its own restores the daemon records what the kernel
prints of its rules (firewall.layout: the exact expectation). Then:

- iptables-nft and nft: the kernel tells. A netlink socket joined to NFNLGRP_NFTABLES receives a message
  for every committed nf_tables change in this network namespace (iptables-nft's too), at no cost
  while nothing changes. A message for an IPv4 or IPv6 table (or a lost message: ENOBUFS) marks
  that family dirty; the check runs DEBOUNCE later, so a script of several commands costs one check.
- iptables-legacy has no notifications: every POLL the tables netguard uses are read with one
  getsockopt each (IPT_SO_GET_ENTRIES, the blob iptables-legacy-save itself reads, ~25 µs here
  against ~1.8 ms for running iptables-legacy-save), their packet counters zeroed, and compared
  with the blob read at the last good check. Only when the blob changed does the full check run.

The full check reads iptables-save (nft: `nft list table`) and compares with the expectation
(firewall.problems); what it finds goes back to the daemon, which restores and logs (daemon.run).
The daemon runs the check from its own loop, never while it applies or removes rules itself, and
records the new expectation after each of its own restores, so the healing never fights netguard's
start, reload or stop.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from netguard.daemon import firewall

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNL_SUBSYS_NFTABLES = 10
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 1, 2, 10
# nf_tables families that can hold netguard's rules (iptables-nft uses the ip and ip6 tables).
FAMILY_OF: dict[int, tuple[firewall.Family, ...]] = {NFPROTO_IPV4: (4,), NFPROTO_IPV6: (6,), NFPROTO_INET: (4, 6)}
# Seconds from a notification to the check: one command is one transaction (one burst of
# messages), a script runs several in a row; a check costs two iptables-nft-save runs.
DEBOUNCE = 0.05
# Seconds between two reads of the legacy tables: detection within 1 s with a restore's time to spare.
POLL = 0.25
# iptables-nft where the notification socket cannot be had: a full check (two iptables-nft-save
# runs, a few ms of CPU) this often instead; still within the second, at about 1 % of a core.
POLL_FULL = 0.5
# Bytes the notification socket may hold: a big ruleset change (kube-proxy) floods it; an
# overflow only means "something changed", which is all a message says to us.
RCVBUF = 1 << 20

# Legacy x_tables getsockopt interface (linux/netfilter_ipv4/ip_tables.h, ..._ipv6/ip6_tables.h).
SO_GET_INFO, SO_GET_ENTRIES = 64, 65
GETINFO_SIZE = 84  # struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
GET_ENTRIES_HEADER = 40  # struct ipt_get_entries: name[32], size, then 8-aligned entries
# Per family: (offset of next_offset in an entry, offset of its xt_counters): ipt_entry keeps them
# after a 84-byte struct ipt_ip, ip6t_entry after a 136-byte struct ip6t_ip6 (then 8-aligned).
ENTRY_OFFSETS = {4: (90, 96), 6: (142, 152)}
COUNTERS_SIZE = 16  # two u64: packets, bytes


class Notifications:
    """A netlink socket that learns of every nf_tables change in this network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                   NETLINK_NETFILTER)
        try:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except OSError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> set[Family]:
        """Read every waiting message; the address families (4, 6) whose tables changed."""
        changed: set[Family] = set()
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # messages were lost: anything may have changed
                    changed.update(firewall.FAMILIES)
                    continue
                raise
            changed.update(families_changed(data))

    def close(self) -> None:
        self._sock.close()


def families_changed(data: bytes) -> set[Family]:
    """The address families named by the nf_tables messages in one netlink datagram (each message:
    nlmsghdr, then nfgenmsg whose first byte is the nf_tables family)."""
    out: set[Family] = set()
    offset = 0
    while offset + 17 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind >> 8 == NFNL_SUBSYS_NFTABLES:
            out.update(FAMILY_OF.get(data[offset + 16], ()))
        offset += (length + 3) & ~3
    return out


_libc: Any = None


def _getsockopt(fd: int, level: int, name: int, buf: Any) -> None:
    """getsockopt with a buffer that carries input (the table name): Python's own gives a zeroed one.
    (ctypes is imported here, by the legacy backend only: the daemon's start-up stays short.)"""
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(fd, level, name, buf, ctypes.byref(size)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"getsockopt {name}: {errno.errorcode.get(code, code)}")


def legacy_fingerprint(family: firewall.Family, table: str) -> bytes:
    """The legacy table as the kernel holds it (hooks, sizes, every entry), packet counters zeroed:
    equal blobs mean equal rules. OSError if the table cannot be read (it is gone, no CAP_NET_RAW)."""
    import ctypes

    level = socket.IPPROTO_IP if family == 4 else socket.IPPROTO_IPV6
    with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        info = ctypes.create_string_buffer(table.encode(), GETINFO_SIZE)
        _getsockopt(s.fileno(), level, SO_GET_INFO, info)
        size = struct.unpack_from("=I", info.raw, GETINFO_SIZE - 4)[0]
        entries = ctypes.create_string_buffer(table.encode(), GET_ENTRIES_HEADER + size)
        struct.pack_into("=I", entries, 32, size)
        _getsockopt(s.fileno(), level, SO_GET_ENTRIES, entries)
    blob = bytearray(entries.raw[GET_ENTRIES_HEADER:])
    next_at, counters_at = ENTRY_OFFSETS[family]
    offset = 0
    while offset + counters_at + COUNTERS_SIZE <= len(blob):
        blob[offset + counters_at:offset + counters_at + COUNTERS_SIZE] = bytes(COUNTERS_SIZE)
        step = struct.unpack_from("=H", blob, offset + next_at)[0]
        if step == 0:
            break
        offset += step
    return info.raw[32:] + bytes(blob)


Family = firewall.Family
Saver = Callable[[Family], str]


class Watch:
    """When to check netguard's rules, and the check. `expect` after each of netguard's own restores."""

    def __init__(self, backend: firewall.Backend, tables: Sequence[str], saver: Saver | None = None) -> None:
        self.backend = backend
        self.tables = tuple(tables)
        self._save = saver or (lambda family: firewall.save(backend, family, tables=self.tables))
        self._expected: dict[Family, firewall.Layout] = {}
        self._prints: dict[Family, bytes | None] = {}
        self._dirty: set[Family] = set()
        self.due: float | None = None  # monotonic time of the next check (None: none pending)
        self.notifications: Notifications | None = None
        self.checks = 0  # full checks (iptables-save runs), for status and the cost figures
        self.without_notifications: str | None = None  # why iptables-nft is polled instead
        self.poll = POLL
        if backend in ("iptables-nft", "nft"):
            try:
                self.notifications = Notifications()
            except OSError as exc:
                self.without_notifications = f"no nf_tables notifications ({exc}): checked every {POLL_FULL:g} s"
                self.poll = POLL_FULL

    def fileno(self) -> int | None:
        return None if self.notifications is None else self.notifications.fileno()

    def expect(self, now: float, families: Sequence[Family] = firewall.FAMILIES,
               tables: Sequence[str] | None = None) -> dict[Family, firewall.Layout]:
        """Record the rules of `families` now installed as what must stay (in `tables`, when the rule
        set changed which); returns them. Call right after netguard restored its rules: the
        notifications of that restore are already queued and are dropped."""
        if tables is not None:
            self.tables = tuple(tables)
        others = set(self.notifications.drain()) if self.notifications is not None else set()
        out: dict[Family, firewall.Layout] = {}
        for family in families:
            self._prints[family] = self._fingerprint(family)
            out[family] = self._expected[family] = firewall.read_layout(self.backend, self._save(family), self.tables)
            self._dirty.discard(family)
        others -= set(families)
        if self.notifications is None:
            self.due = now + self.poll
        elif others:  # a change to a family netguard did not just restore: still to be checked
            self._dirty |= others
            self.due = now + DEBOUNCE if self.due is None else self.due
        elif not self._dirty:
            self.due = None
        return out

    def expected(self) -> dict[Family, firewall.Layout]:
        return dict(self._expected)

    def readable(self, now: float) -> None:
        """The notification socket has messages: a check of the families they name, DEBOUNCE later."""
        if self.notifications is None:
            return
        changed = self.notifications.drain()
        if changed - self._dirty:
            self._dirty |= changed
            if self.due is None:
                self.due = now + DEBOUNCE

    def retry(self, at: float, families: Sequence[Family]) -> None:
        """Check these families again at `at`, and nothing before (a restore failed: back off)."""
        self._dirty.update(families)
        self.due = at

    def check(self, now: float) -> dict[Family, list[str]]:
        """If a check is due: the problems found per family (only families with problems)."""
        if self.due is None or now < self.due:
            return {}
        families = sorted(self._dirty) if self.notifications is not None else list(firewall.FAMILIES)
        self._dirty.clear()
        self.due = None if self.notifications is not None else now + self.poll
        found: dict[Family, list[str]] = {}
        for family in families:
            if family not in self._expected:
                continue
            fingerprint = self._fingerprint(family) if self.notifications is None else None
            if fingerprint is not None and fingerprint == self._prints.get(family):
                continue
            self.checks += 1
            problems = firewall.problems(self.backend, self._expected[family],
                                         firewall.read_layout(self.backend, self._save(family), self.tables), family)
            if problems:
                found[family] = problems
            else:
                self._prints[family] = fingerprint  # someone else's change: the new normal
        return found

    def _fingerprint(self, family: Family) -> bytes | None:
        if self.backend != "iptables-legacy":
            return None
        try:
            return b"".join(legacy_fingerprint(family, t) for t in self.tables)
        except OSError:
            return None  # unreadable (a table gone): never equal to a good one, so the full check runs

    def close(self) -> None:
        if self.notifications is not None:
            self.notifications.close()
