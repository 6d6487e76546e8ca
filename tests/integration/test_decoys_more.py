"""Decoys the server's stack drops that a filter may still read (issue 10, class 2, found by a red-team
pass), on the real kernel: netguard in a namespace lab with each iptables backend and both families.
A raw socket (decoy.py) sends a decoy ClientHello with an allowed name that the lab's Linux server
drops, then the real hello with a blocked name: the connection must end blocked. The same decoys
the other way round (blocked decoy, then allowed hello) must connect: ignored, not "odd, so blocked".
"""

from __future__ import annotations

import pytest
import test_stream_fidelity
from harness import Runner
from test_stream_fidelity import ALLOWED, BLOCKED, attacks, stopped

from netguard.lab import lab as lab_mod

# test_stream_fidelity's daemon fixture (each backend, the client's resets dropped), not a copy.
daemon = test_stream_fidelity.daemon

pytestmark = pytest.mark.root

# ipopt / ipbad: IPv4 options or IPv6 extension headers the server's IP layer drops the packet for.
DECOYS = ("ipopt", "ipbad")


@pytest.mark.parametrize("family", [4, 6])
def test_decoys_the_server_drops_end_blocked(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    got = attacks(lab, daemon, family, *(f"{a}:{ALLOWED}:{BLOCKED}" for a in DECOYS))
    assert {k: stopped(v) for k, v in got.items()} == {f"{a}:{i}": True for i, a in enumerate(DECOYS)}, got


@pytest.mark.parametrize("family", [4, 6])
def test_dropped_decoys_are_ignored_not_blocked(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    got = attacks(lab, daemon, family, *(f"{a}:{BLOCKED}:{ALLOWED}" for a in DECOYS))
    assert {k: int(str(v["server_bytes"])) > 100 for k, v in got.items()} == {
        f"{a}:{i}": True for i, a in enumerate(DECOYS)}, got


@pytest.mark.parametrize("family", [4, 6])
def test_a_decoy_made_old_by_a_data_less_ack_is_not_read(lab: lab_mod.Lab, daemon: Runner, family: int) -> None:
    # The data-less ACK that moves the server's PAWS timestamp stays in the kernel, so netguard cannot
    # tell that the server drops the decoy: it reads it, but the allow waits for the server to
    # acknowledge those bytes, which it never does; the real hello, queued still, differs from them.
    got = attacks(lab, daemon, family, f"pawsjump:{ALLOWED}:{BLOCKED}")
    assert stopped(got["pawsjump:0"]), got


@pytest.mark.parametrize("family", [4, 6])
def test_a_blocked_decoy_made_old_by_a_data_less_ack_over_blocks(lab: lab_mod.Lab, daemon: Runner,
                                                                  family: int) -> None:
    # The other way round a block stays immediate: the dropped decoy's blocked name ends the
    # connection (over-blocking an attacker's own connection is the safe direction).
    got = attacks(lab, daemon, family, f"pawsjump:{BLOCKED}:{ALLOWED}")
    assert stopped(got["pawsjump:0"]), got
