"""The NFQUEUE binding: the only module that imports netfilterqueue.

Strategy: one queue (it receives IPv4 and IPv6 alike), full packet copies (NetfilterQueue copies at
most ~4 KB; the engine reads a cut packet's headers and the bytes it has), and verdicts given in the
callback. `set_fail_open` sets NFQA_CFG_F_FAIL_OPEN, which NetfilterQueue does not expose, with one
raw nfnetlink config message on the queue's own socket: the kernel only accepts config for a queue
from the socket (port id) that bound it.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from netfilterqueue import NetfilterQueue, Packet

from netguard.engine import Action, Verdict

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
# Packets the kernel holds for us before it drops (closed) or accepts (open) new ones: a burst of
# new connections, each queueing a SYN and a first data packet.
QUEUE_MAXLEN = 4096

__all__ = ["Packet", "Queue", "apply_verdict", "fail_open_message", "set_fail_open"]


def fail_open_message(queue_num: int, enable: bool, seq: int = 1, ack: bool = True) -> bytes:
    """The nfnetlink NFQNL_MSG_CONFIG message that sets (or clears) NFQA_CFG_F_FAIL_OPEN."""
    flag = NFQA_CFG_F_FAIL_OPEN if enable else 0
    # nlattr headers are host order; their payloads here are big-endian (NLA_U32 in network order).
    attrs = (struct.pack("=HH", 8, NFQA_CFG_MASK) + struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
             + struct.pack("=HH", 8, NFQA_CFG_FLAGS) + struct.pack("!I", flag))
    nfgen = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue_num)
    body = nfgen + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                         NLM_F_REQUEST | (NLM_F_ACK if ack else 0), seq, 0)
    return header + body


def set_fail_open(fd: int, queue_num: int, enable: bool = True, wait_ack: bool = True) -> None:
    """Send the config message on the queue's socket (fd); with wait_ack, read the kernel's
    acknowledgement, which is only safe before any rule sends packets to the queue (a packet read
    here would never get a verdict). Later (a reload), send without asking for one."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd))
    try:
        sock.settimeout(2)
        sock.send(fail_open_message(queue_num, enable, ack=wait_ack))
        if not wait_ack:
            return
        while True:
            reply = sock.recv(65536)
            _length, kind = struct.unpack_from("=IH", reply)
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", reply, 16)
                if error:
                    raise OSError(-error, f"NFQA_CFG_F_FAIL_OPEN on queue {queue_num}: {os.strerror(-error)}")
                return
    finally:
        sock.detach()
        sock.close()


class Queue:
    """A bound queue. `pump()` hands every waiting packet to the callback without blocking."""

    def __init__(self, queue_num: int, callback: Callable[[Packet], None]) -> None:
        self.queue_num = queue_num
        self._nfq = NetfilterQueue()
        self._nfq.bind(queue_num, callback, max_len=QUEUE_MAXLEN)

    def fileno(self) -> int:
        return int(self._nfq.get_fd())

    def portid(self) -> int:
        """The netlink port id of the queue's socket: /proc/net/netfilter/nfnetlink_queue shows it
        as the queue's peer, so `netguard status` can tell that this daemon holds the queue."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(self.fileno()))
        try:
            return int(sock.getsockname()[0])
        finally:
            sock.close()

    def pump(self) -> None:
        """Handle the packets waiting now."""
        self._nfq.run(block=False)

    def close(self) -> None:
        self._nfq.unbind()


def apply_verdict(packet: Packet, verdict: Verdict, mask: int, allowed: int, blocked: int, passed: int,
                  follow: int, unconfirmed: int) -> None:
    """Give the kernel the engine's verdict for one packet. Everything but a drop is a repeat with a
    mark, so the packet goes on through the rest of the chain (see firewall.py)."""
    action = verdict.action
    # HOLD is settled by the run loop; one that reaches here (no token) must not pass.
    if action in (Action.DROP, Action.HOLD) or (action is Action.REWRITE and verdict.payload is None):
        packet.drop()
        return
    if action is Action.ALLOW:
        mark = allowed
    elif action is Action.BLOCK:
        mark = blocked
        if verdict.payload is not None:
            packet.set_payload(verdict.payload)  # a server packet made a reset toward the client
    elif action is Action.FOLLOW:
        mark = follow
    elif action is Action.UNCONFIRMED:
        mark = unconfirmed
    else:
        mark = passed
        if action is Action.REWRITE and verdict.payload is not None:
            packet.set_payload(verdict.payload)
    packet.set_mark((packet.get_mark() & ~mask) | mark)
    packet.repeat()
