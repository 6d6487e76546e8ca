"""The core (netguard/wire, netguard/policy, netguard/engine) does no I/O: no module there imports an
I/O module or the shell (daemon, doctor, fleet, lab, replay), or calls open/print/input/__import__
(checked on the AST of every file). And the daemon does not import the lab."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "netguard"
CORE_PACKAGES = ("wire", "policy", "engine")

# Modules that reach files, sockets, processes, clocks, threads or the terminal.
FORBIDDEN_MODULES = frozenset(
    {
        "_thread", "asyncio", "concurrent", "ctypes", "fcntl", "ftplib", "glob", "http.client",
        "http.server", "importlib.resources", "io", "logging", "mmap", "multiprocessing",
        "netfilterqueue", "netguard.cli", "netguard.daemon", "netguard.doctor", "netguard.fleet", "netguard.lab",
        "netguard.replay", "os", "pathlib", "pyroute2", "select",
        "selectors", "shutil", "signal", "smtplib", "socket", "socketserver", "ssl", "subprocess",
        "sys", "tempfile", "threading", "time", "urllib.request",
    }
)
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "__import__", "breakpoint", "import_module"})


def is_forbidden(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:i]) in FORBIDDEN_MODULES for i in range(1, len(parts) + 1))


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Every forbidden import or call in `source`, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if is_forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if is_forbidden(node.module):
                found.append(f"{node.lineno}: from {node.module} import ...")
            found += [
                f"{node.lineno}: from {node.module} import {a.name}"
                for a in node.names
                if is_forbidden(f"{node.module}.{a.name}")
            ]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in FORBIDDEN_CALLS:
                found.append(f"{node.lineno}: call {name}()")
    return found


def core_files() -> list[Path]:
    return sorted(p for package in CORE_PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_core_packages_exist() -> None:
    assert all((ROOT / package / "__init__.py").is_file() for package in CORE_PACKAGES)
    assert len(core_files()) >= 3


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io(path: Path) -> None:
    assert violations(path.read_text(), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import os.path",
        "from os import path",
        "from pathlib import Path",
        "import time as clock",
        "from http import client",
        "from urllib import request",
        "from netguard.daemon.netns import run",
        "import asyncio.subprocess",
        "with open('x') as f: pass",
        "print('x')",
        "__import__('os')",
        "importlib.import_module('socket')",
    ],
)
def test_checker_catches(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source", ["import struct", "from urllib.parse import urlsplit", "import http", "from . import x"]
)
def test_checker_allows(source: str) -> None:
    assert violations(source) == []


# The pure halves of netguard/fleet: verification and parsing (checked like the core).
FLEET_PURE = ("minisign.py", "document.py")


@pytest.mark.parametrize("name", FLEET_PURE)
def test_fleet_verification_does_no_io(name: str) -> None:
    path = ROOT / "fleet" / name
    found = violations(path.read_text(), str(path))
    assert [v for v in found if not v.split(": ", 1)[1].startswith("from netguard.fleet.minisign ")] == []


def test_daemon_does_not_import_the_lab() -> None:
    """The enforcing process (netguard/daemon and the fleet code it runs) must not depend on test
    scaffolding (netguard/lab)."""
    found = []
    for path in sorted([*(ROOT / "daemon").rglob("*.py"), *(ROOT / "fleet").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {m}" for m in modules if m.split(".")[:2] == ["netguard", "lab"]]
    assert found == []
