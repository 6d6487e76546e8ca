"""The running daemon's status, for `netguard status`, over an abstract unix socket.

Strategy: an abstract socket name belongs to a network namespace, as netguard's rules do, so "is
netguard enforcing here?" is one connect to a fixed name. There is no file to clean up after a
crash (the kernel frees the name when the process dies), and a second daemon started in the same
namespace finds the name taken and refuses to start instead of fighting the first over the rules.
The daemon answers each connection with one JSON document and closes it, from its single loop and
without blocking: the document is small next to a unix socket's send buffer. Who asks is read from
SO_PEERCRED: recent blocks (hosts and addresses of other users' connections) go only to root and to
the daemon's own user; the counters go to anyone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

NAME = b"\0netguard-status"
# Blocks kept for status: enough to see what just happened, few enough to send in one write.
RECENT = 20
# A status document larger than this is cut to the counters (it never is: RECENT bounds it).
MAX_DOCUMENT = 65536
QUERY_TIMEOUT = 2.0
# Answers per wake-up of the daemon's loop: a local process connecting in a loop must not keep the
# loop from the queue (each answer costs tens of µs).
ANSWERS_PER_WAKE = 8
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AlreadyRunning(RuntimeError):
    """Another netguard answers on the status socket of this network namespace."""


class StatusServer:
    """The daemon's end: bound at start (fails if another daemon runs here), served from the loop."""

    def __init__(self, name: bytes = NAME) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(name)
        except OSError as exc:
            self._sock.close()
            pid = _peer_pid(name)
            who = f"pid {pid}" if pid else f"its status socket is taken: {exc.strerror}"
            raise AlreadyRunning(f"netguard is already running in this network namespace ({who}); "
                                 "see `netguard status`") from None
        self._sock.listen(8)

    def fileno(self) -> int:
        return self._sock.fileno()

    def serve(self, document: Callable[[bool], dict[str, Any]]) -> None:
        """Answer the waiting clients (at most ANSWERS_PER_WAKE; the rest wait for the next wake-up);
        document(privileged) builds what each may see."""
        for _ in range(ANSWERS_PER_WAKE):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                _pid, uid, _gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
                data = json.dumps(document(uid in (0, os.getuid()))).encode()
                if len(data) > MAX_DOCUMENT:
                    data = json.dumps(document(False)).encode()
                # Non-blocking: a client that does not read loses its answer, enforcement waits for no one.
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(data)

    def close(self) -> None:
        self._sock.close()


def query(name: bytes = NAME, timeout: float = QUERY_TIMEOUT) -> dict[str, Any] | None:
    """The status of the netguard running in this network namespace; None if none runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(name)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    doc: dict[str, Any] = json.loads(b"".join(chunks))
    return doc


def _peer_pid(name: bytes) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(QUERY_TIMEOUT)
        try:
            s.connect(name)
        except OSError:
            return None
        pid: int = _CRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[0]
        return pid or None
