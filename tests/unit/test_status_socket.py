"""The status socket and the status text, without root: a private abstract name per test."""

from __future__ import annotations

import os
import select
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from netguard.cli import _status_text
from netguard.daemon.status import ANSWERS_PER_WAKE, AlreadyRunning, StatusServer, query


def name() -> bytes:
    return f"\0netguard-status-test-{os.getpid()}-{threading.get_ident()}".encode()


def test_query_serve_and_a_second_server_refused() -> None:
    where = name()
    assert query(where) is None
    server = StatusServer(where)
    try:
        with pytest.raises(AlreadyRunning, match=f"already running in this network namespace \\(pid {os.getpid()}\\)"):
            StatusServer(where)
        server.serve(lambda privileged: {"never": "asked"})  # nobody waiting: returns at once
        answers: list[object] = []
        t = threading.Thread(target=lambda: answers.append(query(where)))
        t.start()
        while t.is_alive():
            server.serve(lambda privileged: {"privileged": privileged})
            t.join(0.01)
        assert answers == [{"privileged": True}]  # same uid as the daemon
    finally:
        server.close()
    assert query(where) is None  # the name goes with the socket: nothing to clean up after a crash


def test_one_wake_up_answers_a_bounded_number() -> None:
    where = name()
    server = StatusServer(where)
    clients = []
    try:
        for _ in range(ANSWERS_PER_WAKE + 1):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(where)  # completes into the listen backlog
            clients.append(c)
        server.serve(lambda privileged: {})
        answered = [c for c in clients if select.select([c], [], [], 0)[0]]
        assert len(answered) == ANSWERS_PER_WAKE
        server.serve(lambda privileged: {})
        assert all(select.select([c], [], [], 0)[0] for c in clients)
    finally:
        for c in clients:
            c.close()
        server.close()


DOC = {
    "version": "0.1.0", "pid": 42, "started": 1000.0, "now": 1000.0 + 3 * 3600 + 120, "policy": "acme [/etc/a.toml]",
    "policy_loaded": 1000.0, "last_reload": None, "backend": "iptables-nft", "queue_num": 7413,
    "fail_mode": "closed", "block_action": "reset", "dns_block": True, "unknown_hosts": "allow",
    "empty_segments": "queued",
    "counts": {"packets": 10, "allowed": 3, "blocked": 1, "dns_rewritten": 0, "fail_verdicts": 0,
               "limits": {"bytes": 2}, "log_failures": 0},
    "undecided_flows": 0, "followed_flows": 2, "unconfirmed_flows": 3, "names_learned": 5,
}


def test_status_text() -> None:
    block = {"time": 1000.0, "host": "ghcr.io", "proto": "tcp", "src": "fd00::2", "sport": 40000, "dst": "fd00::3",
             "dport": 443, "source": "sni", "rule": "ghcr is not in allow"}
    text = _status_text({**DOC, "recent_blocks": [block]})
    assert "(pid 42, up 3 h 2 min)" in text and "limits hit: bytes 2" in text and "queued (no xt u32)" in text
    assert "0 flows undecided, 2 followed, 3 unconfirmed TLS, 5 names learned" in text
    assert "ghcr.io  [fd00::2]:40000 -> [fd00::3]:443/tcp  [sni] ghcr is not in allow" in text
    owned = _status_text({**DOC, "recent_blocks": [{**block, "uid": 1000, "pid": None, "process": None}]})
    assert owned.endswith("ghcr is not in allow  by ? (pid ?, uid 1000)")
    assert "run as root to see them" in _status_text(DOC)
    assert "recent blocks: none" in _status_text({**DOC, "recent_blocks": []})


def test_exit_codes_of_the_checks() -> None:
    from netguard.daemon.status import Check, exit_code, kernel_checks

    ok = Check("rules", True, "fine")
    assert exit_code([ok]) == 0
    assert exit_code([ok, Check("queue", None, "not checked")]) == 4
    assert exit_code([ok, Check("queue", None, "x"), Check("fail-open", False, "wrong")]) == 1
    rules: dict[str, Any] = {"failing": None, "restored": 0, "restore_failures": 0, "last_restored": None,
                             "watch": "netlink", "expected": {}, "options": {}}
    doc = {**DOC, "rules": rules, "queue": {"portid": 1, "fail_open": False, "drops": {}}}
    unverified = kernel_checks(doc, 1000.0, privileged=False)
    assert exit_code(unverified) == 4
    assert [c.name for c in unverified if c.ok is None] == ["rules", "queue", "fail-open", "queue drops"]
    failing = kernel_checks({**doc, "rules": {**rules, "failing": "IPv4: xtables lock"}}, 1000.0, False)
    assert exit_code(failing) == 1
    assert any(c.name == "self-heal" and "xtables lock" in c.text for c in failing)
    text = _status_text(doc, failing, 1)
    assert "NOT ENFORCING as it should" in text and "FAIL       self-heal: the daemon cannot restore" in text
    assert "--         rules: not checked: run as root" in text


def test_queue_table(tmp_path: Path) -> None:
    from netguard.daemon.status import queue_state

    table = tmp_path / "nfnetlink_queue"
    table.write_text(" 7413   4242     3 2 65531     17     5        9  1\n"
                     "    9   1000     0 2 65531     0     0   0  1\n")
    q = queue_state(7413, table)
    assert q is not None and (q.portid, q.waiting, q.dropped, q.user_dropped) == (4242, 3, 17, 5)
    assert queue_state(1, table) is None
