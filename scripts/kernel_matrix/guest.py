"""The part of the kernel matrix that runs inside the VM (as root, on the kernel under test).

Strategy: each step runs netguard as a user would (its console scripts, real subprocesses) with a
time limit, and records its exit status, its time and what it printed in OUT/result.json, written
after every step so a VM that dies half-way still leaves the steps it finished. The guest judges
nothing about the kernel: the host compares doctor's answer with the kernel's own files. Steps:
doctor (`netguard doctor --json`), demo (`netguard demo`), tests (pytest over tests/integration
or a subset), refuse (`netguard run` and `scripts/install-systemd` on a kernel that cannot
enforce: both must refuse with doctor's reasons), ipv4 (`netguard run` on a kernel without IPv6
netfilter: it must enforce IPv4 and say that IPv6 is not filtered).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

NETGUARD = str(Path(sys.executable).with_name("netguard"))
# Limits per step, for a machine in software emulation (TCG: 30-60x slower process starts).
DOCTOR_LIMIT = 600
DEMO_LIMIT = 900
TESTS_LIMIT = 4 * 3600
RUN_LIMIT = 600  # `netguard run` until it refuses or says it enforces
# Namespaces made here start with this (a netguard-like prefix the lab's leak checks do not own).
NS = "ng-kmatrix"


class Steps:
    """Runs steps and keeps OUT/result.json up to date."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"release": os.uname().release, "steps": {}}
        self.save()

    def save(self) -> None:
        tmp = self.out / "result.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1))
        tmp.replace(self.out / "result.json")

    def record(self, name: str, **fields: Any) -> None:
        self.result["steps"][name] = fields
        self.save()

    def run(self, name: str, argv: list[str], limit: float, env: dict[str, str] | None = None,
            log: bool = True) -> tuple[int | None, str, str, float]:
        """argv with a time limit; (exit status or None on timeout, stdout, stderr, seconds)."""
        start = time.monotonic()
        # Output goes to files in the shared directory as it comes: the host can follow a long step.
        out_path, err_path = self.out / f"{name}.out", self.out / f"{name}.err"
        with out_path.open("w") as out_file, err_path.open("w") as err_file:
            proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, text=True, env=env,
                                    start_new_session=True)
            try:
                code: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own child's group, started above
                proc.wait()
                code = None
        seconds = time.monotonic() - start
        out, err = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        out_path.unlink()
        err_path.unlink()
        if log:
            (self.out / f"{name}.log").write_text(f"$ {' '.join(argv)}\n# exit {code}, {seconds:.1f} s\n"
                                                  f"{out}\n# stderr\n{err}")
        print(f"kernel-matrix: {name}: exit {code} in {seconds:.1f} s", flush=True)
        return code, out, err, seconds


def doctor(steps: Steps) -> None:
    code, out, _, seconds = steps.run("doctor", [NETGUARD, "doctor", "--json"], DOCTOR_LIMIT)
    try:
        report: dict[str, Any] | None = json.loads(out)
    except ValueError:
        report = None
    steps.record("doctor", exit=code, seconds=seconds, report=report)


def demo(steps: Steps) -> None:
    code, _, _, seconds = steps.run("demo", [NETGUARD, "demo"], DEMO_LIMIT)
    steps.record("demo", exit=code, seconds=seconds, ok=code == 0)


def tests(steps: Steps, selection: list[str]) -> None:
    junit = steps.out / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", f"--junitxml={junit}",
            *selection]
    code, out, _, seconds = steps.run("tests", argv, TESTS_LIMIT)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures: list[str] = []
    files: dict[str, float] = {}
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        root = None
    for case in [] if root is None else root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        module = case.get("classname", "").rsplit(".", 1)[-1]
        files[module] = files.get(module, 0.0) + float(case.get("time", "0"))
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    summary = next((line for line in reversed(out.splitlines()) if " in " in line and "=" not in line[:1]), "")
    steps.record("tests", exit=code, seconds=seconds, selection=selection, **counts, failures=failures,
                 files={k: round(v, 1) for k, v in sorted(files.items())}, summary=summary.strip())


def refuse(steps: Steps, repo: Path) -> None:
    """On a kernel that cannot enforce: `netguard run` (in a namespace made here) and the systemd
    installer must both refuse with exit status 2 and doctor's reasons."""
    result: dict[str, Any] = {}
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        code, _, err, seconds = steps.run("refuse-run", ["ip", "netns", "exec", NS, NETGUARD, "run"], RUN_LIMIT)
        result["run"] = {"exit": code, "seconds": seconds, "stderr": err.strip()[-2000:]}
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    # --root: the offline mode for an image; it needs no systemd as PID 1 (the VM has none) and runs
    # the same doctor check as an install on a live system before writing anything.
    with tempfile.TemporaryDirectory(prefix="ng-kmatrix-img-") as image:
        code, out, err, seconds = steps.run(
            "refuse-install", [str(repo / "scripts/install-systemd"), "--no-bootstrap", "--root", image], RUN_LIMIT)
        written = sorted(str(p.relative_to(image)) for p in Path(image).rglob("*") if p.is_file())
        result["install"] = {"exit": code, "seconds": seconds, "output": (out + err).strip()[-2000:],
                             "written": written}
    steps.record("refuse", **result)


def ipv4(steps: Steps) -> None:
    """On a kernel without IPv6 netfilter: `netguard run` in a namespace made here must enforce
    (IPv4) and say that IPv6 is not filtered; `netguard status` passes its kernel checks there;
    SIGTERM stops it with status 0."""
    subprocess.run(["ip", "netns", "add", NS], check=True)
    start = time.monotonic()
    log = steps.out / "ipv4-run.err"
    try:
        with log.open("w") as err:
            proc = subprocess.Popen(["ip", "netns", "exec", NS, NETGUARD, "run"], stdout=subprocess.DEVNULL,
                                    stderr=err)
        while time.monotonic() - start < RUN_LIMIT and proc.poll() is None and "enforcing" not in log.read_text():
            time.sleep(0.2)
        enforcing = "enforcing" in log.read_text()
        # Its own kernel checks must pass with IPv4 alone (exit 0), not miss the IPv6 rules.
        status = subprocess.run(["ip", "netns", "exec", NS, NETGUARD, "status"], capture_output=True, text=True)
        # Whichever backend doctor chose: iptables-nft's chains, or the nft backend's tables.
        def listing(*argvs: list[str]) -> str:
            return "".join(subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True).stdout
                           for argv in argvs)

        rules = listing(["iptables-nft-save", "-t", "filter"], ["nft", "list", "table", "ip", "netguard"])
        rules6 = listing(["ip6tables-nft-save", "-t", "filter"], ["nft", "list", "table", "ip6", "netguard"])
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=RUN_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    steps.record("ipv4", exit=code, seconds=time.monotonic() - start, enforcing=enforcing,
                 rules4="NETGUARD" in rules, rules6="NETGUARD" in rules6, stderr=log.read_text()[-2000:],
                 status={"exit": status.returncode, "output": (status.stdout + status.stderr)[-2000:]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", default="doctor")
    parser.add_argument("--tests-from", type=Path, help="a file of pytest arguments, one per line")
    args = parser.parse_args()
    steps = Steps(args.out)
    repo = Path.cwd()
    for step in args.steps.split(","):
        if step == "doctor":
            doctor(steps)
        elif step == "demo":
            demo(steps)
        elif step == "tests":
            selection = args.tests_from.read_text().splitlines() if args.tests_from else ["tests/integration"]
            tests(steps, [t for t in selection if t])
        elif step == "refuse":
            refuse(steps, repo)
        elif step == "ipv4":
            ipv4(steps)
        else:
            print(f"kernel-matrix: unknown step {step!r}", file=sys.stderr)
            return 2
    steps.result["done"] = True
    steps.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
