"""Deployment files: the systemd unit and its installer, the WSL 2 installer, the Docker Desktop
Containerfile and the Vagrant boxes.

Strategy: run the real tools where they exist here (systemd-analyze verify, systemctl --root, ruby -c,
vagrant validate, pip wheel, bash), execute the shell snippets the unit carries, and test the
wsl.conf editor as pure functions and against temp files. Where a script's contract with `netguard`
is under test (doctor's exit codes, the supervisor's restarts), a small stand-in executable plays
netguard. Docker is not available on this machine: the Containerfile is checked statically, plus a
wheel built from exactly the files it copies. A missing tool skips on a developer machine and fails
under CI. One test needs root (capabilities in a scratch namespace) and is marked so.
"""

from __future__ import annotations

import fcntl
import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netguard.daemon import netns

REPO = Path(__file__).resolve().parents[2]
UNIT_TEMPLATE = REPO / "scripts" / "netguard.service"
INSTALL_SYSTEMD = REPO / "scripts" / "install-systemd"
INSTALL_WSL = REPO / "scripts" / "install-wsl"
CONTAINERFILE = REPO / "scripts" / "docker-desktop" / "Containerfile"
DOCKERIGNORE = REPO / "scripts" / "docker-desktop" / "Containerfile.dockerignore"
DOCKER_README = REPO / "scripts" / "docker-desktop" / "README.md"
VAGRANT_DIR = REPO / "vagrant"
PROVISION = VAGRANT_DIR / "provision.sh"
# The restart budget of the acceptance criterion ("restoring enforcement ... within about a second").
RESTART_BUDGET_S = 1.0
# A stuck daemon holds new connections (fail-closed) until the watchdog notices: a few seconds at most.
WATCHDOG_MAX_S = 5.0
DOCKER_RUN = ("docker run -d --name netguard --restart=always --net=host "
              "--cap-add NET_ADMIN --cap-add NET_RAW")


def need(tool: str) -> str:
    """The tool's path; skip without it on a developer machine, fail under CI (bootstrap installs it)."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/bootstrap --test installs it")
        pytest.skip(f"{tool} is not installed")
    return path


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload,no-any-return]


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as section -> [(key, value)] in order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def one(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [v for k, v in sections[section] if k == key]
    assert len(values) == 1, f"{section}.{key}: {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span such as 200ms, 1s or 0.5 (seconds) in seconds."""
    match = re.fullmatch(r"([0-9.]+)\s*(ms|s|sec|min)?", span)
    assert match, span
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, None: 1.0}[match.group(2)]


def fake_netguard(path: Path, body: str) -> Path:
    """A stand-in `netguard` executable (a shell script) for testing the scripts' contract with it."""
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def rendered_unit(netguard: Path | None = None) -> str:
    env = dict(os.environ)
    if netguard is not None:
        env["NETGUARD_BIN"] = str(netguard)
    result = run([str(INSTALL_SYSTEMD), "--print-unit"], env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---- the systemd unit ----

def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    unit = tmp_path / "netguard.service"
    unit.write_text(rendered_unit())
    result = run([analyze, "verify", str(unit)])
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_rejects_a_unit_whose_daemon_is_missing(tmp_path: Path) -> None:
    # The check above can fail: verify looks at ExecStart's executable.
    analyze = need("systemd-analyze")
    unit = tmp_path / "netguard.service"
    unit.write_text(rendered_unit(tmp_path / "no-such-netguard"))
    result = run([analyze, "verify", str(unit)])
    assert result.returncode != 0
    assert "no-such-netguard" in result.stderr


def test_unit_restarts_fast_forever_with_network_capabilities_only() -> None:
    text = rendered_unit()
    assert "@NETGUARD@" not in text
    unit = unit_entries(text)
    service = "Service"
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"  # no rate limit: repeated kills never stop it
    # READY=1 from the daemon once its rules are in and its queue is bound; a watchdog whose ping
    # comes from the queue loop (a stuck daemon is restarted), no core dump of a stuck one.
    assert one(unit, service, "Type") == "notify" and one(unit, service, "NotifyAccess") == "main"
    assert 1 <= seconds(one(unit, service, "WatchdogSec")) <= WATCHDOG_MAX_S
    assert one(unit, service, "LimitCORE") == "0"
    assert one(unit, service, "Restart") == "always"
    assert seconds(one(unit, service, "RestartSec")) <= RESTART_BUDGET_S / 2
    netguard = str(REPO / ".venv" / "bin" / "netguard")
    assert shlex.split(one(unit, service, "ExecStart"))[:2] == [netguard, "run"]
    assert set(one(unit, service, "CapabilityBoundingSet").split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(one(unit, service, "AmbientCapabilities").split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    private_tmp = "no" if str(REPO).startswith(("/tmp/", "/var/tmp/")) else "yes"  # see the next test
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", private_tmp)]:
        assert one(unit, service, key) == value
    # iptables-legacy needs its lock file writable under ProtectSystem=strict (see the unit).
    assert "/run/xtables.lock" in one(unit, service, "ReadWritePaths")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize(("interpreter", "protect_home"), [
    ("/usr/bin/python3", "yes"), ("/root/.pyenv/versions/3.11.7/bin/python3.11", "read-only"),
    ("/home/dev/.local/bin/python3.12", "read-only"),
])
def test_protect_home_relaxes_when_the_venv_lives_on_a_home(tmp_path: Path, interpreter: str,
                                                            protect_home: str) -> None:
    netguard = fake_netguard(tmp_path / "netguard", "exit 0\n")
    (tmp_path / "python").symlink_to(interpreter)
    if str(REPO).startswith(("/home/", "/root/", "/run/user/")):
        protect_home = "read-only"  # the checkout itself is on a home
    assert one(unit_entries(rendered_unit(netguard)), "Service", "ProtectHome") == protect_home


@pytest.mark.parametrize(("interpreter", "private_tmp"), [
    ("/usr/bin/python3", "yes"), ("/tmp/py/bin/python3.11", "no"), ("/var/tmp/py/bin/python3.11", "no"),
])
def test_private_tmp_off_when_the_venv_lives_in_tmp(interpreter: str, private_tmp: str) -> None:
    # The fake venv sits in the checkout, not in pytest's tmp_path: /tmp itself is the case under test.
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".test-venv-") as venv:
        netguard = fake_netguard(Path(venv) / "netguard", "exit 0\n")
        (Path(venv) / "python").symlink_to(interpreter)
        if str(REPO).startswith(("/tmp/", "/var/tmp/")):
            private_tmp = "no"  # the checkout itself is under /tmp
        assert one(unit_entries(rendered_unit(netguard)), "Service", "PrivateTmp") == private_tmp


def _sh_command(entry: str) -> list[str]:
    """An Exec*= value with its prefixes stripped and systemd's `$$` unescaped, as an argv."""
    return shlex.split(entry.lstrip("-+!@:").replace("$$", "$"))


@pytest.mark.parametrize(("service_result", "removes"), [
    ("success", True), ("timeout", True), ("resources", True),
    ("signal", False), ("core-dump", False), ("exit-code", False), ("watchdog", False),
])
def test_stop_post_removes_rules_after_a_deliberate_stop_only(tmp_path: Path, service_result: str,
                                                               removes: bool) -> None:
    calls = tmp_path / "calls"
    netguard = fake_netguard(tmp_path / "netguard", f'echo "$@" >> {calls}\n')
    unit = unit_entries(rendered_unit(netguard))
    argv = _sh_command(one(unit, "Service", "ExecStopPost"))
    result = run(argv, env={"PATH": os.environ["PATH"], "SERVICE_RESULT": service_result})
    assert result.returncode == 0, result.stderr
    assert (calls.read_text() if calls.exists() else "") == ("rules remove\n" if removes else "")


def test_xtables_lock_prestart_creates_private_file_and_never_truncates(tmp_path: Path) -> None:
    unit = unit_entries(rendered_unit())
    [entry] = [v for k, v in unit["Service"] if k == "ExecStartPre" and "xtables.lock" in v]
    lock = tmp_path / "xtables.lock"
    argv = [part.replace("/run/xtables.lock", str(lock)) for part in _sh_command(entry)]
    assert run(argv).returncode == 0
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    lock.write_text("held")
    inode = lock.stat().st_ino
    assert run(argv).returncode == 0
    assert (lock.read_text(), lock.stat().st_ino) == ("held", inode)


# ---- scripts/install-systemd, offline into a tree (systemd is not PID 1 here) ----

@pytest.fixture
def doctor_says(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A stand-in netguard whose doctor exits with $DOCTOR_RC and prints $DOCTOR_MSG (or, with --json,
    $DOCTOR_JSON), and whose `run --help` lists the --backend choices as click prints them."""
    (tmp_path / "bin").mkdir()
    netguard = fake_netguard(tmp_path / "bin" / "netguard", """\
        case "$1 $2" in
            "doctor --json") echo "$DOCTOR_JSON"; exit "$DOCTOR_RC" ;;
            "doctor "*) echo "$DOCTOR_MSG"; exit "$DOCTOR_RC" ;;
            "run --help") echo "  --backend [iptables-nft|iptables-legacy]"; exit 0 ;;
        esac
        exit 0
        """)
    env = {**os.environ, "NETGUARD_BIN": str(netguard), "DOCTOR_MSG": "verdict  can enforce", "DOCTOR_RC": "0",
           "DOCTOR_JSON": json.dumps({"verdict": "ok", "backends": ["some-future-backend", "iptables-legacy"]})}
    yield tmp_path / "root", env


def install_offline(root: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    need("systemctl")
    return run([str(INSTALL_SYSTEMD), "--no-bootstrap", "--root", str(root), *extra], env=env)


def test_install_refuses_when_doctor_cannot_enforce(doctor_says: tuple[Path, dict[str, str]]) -> None:
    root, env = doctor_says
    env.update(DOCTOR_RC="2", DOCTOR_MSG="verdict  cannot enforce: no NFQUEUE target")
    result = install_offline(root, env)
    assert result.returncode == 2
    assert "cannot enforce: no NFQUEUE target" in result.stderr
    assert not root.exists()


def test_install_writes_and_enables_the_unit_once(doctor_says: tuple[Path, dict[str, str]]) -> None:
    root, env = doctor_says
    first = install_offline(root, env)
    assert first.returncode == 0, first.stderr
    unit = root / "etc/systemd/system/netguard.service"
    assert unit.read_text() == rendered_unit(Path(env["NETGUARD_BIN"]))
    wants = root / "etc/systemd/system/multi-user.target.wants/netguard.service"
    assert os.readlink(wants) == "/etc/systemd/system/netguard.service"
    # The backend: doctor's first that `run --backend` accepts (some-future-backend is not one of them).
    assert 'NETGUARD_OPTS="--backend iptables-legacy"' in (root / "etc/default/netguard").read_text().splitlines()
    mtime = unit.stat().st_mtime_ns
    second = install_offline(root, env)
    assert second.returncode == 0, second.stderr
    assert "wrote" not in second.stdout
    assert unit.stat().st_mtime_ns == mtime


def test_install_goes_ahead_when_degraded_and_shows_why(doctor_says: tuple[Path, dict[str, str]]) -> None:
    root, env = doctor_says
    env.update(DOCTOR_RC="1", DOCTOR_MSG="verdict  degraded: no IPv6 rules")
    result = install_offline(root, env)
    assert result.returncode == 0, result.stderr
    assert "degraded: no IPv6 rules" in result.stdout
    assert (root / "etc/systemd/system/netguard.service").exists()


def test_install_policy_goes_to_etc_and_into_the_run_options(doctor_says: tuple[Path, dict[str, str]],
                                                             tmp_path: Path) -> None:
    root, env = doctor_says
    policy = tmp_path / "mine.toml"
    policy.write_text('unknown_hosts = "deny"\n')
    assert install_offline(root, env, "--policy", str(policy)).returncode == 0
    assert (root / "etc/netguard/policy.toml").read_text() == policy.read_text()
    defaults = (root / "etc/default/netguard").read_text()
    assert 'NETGUARD_OPTS="--backend iptables-legacy --policy /etc/netguard/policy.toml"' in defaults.splitlines()
    assert "wrote" not in install_offline(root, env, "--policy", str(policy)).stdout
    policy.write_text('unknown_hosts = "allow"\n')
    again = install_offline(root, env, "--policy", str(policy))
    assert f"wrote {root}/etc/netguard/policy.toml" in again.stdout


def test_install_writes_the_organisation_policy_source(doctor_says: tuple[Path, dict[str, str]],
                                                       tmp_path: Path) -> None:
    from netguard.fleet.source import parse_config

    root, env = doctor_says
    key = tmp_path / "org.pub"
    key.write_text("untrusted comment: minisign public key 1\n"
                   "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n")
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = ("--policy-url", "https://config.corp.example/netguard/policy.toml", "--trusted-key", str(key),
            "--trusted-key", "RWQnextkeyline", "--policy-ca", str(ca), "--poll-interval", "30")
    result = install_offline(root, env, *args)
    assert result.returncode == 0, result.stderr
    source = (root / "etc/netguard/source.toml").read_text()
    assert parse_config(source, "source.toml") == {
        "policy_url": "https://config.corp.example/netguard/policy.toml",
        "trusted_keys": ["/etc/netguard/trusted-keys/1.pub", "RWQnextkeyline"],
        "policy_ca": "/etc/netguard/policy-ca.pem", "poll_interval": 30.0}
    assert (root / "etc/netguard/trusted-keys/1.pub").read_text() == key.read_text()
    assert (root / "etc/netguard/policy-ca.pem").read_text() == ca.read_text()
    assert "wrote" not in install_offline(root, env, *args).stdout
    for bad, message in ((("--policy-url", "http://x.example/p.toml", "--trusted-key", "RWQx"), "https://"),
                         (("--policy-url", "https://x.example/p.toml"), "at least one --trusted-key"),
                         (("--policy-url", 'https://x.example/"p', "--trusted-key", "RWQx"), "quotes")):
        r = install_offline(root, env, *bad)
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_install_refuses_without_a_backend_run_accepts(doctor_says: tuple[Path, dict[str, str]]) -> None:
    root, env = doctor_says
    env["DOCTOR_JSON"] = json.dumps({"verdict": "ok", "backends": ["some-future-backend"]})
    result = install_offline(root, env)
    assert result.returncode == 2
    assert "no backend" in result.stderr
    assert not root.exists()


def test_install_refuses_a_path_systemd_would_misread(tmp_path: Path) -> None:
    odd = tmp_path / "with space" / "netguard"
    result = run([str(INSTALL_SYSTEMD), "--print-unit"], env={**os.environ, "NETGUARD_BIN": str(odd)})
    assert result.returncode == 2
    assert "characters a unit file would misread" in result.stderr


# ---- scripts/install-wsl: the wsl.conf editor and the supervisor ----

@pytest.fixture(scope="module")
def wsl() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("install_wsl", str(INSTALL_WSL))
    spec = importlib.util.spec_from_loader("install_wsl", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


OURS = "setsid -f /netguard/scripts/install-wsl --supervise"


@pytest.mark.parametrize(("before", "after"), [
    ("", f"[boot]\ncommand = {OURS}\n"),
    ("[network]\ngenerateResolvConf = false\n",
     f"[network]\ngenerateResolvConf = false\n\n[boot]\ncommand = {OURS}\n"),
    ("# mine\n[boot]\nsystemd=false\n\n[user]\ndefault=me\n",
     f"# mine\n[boot]\nsystemd=false\ncommand = {OURS}\n\n[user]\ndefault=me\n"),
    ('[boot]\ncommand = "service docker start"\n[automount]\nenabled = true\n',
     f'[boot]\ncommand = "service docker start; {OURS}"\n[automount]\nenabled = true\n'),
    ("[Boot]\ncommand=setsid -f /old/place/scripts/install-wsl --supervise; mount --make-rshared /\n",
     f"[Boot]\ncommand=mount --make-rshared /; {OURS}\n"),
    ("[boot]\r\nsystemd=true\r\n", f"[boot]\r\nsystemd=true\r\ncommand = {OURS}\r\n"),
])
def test_boot_command_is_added_keeping_everything_else(wsl: ModuleType, before: str, after: str) -> None:
    assert wsl.with_boot_command(before, OURS) == after
    assert wsl.with_boot_command(after, OURS) == after  # a rerun changes nothing


@pytest.mark.parametrize("before", [
    "[boot]\nsystemd=false\n\n[user]\ndefault=me\n",
    '[boot]\ncommand = "service docker start"\n',
    "[network]\nhostname = box\n",
])
def test_uninstall_gives_back_the_original(wsl: ModuleType, before: str) -> None:
    assert wsl.without_boot_command(wsl.with_boot_command(before, OURS)) == before


LINE = st.one_of(
    st.sampled_from(["[boot]", "[network]", "[user]", "[interop]", "", "# a comment", "; another"]),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(["systemd", "hostname", "default", "enabled", "command"]),
              st.sampled_from(["true", "false", "me", '"service cron start"', "a; b"])),
)


@given(st.lists(LINE, max_size=12))
def test_editing_keeps_other_lines_and_is_idempotent(wsl: ModuleType, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" if lines else ""
    edited = wsl.with_boot_command(text, OURS)
    assert wsl.with_boot_command(edited, OURS) == edited
    assert wsl.systemd_enabled(edited) == wsl.systemd_enabled(text)
    # Exactly one boot command carries ours, and every line that is not that one survives, in order.
    carrying = [line for line in edited.splitlines() if OURS in line]
    assert len(carrying) == 1
    survivors = [line for line in edited.splitlines() if line != carrying[0]]
    old = iter(text.splitlines())
    assert all(any(line == candidate for candidate in old) for line in survivors if line not in ("", "[boot]"))


@pytest.mark.parametrize(("text", "enabled"), [
    ("[boot]\nsystemd=true\n", True), ('[boot]\nsystemd = "true"\n', True), ("[BOOT]\nSystemd=True\n", True),
    ("[boot]\nsystemd=false\n", False), ("[network]\nsystemd=true\n", False), ("", False),
    ("[boot]\nsystemd=true\nsystemd=false\n", False),
])
def test_systemd_enabled_reads_the_boot_section(wsl: ModuleType, text: str, enabled: bool) -> None:
    assert wsl.systemd_enabled(text) is enabled


def test_edit_wsl_conf_on_a_file(wsl: ModuleType, tmp_path: Path) -> None:
    conf = tmp_path / "wsl.conf"
    assert wsl.edit_wsl_conf(conf, OURS) is True
    assert conf.read_text() == f"[boot]\ncommand = {OURS}\n"
    conf.write_bytes(b"[automount]\r\nenabled = true\r\n")
    conf.chmod(0o600)
    assert wsl.edit_wsl_conf(conf, OURS) is True
    assert conf.read_bytes() == f"[automount]\r\nenabled = true\r\n\r\n[boot]\r\ncommand = {OURS}\r\n".encode()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert wsl.edit_wsl_conf(conf, OURS) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wsl.conf"]  # no temp file left


def test_boot_command_starts_this_checkout_detached(wsl: ModuleType) -> None:
    argv = shlex.split(wsl.boot_command_line(Path("/netguard")))
    assert argv == ["setsid", "-f", "/netguard/scripts/install-wsl", "--supervise"]
    assert wsl.MARKER in wsl.boot_command_line(Path("/netguard"))


@pytest.mark.parametrize(("release", "older"), [
    ("5.10.102.1-microsoft-standard-WSL2", True), ("4.19.128-microsoft-standard", True),
    ("5.15.167.4-microsoft-standard-WSL2", False), ("6.6.87.2-microsoft-standard-WSL2", False),
])
def test_consequences_name_the_5_15_gate_only_below_it(wsl: ModuleType, release: str, older: bool) -> None:
    text = wsl.consequences(release)
    assert "every distribution" in text
    assert ("older than 5.15" in text) is older


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_supervisor_restarts_a_killed_daemon_within_a_second(tmp_path: Path) -> None:
    events = tmp_path / "events"
    netguard = fake_netguard(tmp_path / "netguard", f"""\
        if [ "$1" = run ]; then
            echo "start $$ $(date +%s.%N) $*" >> {events}
            trap 'echo "term $$" >> {events}; exit 0' TERM
            while :; do sleep 0.05; done
        fi
        echo "$@" >> {events}
        """)
    code = textwrap.dedent(f"""\
        import importlib.machinery, importlib.util, pathlib, sys
        loader = importlib.machinery.SourceFileLoader("install_wsl", {str(INSTALL_WSL)!r})
        spec = importlib.util.spec_from_loader("install_wsl", loader)
        m = importlib.util.module_from_spec(spec); loader.exec_module(m)
        m.LOCK = pathlib.Path({str(tmp_path / "lock")!r}); m.LOG = pathlib.Path({str(tmp_path / "log")!r})
        m.DEFAULTS = pathlib.Path({str(tmp_path / "defaults")!r})
        sys.exit(m.supervise())
        """)
    (tmp_path / "defaults").write_text('NETGUARD_OPTS="--policy /etc/netguard/policy.toml"\n')
    env = {**os.environ, "NETGUARD_BIN": str(netguard)}
    supervisor = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        def starts() -> list[list[str]]:
            lines = events.read_text().splitlines() if events.exists() else []
            return [line.split() for line in lines if line.startswith("start ")]

        assert _wait_for(lambda: len(starts()) == 1, 10)
        # The options from /etc/default/netguard reach `netguard run`, split as systemd splits them.
        assert starts()[0][3:] == ["run", "--policy", "/etc/netguard/policy.toml"]
        second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=10)
        assert (second.returncode, second.stderr.strip()) == (0, "install-wsl: a netguard supervisor already runs")
        first_pid = int(starts()[0][1])
        killed_at = time.time()
        os.kill(first_pid, signal.SIGKILL)
        assert _wait_for(lambda: len(starts()) == 2, 5)
        restart = float(starts()[1][2]) - killed_at
        assert restart < RESTART_BUDGET_S, f"restarted after {restart:.3f} s"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 0
        lines = events.read_text().splitlines()
        assert f"term {starts()[1][1]}" in lines
        assert lines[-1] == "rules remove"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


WSL_5_10 = "5.10.102.1-microsoft-standard-WSL2"


@pytest.fixture
def wsl_tree(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """A WSL 2 distribution's tree (kernel 5.10, PID 1 `init`, a wsl.conf) for install-wsl, a stand-in
    netguard (doctor exits $DOCTOR_RC; run records its start and waits; other commands are recorded),
    and the events file. Any supervisor started in the tree is stopped at the end."""
    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(WSL_5_10 + "\n")
    (root / "proc/1").mkdir()
    (root / "proc/1/comm").write_text("init\n")
    (root / "etc").mkdir()
    (root / "etc/wsl.conf").write_text("[network]\ngenerateResolvConf = false\n")
    events = tmp_path / "events"
    netguard = fake_netguard(tmp_path / "netguard", f"""\
        case "$1 $2" in
            "doctor --json") echo '{{"verdict": "ok", "backends": ["iptables-nft"]}}'; exit "$DOCTOR_RC" ;;
            "doctor "*) echo "doctor says $DOCTOR_RC"; exit "$DOCTOR_RC" ;;
            "run --help") echo "  --backend [iptables-nft|iptables-legacy]"; exit 0 ;;
            "run "*) echo "start $$ $*" >> {events}
                 trap 'echo "term $$" >> {events}; exit 0' TERM
                 while :; do sleep 0.05; done ;;
        esac
        echo "$*" >> {events}
        """)
    env = {**os.environ, "NETGUARD_WSL_ROOT": str(root), "NETGUARD_BIN": str(netguard), "DOCTOR_RC": "0"}
    try:
        yield root, env, events
    finally:
        # Only a supervisor that still holds its lock is ours to stop (a PID alone may be reused).
        lock = root / "run/netguard-wsl.lock"
        if lock.exists():
            with open(lock, "r+") as held:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.kill(int(held.read().strip()), signal.SIGTERM)


def install_wsl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(INSTALL_WSL), "--no-bootstrap", *args], env=env)


def event_lines(events: Path) -> list[str]:
    return events.read_text().splitlines() if events.exists() else []


def test_install_wsl_boot_command_supervisor_and_uninstall(wsl: ModuleType, wsl_tree: tuple[Path, dict[str, str], Path],
                                                            tmp_path: Path) -> None:
    root, env, events = wsl_tree
    original = (root / "etc/wsl.conf").read_text()
    policy = tmp_path / "policy.toml"
    policy.write_text('unknown_hosts = "deny"\n')

    first = install_wsl(env, "--policy", str(policy))
    assert first.returncode == 0, first.stderr
    assert (root / "etc/wsl.conf").read_text() == wsl.with_boot_command(original, wsl.boot_command_line())
    assert (root / "etc/netguard/policy.toml").read_text() == policy.read_text()
    assert "older than 5.15" in first.stdout and "every distribution" in first.stdout
    assert _wait_for(lambda: any(line.startswith("start ") for line in event_lines(events)), 10)
    [start] = [line.split() for line in event_lines(events) if line.startswith("start ")]
    assert start[2:] == ["run", "--policy", "/etc/netguard/policy.toml"]

    again = install_wsl(env, "--policy", str(policy))
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "already running" in again.stdout
    time.sleep(0.3)
    assert len([line for line in event_lines(events) if line.startswith("start ")]) == 1

    gone = install_wsl(env, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert (root / "etc/wsl.conf").read_text() == original
    assert _wait_for(lambda: event_lines(events)[-1:] == ["rules remove"], 10)
    assert f"term {start[1]}" in event_lines(events)


def test_install_wsl_refuses_where_doctor_cannot_enforce(wsl_tree: tuple[Path, dict[str, str], Path]) -> None:
    root, env, events = wsl_tree
    before = (root / "etc/wsl.conf").read_text()
    env["DOCTOR_RC"] = "2"
    result = install_wsl(env)
    assert result.returncode == 2
    assert "doctor says 2" in result.stderr and "cannot enforce" in result.stderr
    assert (root / "etc/wsl.conf").read_text() == before
    assert not (root / "run").exists() and not events.exists()


def test_install_wsl_refuses_outside_wsl_2(wsl_tree: tuple[Path, dict[str, str], Path]) -> None:
    root, env, _ = wsl_tree
    for release, says in [("6.1.0-13-amd64", "not WSL"), ("4.4.0-19041-Microsoft", "WSL 1")]:
        (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
        result = install_wsl(env)
        assert result.returncode == 2 and says in result.stderr, result.stderr


def test_install_wsl_hands_over_to_systemd(wsl: ModuleType, wsl_tree: tuple[Path, dict[str, str], Path]) -> None:
    need("systemctl")
    root, env, events = wsl_tree
    (root / "proc/1/comm").write_text("systemd\n")
    (root / "etc/wsl.conf").write_text(wsl.with_boot_command("[boot]\nsystemd=true\n", wsl.boot_command_line()))
    result = install_wsl(env)
    assert result.returncode == 0, result.stderr
    assert (root / "etc/wsl.conf").read_text() == "[boot]\nsystemd=true\n"
    assert (root / "etc/systemd/system/multi-user.target.wants/netguard.service").is_symlink()
    assert 'NETGUARD_OPTS="--backend iptables-nft"' in (root / "etc/default/netguard").read_text()
    assert not events.exists()  # no supervisor: systemd runs netguard


# ---- Docker Desktop: Containerfile (static: no Docker engine on this machine) ----

def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_stages_and_packages() -> None:
    steps = containerfile_instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert [f.split()[0] for f in froms] == ["debian:bookworm-slim", "debian:bookworm-slim"]
    runtime = steps[[i for i, (word, _) in enumerate(steps) if word == "FROM"][1]:]
    runtime_apt = " ".join(args for word, args in runtime if word == "RUN")
    for package in ("python3", "libnetfilter-queue1", "iptables"):
        assert re.search(rf"\s{re.escape(package)}(\s|$)", runtime_apt), package
    [entrypoint] = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    build_run = " ".join(args for word, args in steps if word == "RUN")
    venv = entrypoint[0].removesuffix("/bin/netguard")
    assert f"python3 -m venv {venv}" in build_run
    assert ("COPY", f"--from=build {venv} {venv}") in steps


def copied_sources() -> list[str]:
    sources = []
    for word, args in containerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    return sources


def test_containerfile_copies_what_exists_and_the_context_lets_through() -> None:
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    sources = copied_sources()
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"


def test_the_copied_files_alone_build_a_working_wheel(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, context / source)
    result = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(tmp_path / "dist"), str(context)])
    assert result.returncode == 0, result.stderr
    [wheel] = (tmp_path / "dist").glob("netguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"netguard/cli.py", "netguard/rules/default.toml", "netguard/rules/registries.toml"} <= names
    [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
    assert "netguard = netguard.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_docker_run_line_is_documented_with_host_network_and_capabilities() -> None:
    for doc in (CONTAINERFILE, DOCKER_README, REPO / "docs" / "deploy.md"):
        assert DOCKER_RUN in doc.read_text(), doc


# ---- Vagrant ----

BOX_LINE = re.compile(r'"(\w+)"\s*=>\s*\{\s*box:\s*"([^"]+)",\s*kernel:\s*"([\d.]+)",\s*python:\s*"(\w+)"')


def boxes() -> list[tuple[str, str, str, str]]:
    return BOX_LINE.findall((VAGRANT_DIR / "Vagrantfile").read_text())


def test_vagrantfile_is_valid_ruby() -> None:
    result = run([need("ruby"), "-c", str(VAGRANT_DIR / "Vagrantfile")])
    assert (result.returncode, result.stdout.strip()) == (0, "Syntax OK")


def test_vagrant_validate(tmp_path: Path) -> None:
    vagrant = need("vagrant")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = run([vagrant, "validate", "--ignore-provider"], cwd=VAGRANT_DIR, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_boxes_cover_below_at_and_above_the_kernel_gates() -> None:
    kernels = sorted(version(kernel) for _, _, kernel, _ in boxes())
    assert len(kernels) == 4
    assert kernels[0] < (5, 4) and (5, 4) in kernels and (5, 15) in kernels and kernels[-1] > (5, 15)


def test_every_box_is_documented() -> None:
    readme = (VAGRANT_DIR / "README.md").read_text()
    for name, box, kernel, _ in boxes():
        assert re.search(rf"\b{re.escape(name)}\b", readme), name
        assert box in readme and kernel in readme, box


@pytest.mark.parametrize(("os_release", "plan"), [
    ('ID=debian\nVERSION_ID="10"\n', "source"), ('ID=ubuntu\nVERSION_ID="20.04"\n', "deadsnakes"),
    ('ID=ubuntu\nVERSION_ID="22.04"\n', "deadsnakes"), ('ID=debian\nVERSION_ID="12"\n', "system"),
    ('ID=ubuntu\nVERSION_ID="24.04"\n', "system"), ('ID=fedora\nVERSION_ID=40\n', "source"),
])
def test_provision_plans_python_per_release(tmp_path: Path, os_release: str, plan: str) -> None:
    path = tmp_path / "os-release"
    path.write_text(os_release)
    result = run(["bash", str(PROVISION), "--plan", str(path)])
    assert (result.returncode, result.stdout.strip()) == (0, plan)


def test_vagrantfile_python_plans_match_the_provisioner(tmp_path: Path) -> None:
    releases = {"buster": ("debian", "10"), "focal": ("ubuntu", "20.04"), "jammy": ("ubuntu", "22.04"),
                "bookworm": ("debian", "12")}
    for name, _, _, plan in boxes():
        distro, version_id = releases[name]
        path = tmp_path / f"{name}-os-release"
        path.write_text(f'ID={distro}\nVERSION_ID="{version_id}"\n')
        result = run(["bash", str(PROVISION), "--plan", str(path)])
        assert result.stdout.strip() == plan, name


def test_provision_reads_the_test_packages_from_bootstrap() -> None:
    text = (REPO / "scripts" / "bootstrap").read_text()
    match = re.search(r"^test_pkgs=\(([^)]*)\)", text, re.M)
    assert match
    result = run(["bash", str(PROVISION), "--test-packages"], env={**os.environ, "NETGUARD_REPO": str(REPO)})
    assert result.stdout.split() == match.group(1).split()


@pytest.mark.parametrize("script", [PROVISION, INSTALL_SYSTEMD, REPO / "scripts" / "bootstrap",
                                    REPO / "scripts" / "fresh-install-check", REPO / ".ci" / "run"])
def test_shell_scripts_parse(script: Path) -> None:
    assert run(["bash", "-n", str(script)]).returncode == 0


# ---- the capabilities the unit grants are enough (root: a scratch namespace) ----

CAPS_ONLY = ["setpriv", "--inh-caps=-all,+net_admin,+net_raw", "--ambient-caps=-all,+net_admin,+net_raw",
             "--bounding-set=-all,+net_admin,+net_raw", "--"]
NO_NET_ADMIN = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all,+net_raw", "--"]
RULES = "*filter\n:NG-DEPLOY - [0:0]\n-A OUTPUT -p tcp --dport 9 -j NFQUEUE --queue-num 7413\nCOMMIT\n"
BIND = ("from netfilterqueue import NetfilterQueue; q = NetfilterQueue(); "
        "q.bind(7413, lambda p: None); q.unbind(); print('bound')")


@pytest.mark.root
def test_network_capabilities_suffice_for_rules_and_queue() -> None:
    need("setpriv")
    with netns.scratch("deploy") as ns:
        for tool in ("iptables-nft-restore", "iptables-legacy-restore"):
            ok = netns.run(ns, [*CAPS_ONLY, tool, "--noflush"], check=False, input=RULES.encode())
            assert ok.returncode == 0, (tool, ok.stderr)
            denied = netns.run(ns, [*NO_NET_ADMIN, tool, "--noflush"], check=False, input=RULES.encode())
            assert denied.returncode != 0, tool
        bound = netns.run(ns, [*CAPS_ONLY, sys.executable, "-c", BIND], check=False)
        assert (bound.returncode, bound.stdout.strip()) == (0, "bound"), bound.stderr
        # What the unit's sandbox rules out: making namespaces (doctor's probes) needs CAP_SYS_ADMIN.
        made = netns.run(ns, [*CAPS_ONLY, "unshare", "--net", "true"], check=False)
        assert made.returncode != 0


def test_install_metrics_options_and_the_textfile_directory(doctor_says: tuple[Path, dict[str, str]]) -> None:
    root, env = doctor_says
    textfile = "/var/lib/prometheus/node-exporter/netguard.prom"
    done = install_offline(root, env, "--metrics", "127.0.0.1:9151", "--metrics-textfile", textfile)
    assert done.returncode == 0, done.stderr
    defaults = (root / "etc/default/netguard").read_text().splitlines()
    assert f'NETGUARD_OPTS="--backend iptables-legacy --metrics 127.0.0.1:9151 --metrics-textfile {textfile}"' \
        in defaults
    dropin = root / "etc/systemd/system/netguard.service.d/metrics-textfile.conf"
    assert unit_entries(dropin.read_text())["Service"] == [("ReadWritePaths", "/var/lib/prometheus/node-exporter")]
    assert "wrote" not in install_offline(root, env, "--metrics", "127.0.0.1:9151", "--metrics-textfile",
                                          textfile).stdout
    off = install_offline(root, env)
    assert off.returncode == 0 and f"removed {dropin}" in off.stdout and not dropin.exists()
    assert 'NETGUARD_OPTS="--backend iptables-legacy"' in (root / "etc/default/netguard").read_text().splitlines()
    for bad in (("--metrics", "9151; rm -rf /"), ("--metrics-textfile", "relative.prom"),
                ("--metrics-textfile", "/var/lib/a b.prom")):
        refused = install_offline(root, env, *bad)
        assert refused.returncode == 2 and bad[1] in refused.stderr
