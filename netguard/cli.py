"""Command line: the thin layer between a person and the core. Exit codes: 0 ok / allowed /
can enforce / enforcing, 1 blocked / degraded / not enforcing as it should, 2 error / cannot
enforce, 3 not running (status), 4 running but not verified (status without root)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import click

from netguard import __version__
from netguard.daemon.policyfiles import load_policy
from netguard.fleet.source import DEFAULT_CONFIG
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
    return _load_digest(policy_path)[0]


def _load_digest(policy_path: str | None) -> tuple[Policy, str]:
    """_load, with the SHA-256 of the policy text (for the daemon)."""
    from netguard.daemon.policyfiles import load_policy_digest

    try:
        return load_policy_digest(policy_path)
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


def org_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--source-config and --no-org for the commands that judge hosts under the policy in force."""
    f = click.option("--no-org", is_flag=True,
                     help="Judge the --policy file (or the embedded default) alone, without the organisation "
                          "policy.")(f)
    return click.option("--source-config", type=click.Path(dir_okay=False), default=str(DEFAULT_CONFIG),
                        show_default=True, metavar="FILE",
                        help="Organisation policy source; when it names a policy URL, the organisation policy "
                             "kept on this machine is the base and --policy the local file laid over it, as "
                             "under `netguard run`.")(f)


def _effective(policy_path: str | None, source_config: str, no_org: bool) -> Policy:
    """The policy a command judges with: the --policy file alone, or, where an organisation policy
    source is configured, what `netguard run` would enforce (problems: stderr, exit 2)."""
    local = _load(policy_path)
    if no_org:
        return local
    from pathlib import Path

    from netguard.daemon.policyfiles import load_catalog
    from netguard.fleet import state
    from netguard.fleet.client import effective
    from netguard.fleet.source import SourceError, load_source

    try:
        source = load_source(Path(source_config))
    except SourceError as e:
        click.echo(f"{source_config}: {e}", err=True)
        sys.exit(2)
    if source is None:
        return local
    kept, why = state.load(source.state_dir, source.url, source.keys, load_catalog())
    if why is not None:
        click.echo(f"warning: {why}", err=True)
    elif kept is None:
        click.echo(f"warning: no organisation policy from {source.url} kept in {source.state_dir} yet", err=True)
    return effective(source, kept.accepted if kept else None, local if policy_path is not None else None)


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="HOST[:PORT]...")
@policy_option
@org_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host.")
def check(targets: tuple[str, ...], policy_path: str | None, source_config: str, no_org: bool, as_json: bool) -> None:
    """Say what the policy does with connections to each HOST, and why.

    Exit status: 0 if every host is allowed, 1 if any is blocked, 2 on an error
    (an invalid host name or policy).

    \b
    Examples:
      netguard check ghcr.io registry-1.docker.io
      netguard check --policy corp.toml registry.corp.example:5000
    """
    policy = _effective(policy_path, source_config, no_org)

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
@org_options
@click.option("--json", "as_json", is_flag=True, help="The table as JSON.")
def policy_show(policy_path: str | None, source_config: str, no_org: bool, as_json: bool) -> None:
    """Show the effective allow/block table: every host pattern, its registry, the rule and (under an
    organisation policy) the document it came from."""
    p = _effective(policy_path, source_config, no_org)
    for w in p.warnings:
        click.echo(f"warning: {w}", err=True)
    rows = sorted(((str(pattern), rule, rule.text(pattern)) for pattern, rule in p.table),
                  key=lambda r: (r[1].registry or "~", r[0]))
    settings = {"name": p.name, "source": p.source, "mode": p.mode, "unknown_hosts": p.unknown_hosts,
                "fail_mode": p.fail_mode, "block_action": p.block_action, "dns_block": p.dns_block,
                "local_allow": p.local_allow, "queue_num": p.queue_num, "mark_mask": hex(p.mark_mask),
                "mark_allowed": hex(p.mark_allowed), "mark_blocked": hex(p.mark_blocked)}
    if as_json:
        table = [{"pattern": pat, "action": "allow" if r.allowed else "block", "registry": r.registry,
                  "rule": text, "from": r.document} for pat, r, text in rows]
        click.echo(json.dumps({"settings": settings, "table": table}, indent=2))
        return
    for key, value in settings.items():
        click.echo(f"{key:14} {value}")
    click.echo("")
    width = max(len(pat) for pat, _, _ in rows) if rows else 10
    documents = len({r.document for _, r, _ in rows}) > 1
    click.echo(f"{'ACTION':7} {'PATTERN':{width}}  {'REGISTRY':18} RULE" + ("  FROM" if documents else ""))
    for pat, r, text in rows:
        where = f"  {r.document}" if documents else ""
        click.echo(f"{'allow' if r.allowed else 'block':7} {pat:{width}}  {r.registry or '-':18} {text}{where}")
    click.echo(f"\nany other host: {p.unknown_hosts} (unknown_hosts)")


@policy.command("explain")
@click.argument("targets", nargs=-1, required=True, metavar="HOST[:PORT]...")
@policy_option
@org_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host.")
def policy_explain(targets: tuple[str, ...], policy_path: str | None, source_config: str, no_org: bool,
                   as_json: bool) -> None:
    """Show how the decision for each HOST is reached: its normal form, every table entry that
    matches it (most specific first: the first decides, the others are shadowed), hosts the catalog
    leaves out on purpose, and the decision. Exit status as for `check`.

    \b
    Example:
      netguard policy explain cdn01.quay.io production.cloudflare.docker.com
    """
    p = _effective(policy_path, source_config, no_org)

    def show(e: Explanation) -> str:
        if not as_json:
            return _explanation_text(e, p)
        return json.dumps({
            "written": e.written, "host": e.host, "port": e.port, "policy": p.label,
            "matches": [{"pattern": str(m.pattern), "action": "allow" if m.rule.allowed else "block",
                         "registry": m.rule.registry, "rule": m.text, "from": m.rule.document} for m in e.matches],
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
            where = f"  [from {m.rule.document}]" if m.rule.document and m.rule.document != p.source else ""
            lines.append(f"    {action:5} {m.pattern!s:40} {m.rule.registry or '-':12} {m.text!r}{tail}{where}")
    else:
        lines.append(f"  no entry matches; unknown_hosts = {p.unknown_hosts} decides")
    for x in e.left_out:
        lines.append(f"  left out of {x.registry_name} ({x.registry}) on purpose, as {x.written!r}: {x.reason}")
    d = e.decision
    lines.append(f"  {'allowed' if d.allowed else 'BLOCKED'}: {d.reason}")
    return "\n".join(lines)


PULL_TIMEOUT = 30.0  # seconds: two fetches of fetch.TIMEOUT each, and the reload


@policy.command("pull")
@click.option("--timeout", type=float, default=PULL_TIMEOUT, show_default=True, help="Seconds to wait for the result.")
def policy_pull(timeout: float) -> None:
    """Ask the running daemon to fetch the organisation policy now, and say what came of it.

    Exit status: 0 applied or unchanged, 1 refused, failed or not applied, 2 no organisation policy
    source or no answer in time, 3 netguard is not running here."""
    import os
    import signal
    import time

    from netguard.daemon.status import query

    doc = query()
    if doc is None:
        click.echo("netguard is not running in this network namespace", err=True)
        sys.exit(3)
    if "fleet" not in doc:
        click.echo("the running netguard has no organisation policy source (--policy-url)", err=True)
        sys.exit(2)
    sent = time.time()  # the answer is the first poll that starts after this (not one already under way)
    try:
        os.kill(doc["pid"], signal.SIGUSR1)
    except OSError as e:
        click.echo(f"cannot signal netguard (pid {doc['pid']}): {e.strerror}", err=True)
        sys.exit(2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = query()
        if now is None:
            click.echo("netguard stopped", err=True)
            sys.exit(3)
        last = now["fleet"]["last"]
        if last is not None and last["time"] >= sent:
            click.echo(f"{last['result']}: {last['text']}")
            sys.exit(0 if last["result"] in ("applied", "unchanged") else 1)
    click.echo(f"no result within {timeout:g} s", err=True)
    sys.exit(2)


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
@click.option("--backend", type=click.Choice(["nft", "iptables-nft", "iptables-legacy"]),
              help="Firewall backend; default: the first that doctor finds working here (nft where the "
                   "kernel has the nft queue statement, else iptables-nft, else iptables-legacy).")
@click.option("--policy-url", metavar="URL",
              help="Organisation policy: a netguard policy on an HTTPS server, signed with minisign "
                   "(URL.minisig). With it, --policy is the local file, which may only add blocks.")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="KEY",
              help="A minisign public key file, or its base64 line, trusted to sign the organisation "
                   "policy. Repeat it to rotate keys.")
@click.option("--policy-ca", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="CA bundle to trust for the policy server instead of the system's.")
@click.option("--state-dir", metavar="DIR",
              help="Where the last good organisation policy is kept [default: /var/lib/netguard].")
@click.option("--poll-interval", type=float, metavar="SECONDS", help="Seconds between polls [default: 60].")
@click.option("--source-config", type=click.Path(dir_okay=False), default=str(DEFAULT_CONFIG), show_default=True,
              metavar="FILE", help="The same settings in a file (policy_url, trusted_keys, policy_ca, state_dir, "
                                   "poll_interval), read when it exists; options override it.")
@click.option("--metrics", "metrics_address", metavar="[ADDRESS:]PORT",
              help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (ADDRESS: 127.0.0.1 unless given; "
                   "[::1]:PORT for IPv6).")
@click.option("--metrics-textfile", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write Prometheus metrics to FILE every 15 s (temp file + rename), for node_exporter's "
                   "textfile collector (e.g. /var/lib/prometheus/node-exporter/netguard.prom).")
def run(policy_path: str | None, backend: str | None, policy_url: str | None, trusted_keys: tuple[str, ...],
        policy_ca: str | None, state_dir: str | None, poll_interval: float | None, source_config: str,
        metrics_address: str | None, metrics_textfile: str | None) -> None:
    """Enforce the policy in this network namespace (as root) until SIGTERM or Ctrl-C.

    Installs netguard's firewall chains (both address families), reads DNS answers and the first
    bytes of new connections from NFQUEUE, and resets connections to blocked registries. SIGHUP,
    or a change of the policy file, reloads the policy (a bad one is rejected and the old one
    stays); open connections to a registry that became blocked are cut. One JSON line per block
    goes to stdout. On exit every rule is removed. Refuses to start where the kernel cannot queue.

    With an organisation policy (--policy-url or the source file), netguard polls it, verifies its
    signature, version and expiry, keeps the last good one in the state directory (it is enforced
    at the next start, even offline) and puts each new one in force within a second. SIGUSR1 or
    `netguard policy pull` polls at once.

    While it runs it keeps its rules in place: if they go missing, are altered or reordered (a
    flush, a firewall reload, `nft flush ruleset`) it restores them within a second and logs a JSON
    line with "event": "rules-restored". Under systemd (Type=notify) it reports READY once the
    rules are in and the queue is bound, and pings the watchdog from the loop that drains the queue.
    """
    import os
    from pathlib import Path

    from netguard.daemon import run as daemon
    from netguard.daemon.firewall import START_LOCK_WAIT, FirewallError, FirewallLocked
    from netguard.daemon.policyfiles import load_catalog
    from netguard.fleet.client import Fleet
    from netguard.fleet.source import SourceError, load_source

    if os.geteuid() != 0:
        click.echo("netguard run: must run as root (it installs firewall rules)", err=True)
        sys.exit(2)
    address = None
    if metrics_address is not None:
        from netguard.daemon.metrics import parse_address  # prometheus-client only when asked for

        try:
            address = parse_address(metrics_address)
        except ValueError as e:
            click.echo(f"netguard run: --metrics {e}", err=True)
            sys.exit(2)
    loaded = _load_digest(policy_path)  # parsed once: a 100k-entry policy takes about a second
    try:
        source = load_source(Path(source_config), url=policy_url, keys=trusted_keys, ca=policy_ca,
                             state_dir=state_dir, interval=poll_interval)
    except SourceError as e:
        click.echo(f"netguard run: {e}", err=True)
        sys.exit(2)
    fleet = None
    if source is not None:
        fleet = Fleet(source, load_catalog())
        if fleet.boot_note:
            click.echo(f"netguard: {fleet.boot_note}", err=True)
        if fleet.in_force is not None:
            click.echo(f"netguard: organisation policy version {fleet.in_force.version} kept in {source.state_dir}"
                       + (" (expired: still enforced until a newer one arrives)"
                          if fleet.in_force.expired(fleet.clock()) else ""), err=True)
    try:
        chosen = daemon.choose_backend(backend)
        d = daemon.Daemon(Path(policy_path) if policy_path else None, chosen, fleet=fleet, metrics=address,
                          metrics_textfile=Path(metrics_textfile) if metrics_textfile else None, loaded=loaded)
        code = d.run()
    except daemon.StartError as e:
        click.echo(f"netguard run: {e}", err=True)
        sys.exit(2)
    except FirewallLocked as e:
        click.echo(f"netguard run: another program held the xtables lock for {START_LOCK_WAIT} s ({e}); "
                   "nothing is enforced: start netguard again once it is done", err=True)
        sys.exit(2)
    except FirewallError as e:
        # The kernel refused the rule set (e.g. --backend nft where it has no nft queue statement).
        click.echo(f"netguard run: the kernel refused netguard's rules ({e}); nothing is enforced: "
                   "see `netguard doctor`", err=True)
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
@click.option("--json", "as_json", is_flag=True, help="The daemon's status document and the checks as JSON.")
def status(as_json: bool) -> None:
    """Is netguard enforcing in this network namespace? Checked in the kernel, not taken from the
    daemon's word: the daemon answers; its rules are installed as it installed them and as its rule
    set says, in IPv4 and IPv6 (IPv4 alone where the kernel refused the IPv6 rules); its queue is
    bound by its own socket (/proc/net/netfilter/nfnetlink_queue); the fail-open setting
    (--queue-bypass, the queue's flag) is what the policy's fail_mode says; and the queue has
    dropped no packets in the last 5 minutes. Also its policy, backend, counters and (as root) the
    most recent blocks.

    \b
    Exit status:
      0  enforcing, every check passed
      1  running, but not enforcing as it should: a check failed (the output says which),
         or the daemon does not answer (hung)
      2  error: the answer could not be read or checked
      3  not running in this network namespace
      4  running, but the kernel checks need root: not verified

    When no daemon runs but netguard rules are installed (a crash, or `systemctl stop` that did not
    finish), it says so: with fail_mode closed those rules hold new connections until a daemon returns.
    """
    import os
    import time

    from netguard.daemon import firewall
    from netguard.daemon.status import exit_code as checks_exit
    from netguard.daemon.status import kernel_checks, peer_pid, query

    try:
        doc = query()
    except TimeoutError:
        pid = peer_pid()
        text = f"the daemon{f' (pid {pid})' if pid else ''} holds the status socket but does not answer: hung?"
        click.echo(json.dumps({"running": True, "answers": False, "pid": pid, "ok": False, "exit": 1,
                               "checks": [{"name": "daemon", "ok": False, "text": text}]})
                   if as_json else f"netguard is NOT enforcing as it should: {text}")
        sys.exit(1)
    except (OSError, ValueError) as exc:
        click.echo(f"netguard status: no readable answer from the daemon: {exc}", err=True)
        sys.exit(2)
    if doc is None:
        if as_json:
            click.echo(json.dumps({"running": False, "exit": 3}))
        else:
            click.echo("netguard is not running in this network namespace")
            if os.geteuid() == 0:
                left = [f"{b} IPv{f}" for b in firewall.BACKENDS for f in firewall.FAMILIES if firewall.installed(b, f)]
                if left:
                    click.echo(f"  but its rules are installed ({', '.join(left)}): with fail_mode closed, new "
                               "connections wait for a daemon; `netguard rules remove` removes them")
        sys.exit(3)
    try:
        checks = kernel_checks(doc, time.time(), os.geteuid() == 0)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        click.echo(f"netguard status: cannot check the daemon's answer against the kernel: {exc!r}", err=True)
        sys.exit(2)
    code = checks_exit(checks)
    if as_json:
        click.echo(json.dumps({"running": True, **doc, "ok": code == 0, "exit": code,
                               "checks": [asdict(c) for c in checks]}, indent=2))
        sys.exit(code)
    click.echo(_status_text(doc, checks, code))
    sys.exit(code)


def _status_text(doc: dict[str, Any], checks: list[Any] | None = None, code: int = 0) -> str:
    c = doc["counts"]
    limits = ", ".join(f"{k} {v}" for k, v in sorted(c["limits"].items())) or "none"
    monitor = doc.get("mode") == "monitor"
    state = {0: "monitoring" if monitor else "enforcing",
             1: "running but NOT ENFORCING as it should (see the checks)",
             4: "running (not verified: run as root to check the kernel)"}.get(code, "running")
    lines = [
        f"netguard {doc['version']} {state} in this network namespace (pid {doc['pid']}, "
        f"up {_duration(doc['now'] - doc['started'])})",
        f"  policy     {doc['policy']}, loaded {_clock(doc['policy_loaded'])}"
        + (", mode monitor: judged and logged, nothing blocked" if monitor else ""),
    ]
    if doc.get("state") == "degraded":
        lines.append(f"  degraded   {'; '.join(doc.get('state_reasons', []))}")
    fleet = doc.get("fleet")
    if fleet is not None:
        f = fleet["in_force"]
        lines.append(f"  org policy {fleet['url']}: " + (
            f"version {f['version']} (key {f['key_id']}, expires {_clock(f['expires'])})" if f else "none yet"))
        if fleet["last"] is not None:
            lines.append(f"  last poll  {_clock(fleet['last']['time'])}: {fleet['last']['result']}, "
                         f"{fleet['last']['text']}")
        refused = ", ".join(f"{k} {v}" for k, v in fleet["refusals"].items() if v)
        if refused:
            lines.append(f"  refused    {refused}; last: {fleet['last_refusal']['text']}")
    if doc["last_reload"] is not None:
        lines.append(f"  reload     {_clock(doc['last_reload']['time'])}: {doc['last_reload']['text']}")
    lines += [
        f"  kernel     {doc['backend']}, queue {doc['queue_num']}, fail_mode {doc['fail_mode']}, "
        f"block_action {doc['block_action']}, dns_block {str(doc['dns_block']).lower()}, data-less TCP segments "
        f"{'stay in the kernel' if doc['empty_segments'] == 'kernel' else 'queued (no xt u32)'}",
        f"  counts     {c['packets']} packets; {c['allowed']} flows allowed, {c['blocked']} "
        f"{'judged blocked, let through (monitor)' if doc.get('mode') == 'monitor' else 'blocked'}; "
        f"{c['dns_rewritten']} DNS answers rewritten; {c['fail_verdicts']} fail verdicts; limits hit: {limits}",
        f"  state      {doc['undecided_flows']} flows undecided, {doc.get('followed_flows', 0)} followed, "
        f"{doc.get('unconfirmed_flows', 0)} unconfirmed TLS, "
        f"{doc['names_learned']} names learned from DNS",
    ]
    rules = doc.get("rules")
    if rules is not None:
        last = rules.get("last_restored")
        restored = (f"; last at {_clock(last['time'])}: {'; '.join(last['missing'])}" if last else "")
        lines.append(f"  self-heal  rules watched ({rules['watch']}); restored {rules['restored']} time(s), "
                     f"{rules['restore_failures']} failed attempt(s){restored}")
    for check in checks or []:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[check.ok]
        lines.append(f"  {mark}       {check.name}: {check.text}")
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
@click.option("--force", is_flag=True, help="Remove them even while netguard runs here (the daemon puts them back "
                                            "within a second: stop it to end enforcement).")
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
