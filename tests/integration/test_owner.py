"""The block log names the local process and user of a blocked connection (real sockets, real
/proc, the daemon in a lab namespace), and names none for a connection it cannot trace to a socket."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from harness import Runner

from netguard.shell import lab as lab_mod

pytestmark = pytest.mark.root

BLOCKED = "ghcr.io"


def curl_argv(lab: lab_mod.Lab, family: int) -> list[str]:
    h = lab.host(BLOCKED)
    addr = h.v4 if family == 4 else h.v6
    # --insecure: nobody cannot read the lab's CA file, and the block comes before any certificate.
    return ["curl", "-sS", "-m", "5", "--insecure", f"-{family}", "--resolve", f"{BLOCKED}:443:{addr}",
            f"https://{BLOCKED}/"]


@pytest.mark.parametrize("family", [4, 6])
def test_block_log_names_process_and_user(lab: lab_mod.Lab, tmp_path: Path, family: int) -> None:
    runner = Runner(lab, tmp_path, name=f"owner{family}").start()
    try:
        as_root = lab.client_popen(curl_argv(lab, family))
        as_root.wait(timeout=15)
        as_nobody = lab.client_popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      *curl_argv(lab, family)])
        as_nobody.wait(timeout=15)
        assert as_root.returncode != 0 and as_nobody.returncode != 0
        events = runner.events()  # no waiting: a block is logged before the client sees its reset
        owners = [(e["host"], e.get("uid"), e.get("pid"), e.get("process")) for e in events]
        # setpriv execs curl: same pid, so both are named by the pid we started.
        assert owners == [(BLOCKED, 0, as_root.pid, "curl"), (BLOCKED, 65534, as_nobody.pid, "curl")], owners
    finally:
        runner.stop(signal.SIGTERM)
