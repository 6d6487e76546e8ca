"""sd_notify written by hand: the datagrams systemd would read, over a real unix socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from netguard.daemon.sdnotify import PINGS_PER_INTERVAL, Notifier


def listener(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(1)
    return s


def test_ready_status_stopping_and_the_watchdog(tmp_path: Path) -> None:
    sock = listener(tmp_path / "notify")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "3000000",
                  "WATCHDOG_PID": str(os.getpid())})
    try:
        assert n.active and n.interval == 3.0 / PINGS_PER_INTERVAL
        n.ready("enforcing acme")
        assert sock.recv(4096) == b"READY=1\nSTATUS=enforcing acme"
        n.ping(100.0)
        n.ping(100.0 + n.interval / 2)  # too soon: not sent
        n.ping(100.0 + n.interval)
        n.status("NOT ENFORCING: rules missing")
        n.stopping()
        got = [sock.recv(4096) for _ in range(4)]
        assert got == [b"WATCHDOG=1", b"WATCHDOG=1", b"STATUS=NOT ENFORCING: rules missing", b"STOPPING=1"]
    finally:
        n.close()
        sock.close()


def test_abstract_socket_and_no_supervisor() -> None:
    name = f"netguard-notify-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.interval is None  # no watchdog asked for
        n.ping(0.0)
        n.ready("x")
        assert sock.recv(4096) == b"READY=1\nSTATUS=x"
        n.close()
    finally:
        sock.close()
    quiet = Notifier({})
    assert not quiet.active and quiet.send("READY=1") is False
    # The watchdog belongs to another process (a child that inherited the environment).
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2).interval is None


def test_a_vanished_socket_never_raises(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.send("READY=1") is False
    n.ready("still enforcing")
    n.close()
