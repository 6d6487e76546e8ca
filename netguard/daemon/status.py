"""The running daemon's status, for `netguard status`, over an abstract unix socket.

Strategy: an abstract socket name belongs to a network namespace, as netguard's rules do, so "is
netguard enforcing here?" is one connect to a fixed name. There is no file to clean up after a
crash (the kernel frees the name when the process dies), and a second daemon started in the same
namespace finds the name taken and refuses to start instead of fighting the first over the rules.
The daemon answers each connection with one JSON document and closes it, from its single loop and
without blocking: the document is small next to a unix socket's send buffer. Who asks is read from
SO_PEERCRED: recent blocks (hosts and addresses of other users' connections) go only to root and to
the daemon's own user; the counters go to anyone.

`kernel_checks` is the other half of `netguard status`: it does not take the daemon's word. It reads
the kernel itself (iptables-save or `nft list table` for both families, /proc/net/netfilter/nfnetlink_queue) and
compares with what the daemon says it installed and what the policy asks for.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netguard.daemon import firewall

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


def peer_pid(name: bytes = NAME) -> int | None:
    """The pid of the process holding the status socket (None if nobody does)."""
    return _peer_pid(name)


def _peer_pid(name: bytes) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(QUERY_TIMEOUT)
        try:
            s.connect(name)
        except OSError:
            return None
        pid: int = _CRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[0]
        return pid or None


# -- what `netguard status` checks in the kernel ---------------------------------------------------

QUEUE_TABLE = Path("/proc/net/netfilter/nfnetlink_queue")
# Queue drops this recent make `status` fail: long enough that a check every few minutes sees
# them, short enough that one old burst does not mark the machine broken until a restart.
RECENT_DROPS = 300.0


@dataclass(frozen=True)
class QueueState:
    """One line of /proc/net/netfilter/nfnetlink_queue (this network namespace's queues)."""

    queue_num: int
    portid: int  # the netlink port id of the socket that bound it
    waiting: int  # packets queued, not yet given a verdict
    dropped: int  # queue_dropped: the queue was full (fail_mode closed: dropped; open: accepted)
    user_dropped: int  # the daemon's netlink socket buffer was full


def queue_state(queue_num: int, table: Path = QUEUE_TABLE) -> QueueState | None:
    """The kernel's view of queue `queue_num`; None if nobody has bound it. OSError if the table
    cannot be read (it is root's only)."""
    for line in table.read_text().splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] == str(queue_num):
            return QueueState(int(f[0]), int(f[1]), int(f[2]), int(f[5]), int(f[6]))
    return None


@dataclass(frozen=True)
class Check:
    """One thing `netguard status` verified: ok True/False, or None when it could not be checked."""

    name: str
    ok: bool | None
    text: str


def rule_options(doc: dict[str, Any]) -> firewall.Options:
    """The firewall options the daemon installed its rules with (its status document)."""
    o = doc["rules"]["options"]
    opts = firewall.Options(queue_num=o["queue_num"], marks=firewall.Marks(o["mark_mask"], o["mark_allowed"],
                                                                            o["mark_blocked"]),
                            fail_open=o["fail_open"], forward=o["forward"], untracked_alerts=o["untracked_alerts"],
                            families=tuple(o.get("families", firewall.FAMILIES)))
    return firewall.with_u32(opts, o["skip_empty"])


def kernel_checks(doc: dict[str, Any], now: float, privileged: bool) -> list[Check]:
    """Verify in the kernel what the daemon's status document claims: its rules in both families
    (exactly as installed, and with the shape build_rules gives for its options), the queue bound
    by its socket, the fail-open setting the policy asks for, and the queue's drop counters.
    Without privilege (the rules and the queue table are root's) those checks say so (ok None)."""
    checks = [Check("daemon", True, f"answers (pid {doc['pid']})")]
    rules = doc["rules"]
    if rules.get("failing"):
        checks.append(Check("self-heal", False, f"the daemon cannot restore its rules: {rules['failing']}"))
    if not privileged:
        return [*checks, *(Check(n, None, "not checked: run as root to read the kernel's rules and queues")
                           for n in ("rules", "queue", "fail-open", "queue drops"))]
    backend: firewall.Backend = doc["backend"]
    opts = rule_options(doc)
    problems: list[str] = []
    bypass: set[bool] = set()
    for family in opts.families:
        tables = firewall.tables_for(backend, opts)
        now_layout = firewall.read_layout(backend, firewall.save(backend, family, tables=tables), tables)
        expected = firewall.Layout.parse_lines(rules["expected"].get(str(family), []))
        found = firewall.problems(backend, expected, now_layout, family)
        found += [p for p in firewall.shape_problems(backend, family, opts, now_layout) if p not in found]
        problems += found
        bypass |= firewall.queue_bypass(backend, now_layout)
    restored = f"; restored {rules['restored']} time(s) since start" if rules["restored"] else ""
    families = " and ".join(f"IPv{f}" for f in opts.families)
    checks.append(Check("rules", not problems, "; ".join(problems) if problems else
                        f"installed as expected in {families} ({backend}{restored})"))
    try:
        q = queue_state(doc["queue_num"])
    except OSError as exc:
        checks.append(Check("queue", None, f"cannot read {QUEUE_TABLE}: {exc.strerror}"))
        q = None
    else:
        portid = doc["queue"]["portid"]
        if q is None:
            checks.append(Check("queue", False, f"queue {doc['queue_num']} is not bound: queued packets "
                                f"{'pass' if doc['fail_mode'] == 'open' else 'are dropped'}"))
        elif q.portid != portid:
            checks.append(Check("queue", False, f"queue {q.queue_num} is bound by another socket (port id "
                                f"{q.portid}, the daemon's is {portid})"))
        else:
            checks.append(Check("queue", True, f"queue {q.queue_num} bound by the daemon (port id {q.portid}), "
                                f"{q.waiting} packets waiting"))
    want_open = doc["fail_mode"] == "open"
    flag = doc["queue"]["fail_open"]
    flag_word = "bypass" if backend == "nft" else "--queue-bypass"
    wrong = [f"queue rules {'with' if b else 'without'} {flag_word}" for b in sorted(bypass) if b != want_open]
    if flag != want_open:
        wrong.append(f"queue flag NFQA_CFG_F_FAIL_OPEN {'set' if flag else 'not set'}")
    setting = "on" if want_open else "off"
    checks.append(Check("fail-open", not wrong, f"{'; '.join(wrong)}, but fail_mode is {doc['fail_mode']}" if wrong
                        else f"{setting}, as fail_mode {doc['fail_mode']} says (queue rules "
                             f"{'with' if want_open else 'without'} {flag_word}; the queue's fail-open flag "
                             + ("set by the daemon and acknowledged by the kernel, which does not show it back)"
                                if flag else "left off)")))
    if q is not None:
        drops = doc["queue"]["drops"]
        last = drops.get("last_increase")
        newer = q.dropped > drops.get("queue_dropped", 0) or q.user_dropped > drops.get("user_dropped", 0)
        recent = newer or (last is not None and now - last < RECENT_DROPS)
        text = f"queue_dropped {q.dropped} (queue full), user_dropped {q.user_dropped} (socket buffer full)"
        if recent:
            text += f" since the daemon bound it, the last within {int(RECENT_DROPS)} s"
        elif q.dropped or q.user_dropped:
            text += f" since the daemon bound it, none in the last {int(RECENT_DROPS)} s"
        checks.append(Check("queue drops", not recent, text))
    return checks


def exit_code(checks: list[Check]) -> int:
    """0 every check passed, 1 one failed, 4 some could not be checked (not root)."""
    if any(c.ok is False for c in checks):
        return 1
    return 4 if any(c.ok is None for c in checks) else 0
