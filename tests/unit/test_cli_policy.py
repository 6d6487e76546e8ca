"""The check / policy commands as a user runs them (the installed console script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NETGUARD = [sys.executable, "-m", "netguard.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETGUARD, *args], capture_output=True, text=True, timeout=60)


def test_check_acceptance() -> None:
    r = run("check", "registry-1.docker.io")
    assert r.returncode == 0 and "allowed" in r.stdout and "Docker Hub" in r.stdout
    r = run("check", "ghcr.io")
    assert r.returncode == 1 and "GitHub Container Registry" in r.stdout and "default policy" in r.stdout
    lower, upper = run("check", "registry-1.docker.io"), run("check", "REGISTRY-1.Docker.IO.")
    assert lower.stdout == upper.stdout and upper.returncode == 0
    r = run("check", "evil.example")
    assert r.returncode == 0 and "not a known registry" in r.stdout


def test_check_unknown_deny_and_json(tmp_path: Path) -> None:
    f = tmp_path / "strict.toml"
    f.write_text('allow = ["dockerhub"]\nunknown_hosts = "deny"\n')
    r = run("check", "--policy", str(f), "--json", "evil.example", "registry-1.docker.io:443")
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["host"], x["allowed"]) for x in rows] == [("evil.example", False), ("registry-1.docker.io", True)]
    assert rows[1]["port"] == 443 and rows[0]["rule"] == "unknown_hosts = deny"


def test_check_errors_exit_2(tmp_path: Path) -> None:
    assert run("check", "a..b").returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('allow = ["githb"]\n')
    r = run("check", "--policy", str(bad), "ghcr.io")
    assert r.returncode == 2 and f"{bad}:1:10:" in r.stderr


def test_policy_validate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('allow = [\n  "dockerhub",\n  "*.*.com",\n  "quayy",\n]\nfial_mode = "open"\n')
    r = run("policy", "validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:3:3: allow: '*.*.com'" in r.stderr
    assert f"{bad}:4:3: allow: unknown registry id 'quayy'" in r.stderr
    assert f"{bad}:6:1: unknown key 'fial_mode'; did you mean 'fail_mode'?" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text('allow = ["dockerhub", "https://registry.corp.example:5000/"]\n')
    r = run("policy", "validate", str(good))
    assert r.returncode == 0 and "ok" in r.stdout and "is a URL" in r.stderr
    assert run("policy", "validate", str(tmp_path / "missing.toml")).returncode == 2


def test_policy_show_json() -> None:
    r = run("policy", "show", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    by_pattern = {row["pattern"]: row for row in doc["table"]}
    assert by_pattern["registry-1.docker.io"]["action"] == "allow"
    assert by_pattern["ghcr.io"]["action"] == "block"
    assert doc["settings"]["unknown_hosts"] == "allow"


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("netguard, version")
    assert "netguard doctor" in run("--help").stdout
