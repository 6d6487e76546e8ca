"""Sending the packets the engine builds (the TLS alert of block_action = "tls-alert").

Strategy: raw sockets with the IP header included (IPPROTO_RAW), one per family, opened once. A
packet addressed to a local client goes through OUTPUT and lo to the client's socket like any
packet from the server would. The sockets put netguard's "passed" mark on what they send
(SO_MARK), so netguard's own rules let it straight through: where the connection is NATed (a
masqueraded container) the packet matches no direction of its conntrack entry, would otherwise be
queued as a new flow, and would reach the client after the reset instead of before it.
"""

from __future__ import annotations

import contextlib
import socket


class Injector:
    """Raw IPv4/IPv6 senders; `send` takes a whole IP packet."""

    def __init__(self, mark: int = 0) -> None:
        self._socks: dict[int, socket.socket] = {}
        self.mark = mark

    def send(self, packet: bytes) -> None:
        """Send one IP packet (version taken from its first byte); errors are the caller's to log."""
        version = packet[0] >> 4
        sock = self._socks.get(version)
        if sock is None:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            if self.mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            self._socks[version] = sock
        if version == 4:
            dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
        else:
            dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
        sock.sendto(packet, (dst, 0))

    def close(self) -> None:
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._socks.clear()
