"""Check-in without server software: what each policy fetch tells the policy server about this machine.

Strategy: the fetch itself is the report. Each request carries a few `Netguard-*` headers, and the
organisation's web server writes them to its access log (docs/organisation.md has an nginx
log_format; scripts/compliance-report turns the log into a table of machines). The machine is
named by a stable id that does not give away /etc/machine-id (which other software uses as a
secret-ish key): the systemd recipe for application-specific ids (sd_id128_get_machine_app_specific),
HMAC-SHA256 keyed by the machine id over netguard's application id, cut to 128 bits as a v4 UUID,
so `systemd-id128 -a 9a90b37cd2d04bab92e4a4a4b5d5f06b machine-id` prints the same id on the machine.
Where there is no machine id (some containers and WSL distributions), a random id is made once and
kept in the state directory.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path

from netguard.fleet.document import time_text

APP_ID = bytes.fromhex("9a90b37cd2d04bab92e4a4a4b5d5f06b")  # netguard's; made once with `systemd-id128 new`
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
OWN_ID_FILE = "machine-id"  # in the state directory, when the system has none
STATES = ("enforcing", "monitor", "degraded")


def app_specific_id(machine_id: bytes, app_id: bytes = APP_ID) -> str:
    """systemd's sd_id128_get_machine_app_specific: HMAC-SHA256(machine id, app id), first 16 bytes
    with the UUID v4 version and variant bits set; 32 hex digits."""
    digest = bytearray(hmac.new(machine_id, app_id, sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def parse_machine_id(text: str) -> bytes | None:
    """The 16 bytes of a machine-id file's 32 hex digits; None if it holds something else ("uninitialized")."""
    text = text.strip()
    if len(text) != 32:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if any(raw) else None


def machine(state_dir: Path) -> str:
    """This machine's netguard id (see the module's Strategy)."""
    for path in MACHINE_ID_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            raw = parse_machine_id(path.read_text(encoding="ascii"))
            if raw is not None:
                return app_specific_id(raw)
    own = state_dir / OWN_ID_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        raw = parse_machine_id(own.read_text(encoding="ascii"))
        if raw is not None:
            return app_specific_id(raw)
    raw = secrets.token_bytes(16)
    with contextlib.suppress(OSError):
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = own.with_suffix(".tmp")
        tmp.write_text(raw.hex() + "\n", encoding="ascii")
        os.replace(tmp, own)
    return app_specific_id(raw)


def headers(machine_id: str, version: str, policy_version: int | None, policy_sha256: str | None, state: str,
            last_block: float | None) -> dict[str, str]:
    """The check-in request headers."""
    return {
        "Netguard-Machine": machine_id,
        "Netguard-Version": version,
        "Netguard-Policy-Version": "none" if policy_version is None else str(policy_version),
        "Netguard-Policy-Sha256": policy_sha256 or "none",
        "Netguard-State": state,
        "Netguard-Last-Block": "none" if last_block is None else time_text(last_block),
    }
