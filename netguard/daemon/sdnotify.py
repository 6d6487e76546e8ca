"""systemd's notification protocol: READY, STATUS, STOPPING and the watchdog ping.

Strategy: sd_notify is one datagram of `KEY=VALUE` lines to the unix socket named by $NOTIFY_SOCKET
(a leading `@` means the abstract namespace), so netguard writes it itself instead of depending on
libsystemd. Without $NOTIFY_SOCKET (not under systemd, or Type=simple) every call does nothing.
The watchdog interval comes from $WATCHDOG_USEC (for this process only when $WATCHDOG_PID, if set,
is our pid); `ping` is called from the loop that drains the queue, so a stuck loop stops pinging
and systemd restarts the daemon. Sending never blocks and never raises: the enforcer does not
depend on its supervisor's socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

# Pings per watchdog interval: systemd's own advice is every half interval; a third leaves room
# for one slow turn of the loop (a reload, a rule restore) without a false alarm.
PINGS_PER_INTERVAL = 3


class Notifier:
    """The daemon's end of sd_notify."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.interval: float | None = None  # seconds between pings, None without a watchdog
        usec = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(pid)):
            self.interval = int(usec) / 1e6 / PINGS_PER_INTERVAL
        self._next_ping = 0.0
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @property
    def active(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """One notification; False if it could not be sent (or there is no supervisor)."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        """The rules are in and the queue is bound."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def ping(self, now: float) -> None:
        """From the queue loop: WATCHDOG=1 when the next ping is due (monotonic `now`)."""
        if self.interval is not None and now >= self._next_ping:
            self._next_ping = now + self.interval
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
