"""Cutting open connections: the conntrack tool sets the "blocked" mark on a connection, so the
next packet the client sends hits the kernel REJECT rule and the client gets a reset.

Strategy: one `conntrack -U` per connection (a reload cuts few); the mark is written under the mask
so other bits of the connection mark stay as they were.
"""

from __future__ import annotations

import subprocess

from netguard.engine import FlowKey


def mark_blocked(key: FlowKey, blocked: int, mask: int) -> str | None:
    """Set the blocked mark on the connection of key. Returns None when done, "gone" when the
    kernel no longer tracks that connection (it has closed), else why it failed."""
    text = key.text()
    argv = ["conntrack", "-U", "-p", text["proto"], "--orig-src", text["src"], "--orig-dst", text["dst"],
            "--sport", str(text["sport"]), "--dport", str(text["dport"]), "--mark", f"{blocked}/{mask}"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"conntrack: {exc}"
    if r.returncode == 0:
        return None
    if "0 flow entries" in r.stderr:
        return "gone"
    return r.stderr.strip() or f"conntrack exited with {r.returncode}"
