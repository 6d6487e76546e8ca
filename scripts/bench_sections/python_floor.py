"""The Python floor for scripts/bench's netpath section: the least a Python NetfilterQueue consumer costs.

Strategy: nfqueue_floor.c's verdicts from Python, through the binding netguard uses (NetfilterQueue,
bound as netguard.daemon.nfqueue binds it: full copies, QUEUE_MAXLEN) and netguard's own receive
loop shape (select on the queue's socket, then NetfilterQueue's non-blocking run), so that "netguard
/ python floor" leaves only what netguard does with a packet: the engine, its verdict logic and the
callback's bookkeeping. Each packet gets the verdict netguard gives an allowed flow: a repeat with
the "passed" mark for a DNS answer (INPUT hook) and a SYN (netguard accepts it undecided), the
"allowed" mark for anything else. The TCP flags byte is all it reads (get_payload is the binding's
one way to read it), for the C floor's reason: a SYN must not decide the flow, or the floor would
queue fewer packets per connection than netguard.

    python -m bench_sections.python_floor QUEUE MASK ALLOWED PASSED   prints "ready", serves until killed
"""

from __future__ import annotations

import select
import sys

from netfilterqueue import NetfilterQueue, Packet

from netguard.daemon.nfqueue import QUEUE_MAXLEN

HOOK_LOCAL_IN = 1  # NF_INET_LOCAL_IN: the rules queue DNS answers there
TCP = 6
TCP_SYN = 0x02
IPV6_HEADER = 40  # the bench sends no IPv6 extension headers
TICK = 0.25  # as netguard.daemon.run.TICK: the select timeout of netguard's loop


def serve(queue_num: int, mask: int, allowed: int, passed: int) -> None:
    """Bind the queue, say "ready" on stdout, then give every packet its verdict until killed."""
    keep = ~mask

    def on_packet(packet: Packet) -> None:
        data = packet.get_payload()
        version = data[0] >> 4
        try:
            if version == 4:
                syn = data[9] == TCP and data[(data[0] & 0x0F) * 4 + 13] & TCP_SYN
            else:
                syn = version == 6 and data[6] == TCP and data[IPV6_HEADER + 13] & TCP_SYN
        except IndexError:  # shorter than its headers: not a SYN (the C floor's length checks)
            syn = False
        packet.set_mark((packet.get_mark() & keep) | (passed if packet.hook == HOOK_LOCAL_IN or syn else allowed))
        packet.repeat()

    nfq = NetfilterQueue()
    nfq.bind(queue_num, on_packet, max_len=QUEUE_MAXLEN)
    print("ready", flush=True)
    fds = [nfq.get_fd()]
    pump = nfq.run
    while True:
        if select.select(fds, [], [], TICK)[0]:
            pump(block=False)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench_sections.python_floor QUEUE MASK ALLOWED PASSED")
    serve(*(int(a, 0) for a in sys.argv[1:5]))
