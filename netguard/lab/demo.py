"""`netguard demo`: enforcement shown live in a throw-away namespace lab.

Strategy: build the lab (netguard.lab.lab: client, DNS and registry namespaces, nothing in the
caller's namespace), start `netguard run` with the default policy inside the client namespace as a
subprocess, run real clients against an allowed and a blocked registry, print what they saw and
what netguard logged, then stop the daemon and delete the lab, whatever happens.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from netguard.lab import lab as lab_mod

# `netguard run` checks the kernel (doctor's probes) before it enforces: well under a second on an
# ordinary machine, tens of seconds on a slow one (a first boot's module loads, an emulated VM).
READY_TIMEOUT = 120.0
NETGUARD_ARGV = [sys.executable, "-c", "from netguard.cli import main; main()"]


def run_demo(say: Callable[[str], None] = print) -> int:
    """Run the demo; returns 0 when everything behaved as it should, 1 otherwise."""
    allowed, blocked, alias = "registry-1.docker.io", "ghcr.io", "dl.allowed.test"
    ok = True
    with tempfile.TemporaryDirectory(prefix="ng-demo-") as tmp, lab_mod.build(workdir=Path(tmp)) as lab:
        say(f"lab: client {lab.client}, dns {lab.dns}, registry {lab.registry} (namespaces, removed at the end)")
        out, err = Path(tmp) / "netguard.out", Path(tmp) / "netguard.err"
        with out.open("wb") as o, err.open("wb") as e:
            daemon = lab.client_popen([*NETGUARD_ARGV, "run"], stdout=o, stderr=e)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while "enforcing" not in err.read_text():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    say("netguard did not start:\n" + err.read_text())
                    return 1
                time.sleep(0.05)
            say("netguard: " + err.read_text().strip().splitlines()[-1].removeprefix("netguard: "))
            ca = str(lab.ca_file)
            for name, want in ((allowed, True), (blocked, False), (alias, False)):
                start = time.monotonic()
                r = lab.client_run(["curl", "-sS", "-m", "10", "--cacert", ca, f"https://{name}/v2/"])
                took = (time.monotonic() - start) * 1000
                seen = r.stdout.strip() if r.returncode == 0 else r.stderr.strip()
                say(f"$ curl https://{name}/v2/   ({took:.0f} ms)\n    {seen}")
                ok &= (r.returncode == 0) == want
            h = lab.host(blocked)
            start = time.monotonic()
            r = lab.client_run(["curl", "-sS", "-m", "10", "--cacert", ca, "--resolve", f"{blocked}:443:{h.v4}",
                                f"https://{blocked}/v2/"])
            say(f"$ curl --resolve {blocked}:443:{h.v4} https://{blocked}/v2/   (no DNS: the TLS SNI decides; "
                f"{(time.monotonic() - start) * 1000:.0f} ms)\n    {r.stderr.strip()}")
            ok &= r.returncode != 0
            start = time.monotonic()
            r = lab.client_run(["curl", "-sS", "-m", "10", "-k", f"https://{h.v4}/v2/"])
            say(f"$ curl -k https://{h.v4}/v2/   (the blocked registry's address, no name; "
                f"{(time.monotonic() - start) * 1000:.0f} ms)\n    {r.stderr.strip()}")
            ok &= r.returncode != 0
            r = lab.client_run(["dig", "+noall", "+comments", blocked])
            status = [line.strip() for line in r.stdout.splitlines() if "status:" in line or "EDE:" in line]
            say(f"$ dig {blocked}\n    " + "\n    ".join(status))
            ok &= any("NXDOMAIN" in line for line in status)
        finally:
            lab_mod.stop(daemon)
        say("netguard log (one JSON line per block):")
        for line in out.read_text().splitlines():
            e = json.loads(line)
            say(f"    {e['verdict']} {e['host']} ({e['source']}) {e['proto']} {e['dst']}:{e['dport']}: {e['rule']}")
    say("lab removed. " + ("Everything behaved as expected." if ok else "Something did not behave as expected."))
    return 0 if ok else 1
