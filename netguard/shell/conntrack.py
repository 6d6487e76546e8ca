"""Cutting open connections: the conntrack tool sets the "blocked" mark on a connection, so the
next packet the client sends hits the kernel REJECT rule and the client gets a reset.

Strategy: one `conntrack -U` per connection (a reload cuts few); the mark is written under the mask
so other bits of the connection mark stay as they were.
"""

from __future__ import annotations

import subprocess

from netguard.engine import FlowKey


def mark_blocked(key: FlowKey, blocked: int, mask: int) -> bool:
    """Set the blocked mark on the connection of key. False if conntrack found no such connection."""
    text = key.text()
    argv = ["conntrack", "-U", "-p", text["proto"], "--orig-src", text["src"], "--orig-dst", text["dst"],
            "--sport", str(text["sport"]), "--dport", str(text["dport"]), "--mark", f"{blocked}/{mask}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    return r.returncode == 0
