"""Command line: the thin layer between a person and the core. Exit codes: 0 ok / allowed /
can enforce / running, 1 blocked / degraded, 2 error / cannot enforce, 3 not running (status)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import click

from netguard import __version__
from netguard.daemon.policyfiles import load_policy
from netguard.policy import Decision, HostError, Policy, PolicyError, decide, split_port
from netguard.policy.explain import Explanation, explain


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netguard")
def main() -> None:
    """netguard keeps container pulls inside the registries your organization allows.

    It runs inside the Linux VM that pulls images (Docker Desktop's VM, a WSL 2 distribution, a
    Vagrant box, any Linux host), reads DNS answers and the names in new connections (TLS SNI,
    HTTP Host/CONNECT, QUIC), and resets connections to registries the policy does not allow.

    \b
    First steps:
      netguard doctor                 can this machine enforce? what is missing?
      netguard check ghcr.io          what would the policy do with this host, and why
      netguard policy show            the effective allow/block table
      netguard run                    enforce (as root), default policy unless --policy
      netguard status                 is netguard enforcing here, and what has it blocked?
    """


def _load(policy_path: str | None) -> Policy:
    """Load a policy for a command; its problems (FILE:LINE:COL) go to stderr with exit status 2."""
    try:
        return load_policy(policy_path)
    except PolicyError as e:
        click.echo(str(e), err=True)
    except OSError as e:
        click.echo(f"{policy_path}: cannot read policy: {e.strerror}", err=True)
    sys.exit(2)


T = TypeVar("T")

policy_option = click.option(
    "--policy", "policy_path", type=click.Path(dir_okay=False), metavar="FILE",
    help="Policy file (TOML). Without it, the embedded default policy: Docker Hub allowed, "
         "other known registries blocked, unknown hosts allowed.")


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="HOST[:PORT]...")
@policy_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host.")
def check(targets: tuple[str, ...], policy_path: str | None, as_json: bool) -> None:
    """Say what the policy does with connections to each HOST, and why.

    Exit status: 0 if every host is allowed, 1 if any is blocked, 2 on an error
    (an invalid host name or policy).

    \b
    Examples:
      netguard check ghcr.io registry-1.docker.io
      netguard check --policy corp.toml registry.corp.example:5000
    """
    policy = _load(policy_path)

    def show(d: Decision) -> str:
        if as_json:
            return json.dumps({**asdict(d), "policy": policy.label})
        where = d.host if d.port is None else f"{d.host}:{d.port}"
        return f"{'allowed' if d.allowed else 'BLOCKED'}  {where}\n  {d.reason}"

    _judge_each(targets, policy, lambda host, port: decide(host, port, policy), show,
                lambda d: d.allowed)


def _judge_each(targets: tuple[str, ...], policy: Policy, judge: Callable[[str, int | None], T],
                show: Callable[[T], str], allowed: Callable[[T], bool]) -> NoReturn:
    """Judge and print each HOST[:PORT]; exit 0 if all are allowed, 1 if one is blocked, 2 if a
    target is not a host name."""
    for w in policy.warnings:
        click.echo(f"warning: {w}", err=True)
    worst = 0
    for target in targets:
        try:
            host, port = split_port(target)
            result = judge(host, port)
        except HostError as e:
            click.echo(f"error: {target}: {e}", err=True)
            worst = 2
            continue
        click.echo(show(result))
        if not allowed(result):
            worst = max(worst, 1)
    sys.exit(worst)


@main.group()
def policy() -> None:
    """Validate a policy file, show the table it produces, or explain a decision."""


@policy.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def policy_validate(file: str) -> None:
    """Check FILE: TOML syntax, known keys and values, host patterns, catalog ids, duplicates.

    Prints FILE:LINE:COL: message for every problem and exits 2, or prints a summary and exits 0.
    """
    try:
        p = load_policy(file)
    except PolicyError as e:
        click.echo(str(e), err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"{file}: cannot read: {e.strerror}", err=True)
        sys.exit(2)
    for w in p.warnings:
        click.echo(f"warning: {w}", err=True)
    allowed = sorted(p.allow_ids)
    click.echo(f"{file}: ok: policy {p.name!r}; allowed registries: {', '.join(allowed) or 'none'}; "
               f"{len(p.table)} host patterns; unknown_hosts = {p.unknown_hosts}; fail_mode = {p.fail_mode}")


@policy.command("show")
@policy_option
@click.option("--json", "as_json", is_flag=True, help="The table as JSON.")
def policy_show(policy_path: str | None, as_json: bool) -> None:
    """Show the effective allow/block table: every host pattern, its registry and the rule."""
    p = _load(policy_path)
    rows = sorted(((str(pattern), rule, rule.text(pattern)) for pattern, rule in p.table),
                  key=lambda r: (r[1].registry or "~", r[0]))
    settings = {"name": p.name, "source": p.source, "unknown_hosts": p.unknown_hosts, "fail_mode": p.fail_mode,
                "block_action": p.block_action, "dns_block": p.dns_block, "queue_num": p.queue_num,
                "mark_mask": hex(p.mark_mask), "mark_allowed": hex(p.mark_allowed),
                "mark_blocked": hex(p.mark_blocked)}
    if as_json:
        table = [{"pattern": pat, "action": "allow" if r.allowed else "block", "registry": r.registry,
                  "rule": text} for pat, r, text in rows]
        click.echo(json.dumps({"settings": settings, "table": table}, indent=2))
        return
    for key, value in settings.items():
        click.echo(f"{key:14} {value}")
    click.echo("")
    width = max(len(pat) for pat, _, _ in rows) if rows else 10
    click.echo(f"{'ACTION':7} {'PATTERN':{width}}  {'REGISTRY':18} RULE")
    for pat, r, text in rows:
        click.echo(f"{'allow' if r.allowed else 'block':7} {pat:{width}}  {r.registry or '-':18} {text}")
    click.echo(f"\nany other host: {p.unknown_hosts} (unknown_hosts)")


@policy.command("explain")
@click.argument("targets", nargs=-1, required=True, metavar="HOST[:PORT]...")
@policy_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host.")
def policy_explain(targets: tuple[str, ...], policy_path: str | None, as_json: bool) -> None:
    """Show how the decision for each HOST is reached: its normal form, every table entry that
    matches it (most specific first: the first decides, the others are shadowed), hosts the catalog
    leaves out on purpose, and the decision. Exit status as for `check`.

    \b
    Example:
      netguard policy explain cdn01.quay.io production.cloudflare.docker.com
    """
    p = _load(policy_path)

    def show(e: Explanation) -> str:
        if not as_json:
            return _explanation_text(e, p)
        return json.dumps({
            "written": e.written, "host": e.host, "port": e.port, "policy": p.label,
            "matches": [{"pattern": str(m.pattern), "action": "allow" if m.rule.allowed else "block",
                         "registry": m.rule.registry, "rule": m.text} for m in e.matches],
            "left_out": [asdict(x) for x in e.left_out], "decision": asdict(e.decision)})

    _judge_each(targets, p, lambda host, port: explain(host, port, p), show, lambda e: e.decision.allowed)


def _explanation_text(e: Explanation, p: Policy) -> str:
    where = e.host if e.port is None else f"{e.host}:{e.port}"
    lines = [where if e.written == e.host else f"{where}  (written {e.written!r})"]
    if e.matches:
        lines.append("  matching entries, most specific first:")
        for i, m in enumerate(e.matches):
            action = "allow" if m.rule.allowed else "block"
            tail = "  <- decides" if i == 0 else "  (shadowed)"
            lines.append(f"    {action:5} {m.pattern!s:40} {m.rule.registry or '-':12} {m.text!r}{tail}")
    else:
        lines.append(f"  no entry matches; unknown_hosts = {p.unknown_hosts} decides")
    for x in e.left_out:
        lines.append(f"  left out of {x.registry_name} ({x.registry}) on purpose, as {x.written!r}: {x.reason}")
    d = e.decision
    lines.append(f"  {'allowed' if d.allowed else 'BLOCKED'}: {d.reason}")
    return "\n".join(lines)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--root", type=click.Path(file_okay=False, exists=True), default="/", show_default=True,
              help="Read the environment below this directory (a fixture tree); probes run live only "
                   "for /.")
@click.option("--facts", "facts_path", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Environment variables and probe results from a JSON file instead of this process "
                   "and a live probe (for trees that cannot be probed here).")
def doctor(as_json: bool, root: str, facts_path: str | None) -> None:
    """Say whether this machine can enforce, and if not, why and what to do.

    Detects the environment (WSL 1/2, Docker Desktop VM, Vagrant box, container, Linux), applies
    the kernel version gates, and probes the netfilter features netguard needs in scratch network
    namespaces (never in this one). Exit status: 0 can enforce, 1 degraded, 2 cannot enforce.
    """
    from pathlib import Path

    from netguard.doctor.report import assess, load_facts, render, to_json_text

    base = Path(root)
    if facts_path is not None:
        env, probes = load_facts(Path(facts_path))
        report = assess(base, env, live=False, probes=probes, probe_source=facts_path)
    else:
        live = base.resolve() == Path("/")
        report = assess(base, None if live else {}, live=live)
    click.echo(to_json_text(report) if as_json else render(report))
    sys.exit(report.exit_code)


# -- enforcement: run, rules, replay, demo (netguard.daemon, netguard.replay, netguard.lab.demo) --------


@main.command()
@policy_option
@click.option("--backend", type=click.Choice(["iptables-nft", "iptables-legacy"]),
              help="Firewall backend; default: the first that doctor finds working here.")
def run(policy_path: str | None, backend: str | None) -> None:
    """Enforce the policy in this network namespace (as root) until SIGTERM or Ctrl-C.

    Installs netguard's firewall chains (both address families), reads DNS answers and the first
    bytes of new connections from NFQUEUE, and resets connections to blocked registries. SIGHUP,
    or a change of the policy file, reloads the policy (a bad one is rejected and the old one
    stays); open connections to a registry that became blocked are cut. One JSON line per block
    goes to stdout. On exit every rule is removed. Refuses to start where the kernel cannot queue.
    """
    import os
    from pathlib import Path

    from netguard.daemon import run as daemon

    if os.geteuid() != 0:
        click.echo("netguard run: must run as root (it installs firewall rules)", err=True)
        sys.exit(2)
    _load(policy_path)
    try:
        chosen = daemon.choose_backend(backend)
        d = daemon.Daemon(Path(policy_path) if policy_path else None, chosen)
        code = d.run()
    except daemon.StartError as e:
        click.echo(f"netguard run: {e}", err=True)
        sys.exit(2)
    _drop_unreadable_log()
    sys.exit(code)


def _drop_unreadable_log() -> None:
    """The block log's reader may have gone (a closed pipe): what stays buffered would make the
    interpreter's exit flush fail and turn a clean stop into exit status 120, depending on whether
    stdout is buffered (PYTHONUNBUFFERED). Flush now; if nobody reads, send the rest to /dev/null."""
    import os

    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The daemon's status document as JSON.")
def status(as_json: bool) -> None:
    """Is netguard enforcing in this network namespace? Its policy, backend, counters and (as root)
    the most recent blocks. Exit status: 0 running, 3 not running, 2 error.

    When no daemon runs but netguard rules are installed (a crash, or `systemctl stop` that did not
    finish), it says so: with fail_mode closed those rules hold new connections until a daemon returns.
    """
    import os

    from netguard.daemon import firewall
    from netguard.daemon.status import query

    try:
        doc = query()
    except (OSError, ValueError) as exc:
        click.echo(f"netguard status: no readable answer from the daemon: {exc}", err=True)
        sys.exit(2)
    if doc is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("netguard is not running in this network namespace")
            if os.geteuid() == 0:
                left = [f"{b} IPv{f}" for b in firewall.BACKENDS for f in firewall.FAMILIES if firewall.installed(b, f)]
                if left:
                    click.echo(f"  but its rules are installed ({', '.join(left)}): with fail_mode closed, new "
                               "connections wait for a daemon; `netguard rules remove` removes them")
        sys.exit(3)
    if as_json:
        click.echo(json.dumps({"running": True, **doc}, indent=2))
        sys.exit(0)
    click.echo(_status_text(doc))
    sys.exit(0)


def _status_text(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    limits = ", ".join(f"{k} {v}" for k, v in sorted(c["limits"].items())) or "none"
    lines = [
        f"netguard {doc['version']} enforcing in this network namespace (pid {doc['pid']}, "
        f"up {_duration(doc['now'] - doc['started'])})",
        f"  policy     {doc['policy']}, loaded {_clock(doc['policy_loaded'])}",
    ]
    if doc["last_reload"] is not None:
        lines.append(f"  reload     {_clock(doc['last_reload']['time'])}: {doc['last_reload']['text']}")
    lines += [
        f"  kernel     {doc['backend']}, queue {doc['queue_num']}, fail_mode {doc['fail_mode']}, "
        f"block_action {doc['block_action']}, dns_block {str(doc['dns_block']).lower()}, data-less TCP segments "
        f"{'stay in the kernel' if doc['empty_segments'] == 'kernel' else 'queued (no xt u32)'}",
        f"  counts     {c['packets']} packets; {c['allowed']} flows allowed, {c['blocked']} blocked; "
        f"{c['dns_rewritten']} DNS answers rewritten; {c['fail_verdicts']} fail verdicts; limits hit: {limits}",
        f"  state      {doc['undecided_flows']} flows undecided, {doc['names_learned']} names learned from DNS",
    ]
    if "recent_blocks" not in doc:
        lines.append("  recent blocks: run as root to see them")
    elif doc["recent_blocks"]:
        lines.append("  recent blocks, newest last:")
        for r in doc["recent_blocks"]:
            action = " (cut)" if r.get("action") == "cut" else ""
            who = ""
            if r.get("uid") is not None:
                who = f"  by {r['process'] or '?'} (pid {r['pid'] or '?'}, uid {r['uid']})"
            lines.append(f"    {_clock(r['time'])}  {r['host'] or '-'}  {_endpoint(r['src'], r['sport'])} -> "
                         f"{_endpoint(r['dst'], r['dport'])}/{r['proto']}  [{r['source']}] {r['rule']}{action}{who}")
    else:
        lines.append("  recent blocks: none")
    return "\n".join(lines)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _clock(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


@main.group()
def rules() -> None:
    """Show or remove netguard's firewall rules in this network namespace."""


@rules.command("show")
def rules_show() -> None:
    """Print the netguard chains and jumps installed here (every backend, both families).
    Exit status 1 when none are installed."""
    from netguard.daemon import firewall

    found = False
    for backend in firewall.BACKENDS:
        for family in firewall.FAMILIES:
            lines = firewall.installed(backend, family)
            if lines:
                found = True
                click.echo(f"# {backend} IPv{family}")
                for line in lines:
                    click.echo(line)
    if not found:
        click.echo("no netguard rules installed", err=True)
    sys.exit(0 if found else 1)


@rules.command("remove")
@click.option("--force", is_flag=True, help="Remove them even while netguard runs here (enforcement stops).")
def rules_remove(force: bool) -> None:
    """Remove every netguard chain and jump here (stale rules of a crashed run, for instance).

    Refuses while a netguard daemon runs in this network namespace: stop it instead (it removes its
    own rules on exit), or pass --force."""
    from netguard.daemon import firewall
    from netguard.daemon.status import query

    if not force:
        try:
            doc = query()
            running = None if doc is None else f"pid {doc['pid']}"
        except (OSError, ValueError, KeyError) as e:  # something holds the status socket but does not answer
            running = f"its status socket does not answer: {e}"
        if running is not None:
            click.echo(f"netguard is running in this network namespace ({running}); stop it instead (it removes "
                       "its rules on exit), or use --force", err=True)
            sys.exit(2)
    try:
        removed = firewall.remove()
    except firewall.FirewallError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"removed: {', '.join(removed)}" if removed else "nothing to remove")


@main.command()
@click.argument("capture", type=click.Path(dir_okay=False, exists=True))
@policy_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow.")
def replay(capture: str, policy_path: str | None, as_json: bool) -> None:
    """Run the enforcement engine offline over a pcap or pcapng CAPTURE.

    One line per flow: 5-tuple, the name and where it came from (sni, http-host, http-connect,
    quic-sni, dns-table, address; dns-answer for DNS answers), and the decision.
    """
    from pathlib import Path

    from netguard.replay import CaptureError, render
    from netguard.replay import replay as run_replay

    policy = _load(policy_path)
    try:
        lines = run_replay(Path(capture), policy)
    except CaptureError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    for line in lines:
        if as_json:
            record = line.event.record() if line.event else {"verdict": "undecided", **line.key.text()}
            click.echo(json.dumps(record))
        else:
            click.echo(render(line))


@main.command()
def demo() -> None:
    """Show enforcement live in a throw-away namespace lab (as root; safe on any machine).

    Builds client, DNS and registry namespaces (nothing in this one), runs `netguard run` with the
    default policy in the client namespace, pulls from an allowed and a blocked registry with real
    clients, prints what they saw and what netguard logged, and removes everything again.
    """
    import os

    from netguard.lab.demo import run_demo

    if os.geteuid() != 0:
        click.echo("netguard demo: must run as root (it creates network namespaces)", err=True)
        sys.exit(2)
    sys.exit(run_demo(click.echo))


if __name__ == "__main__":
    main()
