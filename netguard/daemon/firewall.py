"""The kernel rules that send netguard what can carry a name, and enforce what it decided.

Strategy: `build_rules` is pure: it returns the text that `iptables-restore --noflush` (and
`ip6tables-restore`) reads, for one address family. Netguard's rules live in its own chains, jumped
to from the built-in OUTPUT, INPUT and FORWARD chains by rules inserted at position 1; one restore
call per family installs all of it atomically. Removal reads `iptables-save` and deletes exactly the
jumps and chains that carry the netguard prefix, so stale rules of a crashed run go away too and
nobody else's rules are touched.

What is queued (DESIGN.md section 3): DNS answers (UDP and TCP from port 53), the SYN and the first
client bytes of every undecided outbound TCP flow (a byte window via connbytes: with GSO one write is one packet,
so a packet count would be wrong), and the first datagrams of UDP 443 flows. Once the daemon has
decided, the verdict is saved in the connection mark and the rest of the flow stays in the kernel.
Every verdict is given with NF_REPEAT and a packet mark, never a bare accept: a bare accept would
skip the rules after netguard's jump (Docker's FORWARD isolation, an operator's own OUTPUT rules),
so a queued packet would escape them.
A flow marked blocked is rejected by the kernel (TCP reset for TCP, ICMP port unreachable for UDP);
the kernel's own reset travels back through OUTPUT with the same connection mark, so a rule before
the REJECT lets resets out.

Data-less segments (skip_empty, needs the xt u32 match): a pure ACK or a FIN without data of an
undecided flow carries nothing to read, so it leaves netguard's rules in the kernel instead of
costing a queue round trip (a new TLS connection then queues 2 packets, the SYN and the
ClientHello, not 3). "No payload" is decided exactly from the headers: u32 cannot compare two fields,
so one rule per TCP data offset (5..15) tests IP length == IP header + TCP header (IPv4 with a 20-byte
header and no fragment bits; IPv6 with TCP as the first next header). Packets with IP options or IPv6
extension headers stay queued. SYNs (ISN, TTL, TCP Fast Open data) and RSTs are never skipped. A
segment is skipped only while the server has sent nothing but its SYN-ACK (connbytes, reply
direction, packet count): when the server speaks first (SSH, SMTP banners) the client's ACKs are
still queued, so the engine can judge such a flow by address after a few data-less segments
(engine.core.MAX_EMPTY_SEGMENTS) instead of letting it run undecided. One gate rule in NETGUARD-FLOW
(no SYN or RST, a length a data-less segment can have, the server quiet) goes to NETGUARD-EMPTY,
which holds the exact tests and then the same queue rule; so a ClientHello passes one extra rule, not
eleven. Skipping is a RETURN from the goto'd chain (back to the hook's chain, like a RETURN from
NETGUARD-FLOW), never ACCEPT, so the rules after netguard's jump still apply. Only undecided flows
reach these rules. Where the kernel has no u32, `apply_preferred` falls back to the rules without
them (every segment queued).

Only the filter table is used: CONNMARK, connbytes, NFQUEUE, u32 and REJECT all work there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from netguard.daemon import netns
from netguard.policy import passed_mark

CHAIN_PREFIX = "NETGUARD"
CHAIN_FLOW = "NETGUARD-FLOW"  # verdict enforcement + queueing of new client flows (OUTPUT, FORWARD)
CHAIN_DNS = "NETGUARD-DNS"  # DNS answers to the queue (INPUT, FORWARD)
CHAIN_RAW = "NETGUARD-RAW"  # raw table: injected TLS alerts leave conntrack alone (OUTPUT)
CHAIN_EMPTY = "NETGUARD-EMPTY"  # data-less segments leave, the rest is queued (goto from NETGUARD-FLOW)
CHAINS = (CHAIN_FLOW, CHAIN_DNS)
HOOKS: dict[str, tuple[str, ...]] = {"OUTPUT": (CHAIN_FLOW,), "INPUT": (CHAIN_DNS,),
                                     "FORWARD": (CHAIN_DNS, CHAIN_FLOW)}

# The client bytes (headers included, as connbytes counts them) queued while a TCP flow is
# undecided. It must exceed the largest single write a client can make before the name is known:
# with GSO the kernel hands OUTPUT one skb of up to 64 KiB, which connbytes counts as one packet.
# The engine decides long before (its own byte limit is far smaller).
TCP_WINDOW_BYTES = 131072
# UDP 443 (QUIC): the Initial datagrams of a flow; a ClientHello spans at most a few of them.
UDP_WINDOW_BYTES = 16384
# Every TCP data offset (header length in 32-bit words: 5 without options, 15 at most): one
# data-less-segment rule each, since u32 cannot compare the IP length with the TCP header length.
TCP_DATA_OFFSETS = range(5, 16)
# Reply-direction packets up to which a data-less segment may skip the queue: the SYN-ACK alone.
# More means the server has sent something (a banner) and the client's ACKs count toward a decision.
SKIP_REPLY_PACKETS = 1
# The one test that sends a segment to NETGUARD-EMPTY: a length some data-less segment can have
# (IPv4 with a 20-byte header: total 40..80; IPv6: payload 20..60). A ClientHello fails it in one
# rule instead of walking the eleven exact ones.
EMPTY_GATE = {4: "0&0xFF00FFFF=0x45000028:0x45000050", 6: "4>>16=20:60"}

Backend = Literal["iptables-nft", "iptables-legacy"]
BACKENDS: tuple[Backend, ...] = ("iptables-nft", "iptables-legacy")
Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)


@dataclass(frozen=True)
class Marks:
    """Connection-mark bits netguard owns (Docker, kube-proxy and Calico use other bits)."""

    mask: int = 0x00700000
    allowed: int = 0x00100000
    blocked: int = 0x00200000

    def __post_init__(self) -> None:
        for name in ("allowed", "blocked"):
            value = getattr(self, name)
            if value == 0 or value & ~self.mask:
                raise ValueError(f"mark {name}=0x{value:x} must be non-zero and inside mask 0x{self.mask:x}")
        if self.allowed == self.blocked:
            raise ValueError("the allowed and blocked marks must differ")

    @property
    def passed(self) -> int:
        """The packet mark for "seen, let this one packet go on" (policy.passed_mark)."""
        value = passed_mark(self.mask, self.allowed, self.blocked)
        if value is None:
            raise ValueError(f"mark mask 0x{self.mask:x} leaves no value besides allowed and blocked")
        return value


@dataclass(frozen=True)
class Options:
    """What the rules depend on."""

    queue_num: int = 7413
    marks: Marks = Marks()
    fail_open: bool = False  # --queue-bypass: traffic flows while no daemon listens
    forward: bool = True  # also judge traffic routed through this host (containers behind a bridge)
    # block_action = "tls-alert": the injected alerts (marked "passed") skip connection tracking.
    # Toward a masqueraded container an alert matches no direction of the NATed connection's entry,
    # and the new entry it would make clashes with that one and is dropped.
    untracked_alerts: bool = False
    # Data-less TCP segments of undecided flows stay in the kernel (needs the xt u32 match).
    skip_empty: bool = True
    # The address families that get rules: (4,) on a kernel that refuses the IPv6 set.
    families: tuple[Family, ...] = FAMILIES


def _m(value: int, mask: int) -> str:
    return f"0x{value:x}/0x{mask:x}"


def _queue(opts: Options) -> list[str]:
    target = ["-j", "NFQUEUE", "--queue-num", str(opts.queue_num)]
    return [*target, "--queue-bypass"] if opts.fail_open else target


def empty_segment_tests(family: Family) -> list[str]:
    """The u32 expressions that together match exactly the TCP segments without payload (one per
    TCP data offset): IP length == IP header + TCP header. IPv4: version 4 with a 20-byte header
    (first byte 0x45, the TOS byte masked out), total length 20 + 4 * offset, no fragment bits, the
    offset nibble at byte 32. IPv6: payload length 4 * offset with TCP (6) as the next header, the
    offset nibble at byte 52."""
    if family == 4:
        return [f"0&0xFF00FFFF=0x{0x45000000 + 20 + 4 * d:08X}&&4&0x3FFF=0&&32>>28={d}" for d in TCP_DATA_OFFSETS]
    return [f"4&0xFFFFFF00=0x{(4 * d) << 16 | 6 << 8:08X}&&52>>28={d}" for d in TCP_DATA_OFFSETS]


def build_rules(family: Family, opts: Options) -> str:
    """The iptables-restore text that installs netguard's chains and jumps (filter table; raw too
    with untracked_alerts)."""
    mk = opts.marks
    undecided = ["-m", "connmark", "--mark", _m(0, mk.mask)]
    blocked = ["-m", "connmark", "--mark", _m(mk.blocked, mk.mask)]
    unreach = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
    original = ["-m", "conntrack", "--ctdir", "ORIGINAL"]
    # The daemon gives every verdict with repeat(), so the packet runs through the rest of the
    # chain (and the rules of others after netguard's jump) instead of skipping them: "passed"
    # returns at once; a verdict mark becomes the connection's.
    passed = ["-m", "mark", "--mark", _m(mk.passed, mk.mask), "-j", "RETURN"]
    flow: list[list[str]] = [
        passed,
        ["-m", "mark", "!", "--mark", _m(0, mk.mask),
         "-j", "CONNMARK", "--save-mark", "--nfmask", hex(mk.mask), "--ctmask", hex(mk.mask)],
        ["-p", "tcp", "--tcp-flags", "RST", "RST", *blocked, "-j", "RETURN"],
        ["-p", "tcp", *blocked, "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-p", "udp", *blocked, "-j", "REJECT", "--reject-with", unreach],
        [*blocked, "-j", "DROP"],
        ["-m", "connmark", "!", "--mark", _m(0, mk.mask), "-j", "RETURN"],
    ]
    queue_tcp = ["-p", "tcp", *original, *undecided, "-m", "connbytes", "--connbytes", f"0:{TCP_WINDOW_BYTES}",
                 "--connbytes-dir", "original", "--connbytes-mode", "bytes", *_queue(opts)]
    empty: list[list[str]] = []
    if opts.skip_empty:
        # Undecided from here on. A goto: RETURN in NETGUARD-EMPTY leaves netguard's rules (as a
        # RETURN here would), and what is not data-less meets the same queue rule there.
        flow.append(["-p", "tcp", "--tcp-flags", "SYN,RST", "NONE", "-m", "u32", "--u32", EMPTY_GATE[family],
                     "-m", "connbytes", "--connbytes", f"0:{SKIP_REPLY_PACKETS}", "--connbytes-dir", "reply",
                     "--connbytes-mode", "packets", "-g", CHAIN_EMPTY])
        empty = [["-m", "u32", "--u32", test, "-j", "RETURN"] for test in empty_segment_tests(family)]
        empty.append(queue_tcp)
    flow += [
        queue_tcp,
        ["-p", "udp", "--dport", "443", *original, *undecided, "-m", "connbytes",
         "--connbytes", f"0:{UDP_WINDOW_BYTES}", "--connbytes-dir", "original", "--connbytes-mode", "bytes",
         *_queue(opts)],
    ]
    # Answers only: the reply direction of a flow to port 53. A client flow *from* port 53 (a root
    # process may bind it) is original direction and must meet the flow rules instead.
    reply = ["-m", "conntrack", "--ctdir", "REPLY"]
    dns = [
        passed,
        ["-p", "udp", "--sport", "53", *reply, *_queue(opts)],
        ["-p", "tcp", "--sport", "53", *reply, *_queue(opts)],
    ]
    lines = ["*filter", f":{CHAIN_FLOW} - [0:0]", f":{CHAIN_DNS} - [0:0]"]
    lines += [f":{CHAIN_EMPTY} - [0:0]"] if empty else []
    lines += [" ".join(["-A", CHAIN_FLOW, *r]) for r in flow]
    lines += [" ".join(["-A", CHAIN_EMPTY, *r]) for r in empty]
    lines += [" ".join(["-A", CHAIN_DNS, *r]) for r in dns]
    for hook, chains in HOOKS.items():
        if hook == "FORWARD" and not opts.forward:
            continue
        # Inserted in reverse so that the first chain listed runs first.
        lines += [f"-I {hook} 1 -j {chain}" for chain in reversed(chains)]
    lines.append("COMMIT")
    if opts.untracked_alerts:
        lines += ["*raw", f":{CHAIN_RAW} - [0:0]",
                  f"-A {CHAIN_RAW} -m mark --mark {_m(mk.passed, mk.mask)} -j CT --notrack",
                  f"-I OUTPUT 1 -j {CHAIN_RAW}", "COMMIT"]
    return "\n".join(lines) + "\n"


def _ours(saved: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """From `iptables-save` output: per table, the deletions of jumps into netguard chains, and the
    netguard chains themselves."""
    table = ""
    jumps: dict[str, list[str]] = {}
    chains: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":" + CHAIN_PREFIX):
            chains.setdefault(table, []).append(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = line.split()
            if not parts[1].startswith(CHAIN_PREFIX) and _jumps_to_ours(parts):
                jumps.setdefault(table, []).append("-D " + line[3:])
    return jumps, chains


def build_removal(saved: str) -> str | None:
    """From `iptables-save` output, the restore text that deletes every netguard jump and chain
    (None when there is nothing to remove)."""
    return build_replacement(saved, None)


def build_replacement(saved: str, new: str | None) -> str | None:
    """One restore text that takes out the netguard rules in `saved` and puts in `new` (the output
    of build_rules; None: put nothing in), one COMMIT per table. Each table changes in a single
    transaction, so a restart or a reload never leaves a moment without rules. (None when there is
    nothing to do.)"""
    jumps, chains = _ours(saved)
    added: dict[str, list[str]] = {}
    table = ""
    for line in (new or "").splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line != "COMMIT":
            added.setdefault(table, []).append(line)
    out: list[str] = []
    for t in sorted(set(jumps) | set(chains) | set(added)):
        declared = [line for line in added.get(t, []) if line.startswith(":")]
        kept = {line[1:].split()[0] for line in declared}
        gone = [c for c in chains.get(t, []) if c not in kept]
        # Declaring a chain that exists flushes it; old jumps go before new ones come in.
        out += [f"*{t}", *declared, *jumps.get(t, []), *(f"-F {c}" for c in gone), *(f"-X {c}" for c in gone)]
        out += [line for line in added.get(t, []) if not line.startswith(":")]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else None


def _jumps_to_ours(parts: Sequence[str]) -> bool:
    return any(w in ("-j", "-g") and parts[i + 1].startswith(CHAIN_PREFIX) for i, w in enumerate(parts[:-1]))


def tool(backend: Backend, family: Family, action: Literal["save", "restore"]) -> str:
    """The binary for one backend, family and action, e.g. ip6tables-legacy-restore."""
    base = "iptables" if family == 4 else "ip6tables"
    suffix = "nft" if backend == "iptables-nft" else "legacy"
    return f"{base}-{suffix}-{action}"


class FirewallError(RuntimeError):
    """A rule set could not be installed or removed."""


def _argv(ns: str | None, argv: list[str]) -> list[str]:
    return netns.exec_argv(ns, argv) if ns else argv


def _call(ns: str | None, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(ns, argv), input=stdin, capture_output=True, text=True, timeout=30)


def save(backend: Backend, family: Family, ns: str | None = None) -> str:
    """The filter and raw tables as `iptables-save` prints them, without its timestamped comment lines
    so two saves of the same tables compare equal ('' if the tool is missing or fails)."""
    out = ""
    for table in ("filter", "raw"):
        try:
            r = _call(ns, [tool(backend, family, "save"), "-t", table])
        except FileNotFoundError:
            return ""
        if r.returncode == 0:
            out += "".join(line for line in r.stdout.splitlines(keepends=True) if not line.startswith("#"))
    return out


def installed(backend: Backend, family: Family, ns: str | None = None) -> list[str]:
    """The netguard lines currently in the filter table (for `rules show` and tests)."""
    return [line for line in save(backend, family, ns).splitlines() if CHAIN_PREFIX in line]


def remove(ns: str | None = None, keep: Backend | None = None) -> list[str]:
    """Remove every netguard chain and jump, in both families and both iptables backends (stale
    rules of a crashed run may sit in either), except those of backend `keep`. Returns what was
    removed, one line per family."""
    done: list[str] = []
    for backend in BACKENDS:
        if backend == keep:
            continue
        for family in FAMILIES:
            if _restore(backend, family, build_removal(save(backend, family, ns)), ns):
                done.append(f"{backend} IPv{family}")
    return done


def apply(backend: Backend, opts: Options, ns: str | None = None) -> None:
    """Put netguard's rules for its families (both, unless opts.families says otherwise) in place,
    replacing any netguard rules already there in the same restore (one transaction per table); if
    the second family fails, netguard's rules are removed from the first again."""
    for i, family in enumerate(opts.families):
        try:
            _restore(backend, family, build_replacement(save(backend, family, ns), build_rules(family, opts)), ns)
        except FirewallError:
            if i:
                remove(ns)
            raise


def apply_preferred(backend: Backend, opts: Options, ns: str | None = None) -> tuple[Options, str | None]:
    """apply(); if the kernel refuses the rules that keep data-less segments out of the queue (no xt
    u32 match) but takes the set without them, that set. Returns the options in force and, after a
    fallback, why. Trying in place needs no scratch namespace (a sandboxed service cannot make one),
    and a refused restore changes nothing."""
    try:
        apply(backend, opts, ns)
        return opts, None
    except FirewallError as exc:
        if not opts.skip_empty:
            raise
        fallback = replace(opts, skip_empty=False)
        apply(backend, fallback, ns)
        return fallback, str(exc).splitlines()[0]


def _restore(backend: Backend, family: Family, text: str | None, ns: str | None) -> bool:
    if text is None:
        return False
    r = _call(ns, [tool(backend, family, "restore"), "--noflush"], text)
    if r.returncode != 0:
        raise FirewallError(f"{tool(backend, family, 'restore')}: {r.stderr.strip()}")
    return True
