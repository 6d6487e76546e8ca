"""The native nf_tables backend ("nft"): firewall.build_rules' rule set in nft's own language.

Strategy: the same chains, marks, windows and verdicts as the iptables rule set (firewall.py's
docstring says what each rule is for), written with nft expressions instead of xt matches, and
chosen where the kernel has the nft `queue` statement (doctor's probe). One table per address
family, `ip netguard` and `ip6 netguard`, rather than one `inet` table: the daemon enforces,
checks, heals and falls back per family (an IPv4-only run where the kernel refuses the IPv6 set),
and a table per family gives each family its own transaction and its own notification family, as
the iptables backends have. The table holds regular chains named as the iptables ones and base
chains (NETGUARD-OUTPUT, -INPUT, -FORWARD) that jump to them at priority `filter - 1`, so they
run before every chain at the filter priority (iptables-nft's filter table, Docker's FORWARD
rules); netguard's verdicts end with NF_REPEAT or a fall-through to the chain's policy (accept),
so the base chains of other tables at later priorities still see every packet, as the rules after
netguard's jump do with iptables. A `return` from a goto'd chain goes back to the base chain, as
RETURN does with iptables. The raw-table rule for injected alerts is a base chain at priority raw.

Installing is one `nft -f` transaction per family that declares the table, deletes it and defines
it anew (atomic: no moment without rules, and nothing left of an older set); removal deletes the
table. Nobody else's tables are touched, and other programs' iptables-nft rules live in their own
tables.

What u32 did, nft does with payload expressions: data-less segments by one set lookup on
`ip length . @th,96,8 & 0xf0` (the IP length with the TCP data offset: nft can compare a field
with a set of pairs, which u32 could not, so one rule replaces eleven); QUIC long headers and
versions at fixed places after the UDP header (`@th`); DNS response headers and the TLS
HelloRetryRequest at the start of the TCP or UDP payload (`@ih`, the "inner header": the kernel
adds the TCP data offset itself, as u32's `@` did). Where u32 looked only at a first next header
for IPv6 (no extension headers), so do these rules (`ip6 nexthdr`), so both backends queue the same
packets. ct marks are set per value (allowed, blocked, follow, unconfirmed): nft 1.0.6 cannot copy some bits of
the packet mark into the connection mark in one statement; a packet mark of another value inside
netguard's mask is then not saved, and the packet meets the queue rules (more queued, never less).

Checking what is installed: `nft list table` prints the rules in its own canonical form, so the
exact expectation is what it printed right after netguard's own install (as with iptables-save);
the shape every installed set must have is each chain's hook and its rules' actions in order
(queue number and bypass, gotos, returns, verdicts), taken from build_rules' text, which is written
in the layout `nft list` prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from netguard.daemon import firewall
from netguard.daemon.firewall import (
    CHAIN_CONFIRM,
    CHAIN_DNS,
    CHAIN_DNS_ANY,
    CHAIN_EMPTY,
    CHAIN_FLOW,
    CHAIN_FOLLOW,
    CHAIN_HRR,
    CHAIN_QUIC,
    CHAIN_RAW,
    CHAIN_REPLY,
    CHAIN_UDP,
    CHAIN_UNCONFIRMED,
    DNS_OTHER_PORT_REPLIES,
    DNS_RESPONSE_MASK,
    DNS_RESPONSE_VALUE,
    GSO_GUARD_BYTES,
    HRR_REPLY_PACKETS,
    QUIC_PORT,
    QUIC_VERSIONS,
    REPLY_WINDOW_PACKETS,
    TCP_DATA_OFFSETS,
    TCP_WINDOW_BYTES,
    Family,
    FirewallError,
    Layout,
    Options,
)
from netguard.wire import tls

TABLE = "netguard"
NFT_FAMILY: dict[Family, str] = {4: "ip", 6: "ip6"}
# The base chains: (name, hook, priority) and the regular chains each jumps to, in order.
# `filter - 1`: before every chain at the filter priority (iptables-nft's filter table among them),
# as netguard's jumps at position 1 run before the rules of others in iptables' filter chains.
PRIORITY = "filter - 1"
BASE_CHAINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "NETGUARD-OUTPUT": ("output", firewall.HOOKS["OUTPUT"]),
    "NETGUARD-INPUT": ("input", firewall.HOOKS["INPUT"]),
    "NETGUARD-FORWARD": ("forward", firewall.HOOKS["FORWARD"]),
}
# IPv6 header bytes before the payload length counts (nft's `ip6 length` is the payload length;
# xt length, which GSO_GUARD_BYTES is written for, counts the whole packet).
IP6_HEADER = 40
# Where the tested fields sit, in bits from the start of the UDP or TCP header (`@th`) or of its
# payload (`@ih`): the first byte after the UDP header, the QUIC version after it, the TCP data
# offset's byte, and a DNS response's flags+QDCOUNT word (UDP: payload bytes 2-5; TCP: 4-7, after
# the 2-byte length prefix).
QUIC_FIRST_BIT = 64
QUIC_VERSION_BIT = 72
TCP_DOFF_BIT = 96
DNS_WORD_BIT = {"udp": 16, "tcp": 32}
# The HelloRetryRequest random is 32 bytes; nft compares at most 128 bits at once.
HRR_HALF = 16


def _hex(value: int) -> str:
    return f"0x{value:08x}"


def _queue(opts: Options) -> str:
    return f"queue flags bypass to {opts.queue_num}" if opts.fail_open else f"queue to {opts.queue_num}"


def empty_segment_test(family: Family) -> str:
    """The nft expression that matches exactly the TCP segments without payload: IP length == IP
    header + TCP header, as one lookup of (IP length, data offset byte with its low bits masked)
    in the set of the eleven pairs that say so (IPv4 with a 20-byte header and no fragment bits;
    IPv6 with TCP as the first next header), the same segments as firewall.empty_segment_tests."""
    if family == 4:
        pairs = ", ".join(f"{20 + 4 * d} . 0x{d << 4:02x}" for d in TCP_DATA_OFFSETS)
        return f"ip hdrlength 5 ip frag-off & 0x3fff == 0 ip length . @th,{TCP_DOFF_BIT},8 & 0xf0 {{ {pairs} }}"
    pairs = ", ".join(f"{4 * d} . 0x{d << 4:02x}" for d in TCP_DATA_OFFSETS)
    return f"ip6 nexthdr tcp ip6 length . @th,{TCP_DOFF_BIT},8 & 0xf0 {{ {pairs} }}"


def _empty_gate(family: Family) -> str:
    """A length some data-less segment can have (firewall.EMPTY_GATE)."""
    return "ip hdrlength 5 ip length 40-80" if family == 4 else "ip6 length 20-60"


def _first_header(family: Family, proto: str) -> str:
    """IPv6: the rule reads at a fixed place only when `proto` is the first next header (as u32)."""
    return "" if family == 4 else f"ip6 nexthdr {proto} "


def hrr_test(family: Family) -> str:
    """A TCP payload that begins with a handshake record carrying the HelloRetryRequest random."""
    first = tls.HRR_RANDOM_OFFSET * 8
    halves = [tls.HRR_RANDOM[i:i + HRR_HALF] for i in range(0, len(tls.HRR_RANDOM), HRR_HALF)]
    tests = [f"@ih,0,8 0x{tls.CONTENT_HANDSHAKE:02x}"]
    tests += [f"@ih,{first + 8 * HRR_HALF * i},{8 * len(h)} 0x{h.hex()}" for i, h in enumerate(halves)]
    return _first_header(family, "tcp") + " ".join(tests)


def tls_record_test(family: Family) -> str:
    """A TCP payload that begins with a TLS handshake record (firewall.tls_record_test)."""
    return (_first_header(family, "tcp") or "meta l4proto tcp ") + f"@ih,0,16 0x{tls.CONTENT_HANDSHAKE:02x}03"


def build_rules(family: Family, opts: Options) -> str:
    """The `nft -f` text that defines netguard's table for one family, in the layout `nft list`
    prints (so that `layout` reads it as it reads the kernel's listing)."""
    mk = opts.marks
    inv = _hex(~mk.mask & 0xFFFFFFFF)

    def pmark(value: int) -> str:
        return f"meta mark & {_hex(mk.mask)} == {_hex(value)}"

    def cmark(value: int, op: str = "==") -> str:
        return f"ct mark & {_hex(mk.mask)} {op} {_hex(value)}"

    queue = _queue(opts)
    icmp = "icmp" if family == 4 else "icmpv6"
    # The daemon's verdict marks become the connection's (CONNMARK --save-mark, one rule per value).
    unconf = mk.unconfirmed if opts.confirms_tls else None
    saved = (mk.allowed, mk.blocked, mk.follow) if unconf is None else (mk.allowed, mk.blocked, mk.follow, unconf)
    save = [f"{pmark(v)} ct mark set ct mark & {inv} | {_hex(v)}" for v in saved]
    passed = f"{pmark(mk.passed)} return"
    flow = [
        passed, *save,
        f"tcp flags & rst == rst {cmark(mk.blocked)} return",
        f"meta l4proto tcp {cmark(mk.blocked)} reject with tcp reset",
        f"meta l4proto udp {cmark(mk.blocked)} reject with {icmp} type port-unreachable",
        f"{cmark(mk.blocked)} drop",
        f"meta l4proto tcp ct direction original {pmark(0)} {cmark(mk.follow)} goto {CHAIN_FOLLOW}",
        *([] if unconf is None else
          [f"meta l4proto tcp ct direction original {pmark(0)} {cmark(unconf)} goto {CHAIN_UNCONFIRMED}"]),
        f"meta l4proto udp {pmark(0)} ct direction original goto {CHAIN_UDP}",
        f"{cmark(0, '!=')} return",
    ]
    empty = empty_segment_test(family)
    data_less = [f"tcp flags & urg == 0 {empty} return"] if opts.skip_empty else []
    follow = [*data_less, f"meta mark set meta mark & {inv} | {_hex(mk.follow)} {queue}"]
    unconfirmed: list[str] = []
    confirm: list[str] = []
    if unconf is not None:
        # firewall.py: client data queued, marked so, within the byte window; the server's first TLS
        # record makes the flow allowed, unless it was made on this host.
        mark = f"meta mark set meta mark & {inv} | {_hex(unconf)}"
        unconfirmed = [*data_less, f"ct original bytes 0-{TCP_WINDOW_BYTES} {mark} {queue}"]
        if not opts.fail_open:
            unconfirmed.append("tcp flags & rst != rst reject with tcp reset")
        confirm = ['iif "lo" fib saddr type != local return',
                   f"{tls_record_test(family)} ct mark set ct mark & {inv} | {_hex(mk.allowed)}"]
    queue_tcp = f"meta l4proto tcp ct direction original {cmark(0)} ct original bytes 0-{TCP_WINDOW_BYTES} {queue}"
    past = [] if opts.fail_open else [
        f"tcp flags & rst != rst ct direction original {cmark(0)} ct original bytes > {TCP_WINDOW_BYTES} "
        "reject with tcp reset"]
    empty_chain: list[str] = []
    if opts.skip_empty:
        flow.append(f"tcp flags & (syn | rst | urg) == 0 {_empty_gate(family)} goto {CHAIN_EMPTY}")
        empty_chain = [f"{empty} return", queue_tcp, *past]
    flow += [queue_tcp, *past]
    udp: list[str]
    quic: list[str] = []
    if opts.quic_u32:
        udp = [f"ip6 nexthdr != udp {queue}"] if family == 6 else []
        guard = (f"ip length >= {GSO_GUARD_BYTES[4]}" if family == 4
                 else f"ip6 length >= {GSO_GUARD_BYTES[6] - IP6_HEADER}")
        udp += [f"{guard} {queue}", f"@th,{QUIC_FIRST_BIT},8 & 0x80 == 0x80 goto {CHAIN_QUIC}"]
        versions = ", ".join(_hex(v) for v in QUIC_VERSIONS)
        quic = [f"{cmark(0, '!=')} {queue}", f"@th,{QUIC_VERSION_BIT},32 {{ {versions} }} {queue}",
                f"udp dport {QUIC_PORT} {queue}"]
    else:
        udp = [f"udp dport {QUIC_PORT} {queue}"]
    dns = [
        passed, *save,
        f"tcp flags & rst == rst {pmark(mk.blocked)} return",
        f"meta l4proto tcp {pmark(mk.blocked)} drop",
        *([] if unconf is None else [f"meta l4proto tcp ct direction reply {cmark(unconf)} goto {CHAIN_CONFIRM}"]),
        f"meta l4proto {{ tcp, udp }} th sport 53 ct direction reply {queue}",
        f"meta l4proto tcp ct direction reply {cmark(0)} ct reply packets 0-{REPLY_WINDOW_PACKETS} goto {CHAIN_REPLY}",
    ]
    # Every server segment, data-less ones too (firewall.py: the ACK that makes an allow final).
    server = ['iif "lo" fib saddr type != local return', queue]
    dns_any: list[str] = []
    if opts.dns_any_port:
        dns.append(f"ct direction reply ct reply packets 0-{DNS_OTHER_PORT_REPLIES} goto {CHAIN_DNS_ANY}")
        word = f"& {_hex(DNS_RESPONSE_MASK)} == {_hex(DNS_RESPONSE_VALUE)}"
        dns_any = [(f"meta l4proto {p} " if family == 4 else _first_header(family, p))
                   + f"@ih,{DNS_WORD_BIT[p]},32 {word} {queue}" for p in ("udp", "tcp")]
    hrr: list[str] = []
    if opts.reread_hrr:
        hrr = [f"meta l4proto tcp ct direction reply {cmark(mk.allowed)} ct reply packets 0-{HRR_REPLY_PACKETS} "
               f"{hrr_test(family)} ct mark set ct mark & {inv} | {_hex(mk.follow)}"]
    chains: dict[str, list[str]] = {CHAIN_FLOW: flow, CHAIN_DNS: dns, CHAIN_UDP: udp, CHAIN_REPLY: server,
                                    CHAIN_FOLLOW: follow}
    for name, rules in ((CHAIN_EMPTY, empty_chain), (CHAIN_QUIC, quic), (CHAIN_DNS_ANY, dns_any), (CHAIN_HRR, hrr),
                        (CHAIN_UNCONFIRMED, unconfirmed), (CHAIN_CONFIRM, confirm)):
        if rules:
            chains[name] = rules
    for name, (hook, targets) in BASE_CHAINS.items():
        if hook == "forward" and not opts.forward:
            continue
        chains[name] = [_hook_line(hook, PRIORITY),
                        *(f"jump {t}" for t in targets if t != CHAIN_HRR or hrr)]
    if opts.untracked_alerts:
        chains[CHAIN_RAW] = [_hook_line("output", "raw"), f"{pmark(mk.passed)} notrack"]
    out = [f"table {NFT_FAMILY[family]} {TABLE} {{"]
    for i, (name, rules) in enumerate(chains.items()):
        out += ([""] if i else []) + [f"\tchain {name} {{", *(f"\t\t{r}" for r in rules), "\t}"]
    out.append("}")
    return "\n".join(out) + "\n"


def _hook_line(hook: str, priority: str) -> str:
    return f"type filter hook {hook} priority {priority}; policy accept;"


def build_replacement(family: Family, new: str | None) -> str:
    """One `nft -f` transaction that removes netguard's table of this family, if any, and puts in
    `new` (build_rules' text; None: nothing). Declaring the table first makes the delete valid
    when there is none."""
    head = f"table {NFT_FAMILY[family]} {TABLE}\ndelete table {NFT_FAMILY[family]} {TABLE}\n"
    return head + (new or "")


# -- reading what is installed -----------------------------------------------------------------


def layout(listing: str) -> Layout:
    """netguard's table as `nft list table` prints it (or as build_rules writes it): each chain's
    lines in order, the hook line of a base chain first."""
    tables: set[str] = set()
    chains: dict[tuple[str, str], list[str]] = {}
    chain: str | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("table ") and line.endswith("{"):
            tables.add(TABLE)
        elif line.startswith("chain ") and line.endswith("{"):
            chain = line.split()[1]
            chains[(TABLE, chain)] = []
        elif line == "}":
            chain = None
        elif chain is not None:
            chains[(TABLE, chain)].append(line)
    return Layout(frozenset(tables), {k: tuple(v) for k, v in chains.items()}, {})


def _is_hook(line: str) -> bool:
    return line.startswith("type ")


def _hook(lines: Sequence[str]) -> str:
    """A base chain's hook and policy ('' for a regular chain): the words that decide what reaches it."""
    line = next((x for x in lines if _is_hook(x)), "")
    words = line.replace(";", " ").split()
    hook = words[words.index("hook") + 1] if "hook" in words[:-1] else "?"
    policy = words[words.index("policy") + 1] if "policy" in words[:-1] else "accept"
    return f"hook {hook}, policy {policy}" if line else ""


_QUEUE_NUM = re.compile(r"\bqueue\b.*?\b(?:to|num)\s+(\d+)")


def action(rule: str) -> str:
    """What a rule does with a packet, in the words that matter for reaching the queue: `queue
    7413 bypass`, `goto NETGUARD-EMPTY`, `return`, `reject`... (nft prints its matches its own way)."""
    words = rule.split()
    if "queue" in words:
        found = _QUEUE_NUM.search(rule)
        num = found.group(1) if found else "0"
        tail = rule[rule.index("queue"):]
        return f"queue {num}" + (" bypass" if "bypass" in tail.split() else "")
    for verb in ("goto", "jump"):
        if verb in words[:-1]:
            return f"{verb} {words[words.index(verb) + 1]}"
    if "reject" in words:
        return "reject"
    if words and words[-1] in ("return", "accept", "drop", "notrack"):
        return words[-1]
    if "ct" in words and "set" in words:
        return "ct mark set"
    return "none"


def differences(expected: Layout, current: Layout, family: Family) -> list[str]:
    """What keeps traffic from reaching netguard's chains or queue as they were installed, in words
    (empty: everything is in place)."""
    where = f"IPv{family}"
    if expected.tables and not current.tables:
        return [f"{where}: table {NFT_FAMILY[family]} {TABLE} is gone"]
    out = []
    for key, rules in expected.chains.items():
        chain = key[1]
        now = current.chains.get(key)
        if now is None:
            out.append(f"{where} {TABLE}: chain {chain} is gone")
            continue
        if _hook(now) != _hook(rules):
            out.append(f"{where} {TABLE}: chain {chain} is hooked differently ({_hook(now) or 'no hook'}; "
                       f"installed with {_hook(rules) or 'no hook'})")
        body = [r for r in rules if not _is_hook(r)]
        body_now = [r for r in now if not _is_hook(r)]
        if not body_now and body:
            out.append(f"{where} {TABLE}: chain {chain} is empty (flushed)")
        elif body_now != body:
            kept = sum(1 for r in body if r in body_now)
            out.append(f"{where} {TABLE}: chain {chain} was altered ({kept} of its {len(body)} rules as installed, "
                       f"{len(body_now)} rules now)")
    return out


Shape = Mapping[str, tuple[str, ...]]


def shape(text: str) -> Shape:
    """Per chain of build_rules' text: its hook (base chains) and its rules' actions, in order."""
    return {c: _actions(rules) for (_, c), rules in layout(text).chains.items()}


def _actions(rules: Sequence[str]) -> tuple[str, ...]:
    return tuple(_hook(rules) if _is_hook(r) else action(r) for r in rules)


def shape_differences(expected: Shape, current: Layout, family: Family) -> list[str]:
    """How `current` departs from the shape of build_rules' text, in words (empty: it has it)."""
    where = f"IPv{family}"
    if not current.tables:
        return [f"{where}: table {NFT_FAMILY[family]} {TABLE} is gone"]
    out = []
    for chain, actions in expected.items():
        now = current.chains.get((TABLE, chain))
        if now is None:
            out.append(f"{where} {TABLE}: chain {chain} is gone")
            continue
        got = _actions(now)
        if got != actions:
            queues = [a for a in actions if a.startswith("queue")]
            out.append(f"{where} {TABLE}: chain {chain} does not have the rules netguard installs (actions "
                       f"{', '.join(got) or 'none'}; expected {', '.join(actions)}"
                       + (f"; queue rules should read {queues[0]!r}" if queues else "") + ")")
    return out


def queue_bypass(current: Layout) -> set[bool]:
    """Whether the installed queue rules bypass when no daemon listens (one value per kind seen)."""
    return {action(r).endswith(" bypass") for rules in current.chains.values() for r in rules
            if action(r).startswith("queue")}


# -- the kernel ----------------------------------------------------------------------------------


def save(family: Family, ns: str | None = None) -> str:
    """netguard's table of this family as `nft list table` prints it ('' when there is none, or no nft)."""
    try:
        r = firewall._call(ns, ["nft", "list", "table", NFT_FAMILY[family], TABLE])
    except FileNotFoundError:
        return ""
    return r.stdout if r.returncode == 0 else ""


def present(ns: str | None = None) -> list[Family]:
    """The families that have a netguard table now."""
    try:
        r = firewall._call(ns, ["nft", "list", "tables"])
    except FileNotFoundError:
        return []
    found = {tuple(line.split()[:3]) for line in r.stdout.splitlines()}
    return [f for f in firewall.FAMILIES if ("table", NFT_FAMILY[f], TABLE) in found]


def run_nft(family: Family, text: str, ns: str | None = None) -> None:
    """One `nft -f -` transaction; FirewallError (naming the family) if the kernel refuses it."""
    try:
        r = firewall._call(ns, ["nft", "-f", "-"], text)
    except FileNotFoundError:
        raise FirewallError("nft: not installed (apt install nftables)", family) from None
    if r.returncode != 0:
        raise FirewallError(f"nft ({NFT_FAMILY[family]} {TABLE}): {_first_error(r.stderr)}", family)


def _first_error(stderr: str) -> str:
    """nft's first error line and the rule it points at (without the `/dev/stdin:L:C` prefix)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        _, marker, rest = line.partition("Error: ")
        if marker:
            rule = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"Error: {rest}" + (f" ({rule})" if rule else "")
    return " ".join(stderr.split()) or "nft failed"


def install(family: Family, opts: Options, ns: str | None = None) -> None:
    """Replace this family's netguard table (or make it) with build_rules', in one transaction."""
    run_nft(family, build_replacement(family, build_rules(family, opts)), ns)


def remove(ns: str | None = None) -> list[str]:
    """Delete netguard's tables (both families, in one transaction); what was removed."""
    families = present(ns)
    if not families:
        return []
    text = "".join(f"delete table {NFT_FAMILY[f]} {TABLE}\n" for f in families)
    run_nft(families[0], text, ns)
    return [f"nft IPv{f}" for f in families]
