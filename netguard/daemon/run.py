"""`netguard run`: wiring the engine to the kernel, with signals, reload and a clean exit.

Strategy: start in a fixed order so that no packet reaches a half-made setup: check what the kernel
can do (doctor), remove stale netguard rules of a crashed run, bind the queue (and set its fail-open
flag in open mode), and only then install the rules. One thread: a select loop over the queue's
socket and a signal wake-up socket, with a one-second tick for the policy file's mtime and for
expiring engine state. SIGHUP or a changed policy file reloads: the new policy is parsed in full
first, so a bad one is reported and the old one stays in force; open flows the new policy blocks
are cut. SIGTERM/SIGINT remove every rule before exit. One JSON line per blocking decision goes
to stdout; errors and notices go to stderr. The same loop answers `netguard status` on an abstract
socket (daemon.status), whose name also keeps a second daemon from starting in this namespace.
With an organisation policy (netguard.fleet), a polling thread hands verified policies to the loop
through one more socket it selects on (`_fleet_step`), and SIGUSR1 asks it to poll at once; the
policy in force is then the organisation's with the local file laid over it (`_compose`). Monitor
mode is applied at the one point where verdicts are applied (daemon.monitor).

The loop also keeps the rules in place (daemon.watch): when they go missing, are altered or
reordered (a flush, a firewall reload, `nft flush ruleset`), it restores them, one transaction per
family, and logs one JSON line ("event": "rules-restored"); a restore that fails is logged
("rules-restore-failed"), retried with a growing delay, and `status` and the metrics say so until
it works. Under systemd (Type=notify) it sends READY=1 once the rules are in and the queue is bound,
and pings the watchdog from this same loop, so a loop that stops draining the queue stops pinging
and is restarted. Metrics (daemon.metrics) are read from the counters when asked for, never per packet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from netguard import __version__
from netguard.daemon import conntrack, firewall
from netguard.daemon.inject import Injector
from netguard.daemon.monitor import Monitor
from netguard.daemon.nfqueue import Packet, Queue, apply_verdict, set_fail_open
from netguard.daemon.owner import Owner, OwnerFinder
from netguard.daemon.policyfiles import load_policy_digest
from netguard.daemon.sdnotify import Notifier
from netguard.daemon.status import RECENT, AlreadyRunning, StatusServer, queue_state
from netguard.daemon.watch import Watch
from netguard.engine import Action, Engine, Event, Verdict
from netguard.fleet import checkin
from netguard.fleet.client import Fleet
from netguard.policy import Policy, PolicyError

if TYPE_CHECKING:
    from netguard.daemon.metrics import Sample

TICK = 0.25  # seconds between checks of the policy file and engine expiry
# Netfilter hook numbers (NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT): OUTPUT queues only client flows,
# INPUT only DNS answers; FORWARD queues both (the engine tells them apart).
HOOK_OUTPUT = 3
FROM_CLIENT = {1: False, HOOK_OUTPUT: True}
# A failed restore of the rules is tried again after RETRY_FIRST seconds, the delay doubling up to
# RETRY_MAX: the cause (a held xtables lock, a module being reloaded) may pass at once or take a while.
RETRY_FIRST = 0.25
RETRY_MAX = 5.0
# Restores closer together than FIGHT_WINDOW mean something keeps removing the rules (a firewall
# manager that owns the tables): each next check waits twice as long, up to FIGHT_MAX, so netguard
# keeps restoring at most about once a second instead of spending its CPU on the fight.
FIGHT_WINDOW = 2.0
FIGHT_MAX = 1.0
# Characters of a failed restore's error kept for the log and status (iptables' own words).
ERROR_TEXT = 300
# Seconds between reads of the queue's drop counters (one small /proc read): status reports when
# they last grew.
DROPS_SAMPLE = 1.0


class StartError(RuntimeError):
    """netguard cannot enforce here; the message says why."""


def _apply_fitting(backend: firewall.Backend,
                   opts: firewall.Options) -> tuple[firewall.Options, str | None, str | None]:
    """firewall.apply_preferred; where the kernel refuses the IPv6 set (no IPv6 netfilter or no
    IPv6 REJECT: doctor says "degraded"), IPv4 alone rather than no enforcement at all. Returns the
    options in force, why u32 fell back, and why IPv6 did (None: it did not)."""
    try:
        return (*firewall.apply_preferred(backend, opts), None)
    except firewall.FirewallError as exc:
        if isinstance(exc, firewall.FirewallLocked) or exc.family != 6 or opts.families != firewall.FAMILIES:
            raise
        v4, no_u32 = firewall.apply_preferred(backend, dataclasses.replace(opts, families=(4,)))
        return v4, no_u32, str(exc).splitlines()[0]


def firewall_options(policy: Policy) -> firewall.Options:
    """The rule options a policy asks for."""
    marks = firewall.Marks(policy.mark_mask, policy.mark_allowed, policy.mark_blocked)
    return firewall.Options(queue_num=policy.queue_num, marks=marks, fail_open=policy.fail_mode == "open",
                            untracked_alerts=policy.block_action == "tls-alert")


def choose_backend(requested: str | None) -> firewall.Backend:
    """The backend doctor finds working here (or the one requested), or StartError with doctor's reasons."""
    if requested is not None:
        if requested not in firewall.BACKENDS:
            raise StartError(f"backend {requested!r} is not supported by this netguard (use one of "
                             f"{', '.join(firewall.BACKENDS)})")
        return requested
    try:
        from netguard.doctor import report as doctor
    except ImportError as exc:  # pragma: no cover - doctor ships with netguard
        raise StartError(f"cannot check this kernel: {exc}") from exc
    report = doctor.assess()
    if report.verdict == "cannot":
        raise StartError("this kernel cannot enforce: " + "; ".join(report.reasons))
    for backend in report.backends:
        if backend in firewall.BACKENDS:
            return backend
    # doctor's verdict already counts only the backends run supports: this is a safety net, and
    # never ends in an empty reason.
    found = ", ".join(report.backends) or "none"
    raise StartError(f"no firewall backend netguard can use here (doctor found: {found}; this netguard's run "
                     f"supports {', '.join(firewall.BACKENDS)})" + "".join(f"; {r}" for r in report.reasons))


@dataclass
class Daemon:
    """A running enforcer (one per network namespace)."""

    policy_path: Path | None
    backend: firewall.Backend
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    clock: Callable[[], float] = time.time
    fleet: Fleet | None = None  # the organisation policy source, if there is one
    metrics: tuple[str, int] | None = None  # serve Prometheus metrics over HTTP at (address, port)
    metrics_textfile: Path | None = None  # write them for node_exporter's textfile collector
    loaded: tuple[Policy, str] | None = None  # the policy at policy_path and its SHA-256, if already read
    policy: Policy = field(init=False)
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.policy, self._policy_sha256 = self._compose(self.loaded)
        self.loaded = None
        self.engine = Engine(self.policy)
        self._monitor = Monitor()
        self._monitoring = self.policy.mode == "monitor"
        self._pull = False
        self._last_block: float | None = None
        self._machine = checkin.machine(self.fleet.source.state_dir) if self.fleet is not None else ""
        self.engine.sees_replies = True  # the rules queue every undecided flow's SYN-ACK (firewall.py)
        # ... and every server segment of an undecided flow's first ones, data-less too (NETGUARD-REPLY):
        # an allow read from client bytes is final once the server acknowledges them.
        self.engine.awaits_server = True
        self._mtime = self._policy_mtime()
        self._stop = False
        self._reload = False
        self._queue: Queue | None = None
        self._set_marks(firewall_options(self.policy).marks)
        self._injector = Injector(self._marks.passed)
        self._log_failures = 0
        self._skip_empty = True  # until apply_preferred finds the kernel without xt u32
        self._families = firewall.FAMILIES  # until the kernel refuses the IPv6 rules
        self._started = self._loaded = self.clock()
        self._last_reload: dict[str, Any] | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._owners: OwnerFinder | None = None
        # Packets the engine holds (Action.HOLD: QUIC datagrams of a connection not judged yet),
        # by token, until a later verdict or expiry settles them. Bounded by engine.core.MAX_HELD_DATAGRAMS.
        self._held: dict[int, Packet] = {}
        self._notifier = Notifier()
        self._watch: Watch | None = None
        self._expected: dict[firewall.Family, firewall.Layout] = {}
        # Counted where the daemon already works (the block log, the rare allowed DNS event), read
        # at scrape time with engine.stats.
        self._blocks: Counter[tuple[str, str]] = Counter()
        self._dns_allowed = 0
        self._cut = 0
        self._reloads: Counter[str] = Counter()
        self._restored = 0
        self._restore_failures = 0
        self._failing: str | None = None  # why the rules could not be restored (until they are)
        self._retry = RETRY_FIRST
        self._fight = 0.0
        self._last_restore = -FIGHT_WINDOW
        self._last_restored: dict[str, Any] | None = None
        self._portid = 0
        self._queue_fail_open = False
        self._drops: dict[str, Any] = {"queue_dropped": 0, "user_dropped": 0, "last_increase": None}
        self._next_drops = 0.0
        self._next_textfile = 0.0
        self._metrics_error: str | None = None
        self._metrics_registry: Any = None
        self._catalog = frozenset(self.policy.catalog.registries)

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Install, enforce until SIGTERM/SIGINT, remove. Returns the exit code."""
        # A watchdog abort (SIGABRT from systemd) or a crash leaves the Python stack in the journal.
        faulthandler.enable(self.err)
        # First, before any rule changes: a second daemon here would take the first one's rules.
        try:
            status = StatusServer()
        except AlreadyRunning as exc:
            raise StartError(str(exc)) from None
        # The queue first: after a crash (or a watchdog restart) the old rules still send packets
        # to it, and they wait there for this daemon; the sooner it holds the queue, the sooner they go.
        opts = firewall_options(self.policy)
        queue = self._queue = Queue(opts.queue_num, self._on_packet)
        # Stale rules of the chosen backend are replaced in one transaction by apply() below, so
        # a restart after a crash never opens a gap; those of the other backend go now.
        try:
            removed = firewall.remove(keep=self.backend)
        except BaseException:
            queue.close()
            status.close()
            raise
        if removed:
            self._notice(f"removed stale netguard rules ({', '.join(removed)})")
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
        enforcing = False
        server = None
        try:
            try:
                self._owners = OwnerFinder()
            except OSError as exc:
                self._notice(f"blocks will be logged without their local process: {exc}")
            self._portid = queue.portid()
            if opts.fail_open:
                set_fail_open(queue.fileno(), opts.queue_num)
                self._queue_fail_open = True
            server = self._start_metrics()
            stale = [f"{self.backend} IPv{f}" for f in firewall.FAMILIES if firewall.installed(self.backend, f)]
            opts, no_u32, no_ipv6 = _apply_fitting(self.backend, opts)
            self._skip_empty, self._families = opts.skip_empty, opts.families
            self.engine.kernel_confirms = opts.confirms_tls
            if stale:
                self._notice(f"replaced stale netguard rules in one step ({', '.join(stale)})")
            enforcing = True
            self._watch = self._start_watch(opts)
            empty = ("data-less TCP segments stay in the kernel" if no_u32 is None else
                     f"every TCP segment of an undecided or followed flow is queued, QUIC is read on UDP 443 only, "
                     f"DNS answers from ports other than 53 and a second ClientHello after a HelloRetryRequest "
                     f"are not read, the xt u32 rules failed: {no_u32}")
            if no_ipv6 is not None:
                empty += (f"; IPv4 only: the kernel refused the IPv6 rules ({no_ipv6}), so IPv6 connections are "
                          "NOT filtered (disable IPv6, or see `netguard doctor`)")
            mode = "; mode monitor: nothing is blocked" if self._monitoring else ""
            summary = (f"enforcing {self.policy.label} (backend {self.backend}, queue {opts.queue_num}, "
                       f"fail_mode {self.policy.fail_mode}")
            self._notice(f"{summary}; {empty}{mode})")
            for warning in self.policy.warnings:
                self._notice(f"warning: {warning}")
            self._notifier.ready(summary + ")")
            self._write_textfile()
            if self.fleet is not None:
                self.fleet.start(self._checkin)
            self._loop(queue, wake_r, status)
            enforcing = False
        finally:
            self._notifier.stopping()
            if self._watch is not None:
                self._watch.close()
            if server is not None:
                server.close()
            try:
                if enforcing:
                    # A crash, not a stop: the rules stay, so the kernel keeps the fail mode's promise
                    # (closed: nothing new passes) until a restart removes them as stale.
                    self._notice(f"crashed; rules left in place (fail_mode {self.policy.fail_mode})")
                else:
                    firewall.remove()
            finally:
                queue.close()
                signal.set_wakeup_fd(old_wakeup)
                for s, h in handlers.items():
                    signal.signal(s, h)
                wake_r.close()
                wake_w.close()
                status.close()
                self._injector.close()
                if self.fleet is not None:
                    self.fleet.stop()
                if self._owners is not None:
                    self._owners.close()
                self._write_textfile()
                self._notifier.close()
        st = self.engine.stats
        limits = ", ".join(f"{k} {v}" for k, v in sorted(st.by_limit.items())) or "none"
        self._notice(f"stopped; rules removed ({st.packets} packets, {st.allowed} flows allowed, {st.blocked} "
                     f"blocked, {st.dns_rewritten} DNS answers rewritten, {st.fail_verdicts} fail verdicts; "
                     f"limits hit: {limits})")
        return 0

    def _loop(self, queue: Queue, wake: socket.socket, status: StatusServer) -> None:
        watch = self._watch
        watch_fd = None if watch is None else watch.fileno()
        fds = [queue.fileno(), wake.fileno(), status.fileno(), *([] if watch_fd is None else [watch_fd])]
        next_tick = time.monotonic() + TICK
        fleet_fd = self.fleet.fileno() if self.fleet is not None else -1
        if fleet_fd >= 0:
            fds.append(fleet_fd)
        queue_fd, pump = queue.fileno(), queue.pump
        while not self._stop:
            now = time.monotonic()
            due = next_tick if watch is None or watch.due is None else min(next_tick, watch.due)
            ready, _, _ = select.select(fds, [], [], max(0.0, due - now))
            if queue_fd in ready:
                pump()
            now = time.monotonic()
            # Here, in the loop that drains the queue: a loop that is stuck stops pinging.
            self._notifier.ping(now)
            if status.fileno() in ready:
                status.serve(self.status)
            if wake.fileno() in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
            if watch is not None:
                if watch_fd in ready:
                    watch.readable(now)
                if watch.due is not None and now >= watch.due:
                    self._heal(watch, now)
            if self._reload:
                self._reload = False
                self.reload("SIGHUP")
            if fleet_fd in ready or self._pull:
                self._fleet_step()
            if now >= next_tick:
                next_tick = now + TICK
                mtime = self._policy_mtime()
                if mtime != self._mtime:
                    self._mtime = mtime
                    self.reload("policy file changed")
                for token, action in self.engine.expire(self.clock()):
                    self._settle(token, action)
                if now >= self._next_drops:
                    self._next_drops = now + DROPS_SAMPLE
                    self._sample_drops()
                if self.metrics_textfile is not None and now >= self._next_textfile:
                    self._write_textfile()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        elif signum == signal.SIGUSR1:
            self._pull = True
        else:
            self._stop = True

    # -- packets ------------------------------------------------------------------------------

    def _on_packet(self, packet: Packet) -> None:
        data = packet.get_payload()
        mark = packet.get_mark()
        values = self._values
        # NETGUARD-FOLLOW queues a followed flow's packets with the "follow" packet mark,
        # NETGUARD-UNCONFIRMED an unconfirmed TLS flow's with "unconfirmed".
        ours = mark & values[0]
        try:
            verdict = self.engine.handle(data, self.clock(), from_client=FROM_CLIENT.get(packet.hook),
                                         followed=ours == values[4], unconfirmed=ours != 0 and ours == values[5])
        except Exception as exc:  # a bug must not take enforcement down
            self._notice(f"internal error on a packet ({type(exc).__name__}: {exc}); fail verdict")
            fail = Verdict(Action.ACCEPT if self.policy.fail_mode == "open" or self._monitoring else Action.DROP)
            apply_verdict(packet, fail, *values)
            return
        event = verdict.event
        if (event is None or event.allowed) and not verdict.held and not verdict.inject:
            # Most packets (a SYN, a SYN-ACK, an allowed hello, a DNS answer): nothing to log, send or
            # settle, and a verdict that monitor mode leaves as it is; apply_verdict's outcome, directly.
            plain = self._plain.get(verdict.action)
            if plain is not None and verdict.payload is None:
                if event is not None and event.source == "dns-answer":
                    self._dns_allowed += 1
                packet.set_mark((mark & ~values[0]) | plain)
                packet.repeat()
                return
        if self._monitoring:
            verdict = self._monitor.let_pass(verdict)
        if event is not None:
            if not event.allowed:
                self._last_block = event.time
                # Logged before the verdict: the reset it leads to takes the socket (and so its owner)
                # out of the kernel's tables, and whoever watches the log sees the line no later than
                # the client sees its failure.
                owner = None
                if packet.hook == HOOK_OUTPUT and self._owners is not None:
                    owner = self._owners.find(event.key, self.clock())
                self._log(event, owner=owner, would=self._monitoring)
            elif event.source == "dns-answer":
                self._dns_allowed += 1
        for raw in verdict.inject:
            try:
                self._injector.send(raw)
            except OSError as exc:
                self._notice(f"could not send the TLS alert: {exc}")
        for token, action in verdict.held:  # before this packet: held ones were sent first
            self._settle(token, action)
        if verdict.action is Action.HOLD and verdict.token is not None:
            self._held[verdict.token] = packet  # its verdict comes later; it waits in the kernel
            return
        apply_verdict(packet, verdict, *values)

    def _settle(self, token: int, action: Action) -> None:
        packet = self._held.pop(token, None)
        if packet is not None:
            apply_verdict(packet, Verdict(action), *self._values)

    def _set_marks(self, marks: firewall.Marks) -> None:
        """The marks verdicts are given with, worked out once (Marks.passed and .follow compute)."""
        self._marks = marks
        unconfirmed = marks.unconfirmed or 0  # 0: no such mark, and the engine gives no such verdict
        self._values = (marks.mask, marks.allowed, marks.blocked, marks.passed, marks.follow, unconfirmed)
        # The actions whose verdict is only a mark and a repeat (see apply_verdict).
        self._plain = {Action.ACCEPT: marks.passed, Action.ALLOW: marks.allowed, Action.FOLLOW: marks.follow,
                       Action.UNCONFIRMED: unconfirmed}

    def _log(self, event: Event, action: str | None = None, owner: Owner | None = None, would: bool = False) -> None:
        record = event.record()
        if would:
            record["verdict"] = "would-block"
        if action:
            record["action"] = action
            self._cut += 1
        elif not would:  # monitor mode's would-blocks are counted by the Monitor
            registry = event.registry if event.registry in self._catalog else "other"
            self._blocks[(registry, event.source)] += 1
        if owner is not None:
            record.update(owner.record())
        self._recent.append(record)
        self._write(record)

    def _event(self, kind: str, **fields: Any) -> None:
        """One JSON line about the daemon itself ("event": kind) on the same stream as the blocks."""
        self._write({"time": round(self.clock(), 6), "event": kind, "backend": self.backend, **fields})

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self.out.write(json.dumps(record, sort_keys=False) + "\n")
            self.out.flush()
        except (OSError, ValueError) as exc:  # a closed stdout must not stop enforcement
            self._log_failures += 1
            if self._log_failures == 1:
                with contextlib.suppress(OSError, ValueError):
                    self._notice(f"cannot write the block log: {exc}")

    # -- reload -------------------------------------------------------------------------------

    def reload(self, why: str) -> bool:
        """Load the policy again; keep the old one if the new one is bad. True if replaced."""
        try:
            new, digest = self._compose()
        except (PolicyError, OSError, ValueError) as exc:
            return self._reloaded(why, f"reload ({why}) rejected, {self.policy.label} stays in force: {exc}")
        if new.queue_num != self.policy.queue_num:
            return self._reloaded(why, f"reload ({why}) rejected: queue_num changed ({self.policy.queue_num} -> "
                                       f"{new.queue_num}); restart netguard to move queues")
        if firewall_options(new) != firewall_options(self.policy):
            try:
                if self._queue is not None and new.fail_mode != self.policy.fail_mode:
                    set_fail_open(self._queue.fileno(), new.queue_num, new.fail_mode == "open", wait_ack=False)
                    self._queue_fail_open = new.fail_mode == "open"
                # The new set replaces the old one in one transaction per table: no moment without.
                firewall.switch(self.backend, self._rules(self.policy), self._rules(new))
            except (OSError, firewall.FirewallError) as exc:
                if self._queue is not None and self._queue_fail_open != (self.policy.fail_mode == "open"):
                    set_fail_open(self._queue.fileno(), self.policy.queue_num, self.policy.fail_mode == "open",
                                  wait_ack=False)
                    self._queue_fail_open = self.policy.fail_mode == "open"
                self._expect(self._rules(self.policy))
                return self._reloaded(why, f"reload ({why}): new rules failed ({exc}); the old ones kept, "
                                           f"{self.policy.label} stays in force")
            # What the watch expects from now on (the restore's own notifications are dropped).
            self._expect(self._rules(new))
        old = self.policy
        self.policy = new
        self.engine.kernel_confirms = self._rules(new).confirms_tls
        self._policy_sha256 = digest
        self._loaded = self.clock()
        if firewall_options(new).marks != self._marks:
            self._set_marks(firewall_options(new).marks)
            self._injector.close()
            self._injector = Injector(self._marks.passed)
        cut = self.engine.reload(new, self.clock())
        if old.mode == "monitor" and new.mode == "enforce":
            cut += self._monitor.to_cut(new)
        self._monitoring = new.mode == "monitor"
        cut_count = 0
        for event in cut:
            if self._monitoring:
                self._monitor.remember(event)
                self._log(event, action="would-cut", would=True)
                continue
            problem = conntrack.mark_blocked(event.key, new.mark_blocked, new.mark_mask)
            if problem is None:
                cut_count += 1
                self._log(event, action="cut")
            elif problem != "gone":
                self._notice(f"could not cut {event.key.text()}: {problem}")
        for warning in set(new.warnings) - set(old.warnings):
            self._notice(f"warning: {warning}")
        mode = f"; mode {new.mode}" if new.mode != old.mode else ""
        return self._reloaded(why, f"reloaded ({why}): {old.label} -> {new.label}; {cut_count} open flow(s) cut"
                                   f"{mode}", ok=True)

    def _reloaded(self, why: str, text: str, ok: bool = False) -> bool:
        self._notice(text)
        self._reloads["ok" if ok else "rejected"] += 1
        self._last_reload = {"time": self.clock(), "why": why, "ok": ok, "text": text}
        return ok

    def status(self, privileged: bool) -> dict[str, Any]:
        """What `netguard status` shows; recent blocks only to a privileged asker."""
        st = self.engine.stats
        p = self.policy
        doc: dict[str, Any] = {
            "version": __version__, "pid": os.getpid(), "started": self._started, "now": self.clock(),
            "policy": p.label, "policy_loaded": self._loaded, "last_reload": self._last_reload,
            "backend": self.backend, "queue_num": p.queue_num, "fail_mode": p.fail_mode,
            "block_action": p.block_action, "dns_block": p.dns_block, "unknown_hosts": p.unknown_hosts,
            "empty_segments": "kernel" if self._skip_empty else "queued",
            "counts": {"packets": st.packets, "allowed": st.allowed, "blocked": st.blocked,
                       "dns_rewritten": st.dns_rewritten, "fail_verdicts": st.fail_verdicts,
                       "limits": dict(st.by_limit), "dropped": dict(st.dropped),
                       "log_failures": self._log_failures},
            "undecided_flows": self.engine.undecided, "followed_flows": self.engine.followed,
            "unconfirmed_flows": self.engine.unconfirmed,
            "names_learned": len(self.engine.names),
            "rules": self._rules_status(),
            "queue": {"portid": self._portid, "fail_open": self._queue_fail_open, "drops": dict(self._drops)},
            "policy_sha256": self._policy_sha256,
            "metrics": {"address": None if self.metrics is None else _address_text(self.metrics),
                        "textfile": None if self.metrics_textfile is None else str(self.metrics_textfile),
                        "error": self._metrics_error},
        }
        doc["mode"] = p.mode
        doc["state"], doc["state_reasons"] = self.health()
        doc["counts"]["would_block"] = self._monitor.would_block
        doc["last_block"] = self._last_block
        if self.fleet is not None:
            doc["fleet"] = self.fleet.status()
        if privileged:
            doc["recent_blocks"] = list(self._recent)
        return doc

    def health(self) -> tuple[str, list[str]]:
        """("enforcing" | "monitor" | "degraded", why degraded): for status and the check-in."""
        reasons = []
        if self.fleet is not None:
            stale = self.fleet.stale(self.clock())
            if stale:
                reasons.append(stale)
        if self._log_failures:
            reasons.append("the block log cannot be written")
        if self._failing is not None:
            reasons.append(f"rules missing and not restored: {self._failing}")
        if reasons:
            return "degraded", reasons
        return ("monitor" if self._monitoring else "enforcing"), []

    # -- the organisation policy (netguard.fleet) ---------------------------------------------

    def _compose(self, loaded: tuple[Policy, str] | None = None) -> tuple[Policy, str]:
        """The policy to enforce and the SHA-256 of its document: the local file (or the embedded
        default; `loaded` if already read), or with an organisation policy source, what
        Fleet.compose makes of the two (the organisation document's digest)."""
        local, digest = loaded or load_policy_digest(self.policy_path)
        if self.fleet is None:
            return local, digest
        policy = self.fleet.compose(local if self.policy_path is not None else None)
        org = self.fleet.in_force
        return policy, org.sha256 if org is not None else digest

    def _fleet_step(self) -> None:
        """Handle what the polling thread handed over; an accepted policy goes in force by reload."""
        fleet = self.fleet
        pull, self._pull = self._pull, False
        if fleet is None:
            return
        if pull:
            fleet.pull()
        for outcome in fleet.outcomes():
            acc = outcome.accepted
            if outcome.result == "accepted" and acc is not None:
                self._notice(f"organisation policy from {fleet.source.url}: {outcome.text}")
                previous = fleet.activate(acc)
                if self.reload(f"organisation policy version {acc.version}"):
                    fleet.record(outcome, "applied", outcome.text)
                else:
                    fleet.activate(previous)
                    fleet.record(outcome, "not-applied", (self._last_reload or {}).get("text", ""))
            elif outcome.result == "unchanged":
                if acc is not None:  # re-signed (a later expiry): the same document stays
                    fleet.activate(acc)
                    self._notice(f"organisation policy from {fleet.source.url}: {outcome.text}")
                fleet.record(outcome, "unchanged", outcome.text)
            else:
                if not outcome.again:  # the same refused documents again: said and counted once
                    kind = f" ({outcome.kind})" if outcome.kind else ""
                    self._notice(f"organisation policy {outcome.result}{kind}: {outcome.text}; "
                                 f"{self.policy.label} stays in force")
                fleet.record(outcome, outcome.result, outcome.text)

    def _checkin(self) -> dict[str, str]:
        """The check-in headers (called from the polling thread: reads, never writes)."""
        f = self.fleet.in_force if self.fleet is not None else None
        return checkin.headers(self._machine, __version__, f.version if f else None, f.sha256 if f else None,
                               self.health()[0], self._last_block)

    def _rules_status(self) -> dict[str, Any]:
        opts = self._rules(self.policy)
        return {
            "ok": self._failing is None, "failing": self._failing, "restored": self._restored,
            "restore_failures": self._restore_failures, "last_restored": self._last_restored,
            "checks": 0 if self._watch is None else self._watch.checks,
            "watch": "none" if self._watch is None else ("netlink" if self._watch.fileno() is not None else
                                                         f"poll every {self._watch.poll:g} s"),
            "expected": {str(f): layout.lines() for f, layout in self._expected.items()},
            "options": {"queue_num": opts.queue_num, "mark_mask": opts.marks.mask,
                        "mark_allowed": opts.marks.allowed, "mark_blocked": opts.marks.blocked,
                        "fail_open": opts.fail_open, "forward": opts.forward,
                        "untracked_alerts": opts.untracked_alerts, "skip_empty": opts.skip_empty,
                        "families": list(opts.families)},
        }

    # -- keeping the rules in place -------------------------------------------------------------

    def _start_watch(self, opts: firewall.Options) -> Watch:
        watch = Watch(self.backend, firewall.tables_for(self.backend, opts))
        if watch.without_notifications:
            self._notice(watch.without_notifications)
        self._watch = watch
        self._expect(opts)
        return watch

    def _expect(self, opts: firewall.Options, families: tuple[firewall.Family, ...] | None = None) -> None:
        """After netguard's own restore: what is installed now is what must stay (in `families`, else
        in all the daemon enforces). Checked against the shape build_rules gives, so a rule someone
        changed in the same instant is not taken in."""
        if self._watch is None:
            return
        families = opts.families if families is None else families
        layouts = self._watch.expect(time.monotonic(), families, firewall.tables_for(self.backend, opts))
        self._expected.update(layouts)
        for family, layout in layouts.items():
            problems = firewall.shape_problems(self.backend, family, opts, layout)
            if problems:
                self._notice(f"the rules just installed differ from netguard's rule set: {'; '.join(problems)}")
                self._watch.retry(time.monotonic(), [family])

    def _heal(self, watch: Watch, now: float) -> None:
        """Check the rules; restore the families whose rules are missing, altered or out of order."""
        try:
            found = watch.check(now)
        except (OSError, subprocess.SubprocessError) as exc:
            self._notice(f"cannot read the rules to check them: {exc}")
            watch.retry(now + RETRY_MAX, list(firewall.FAMILIES))
            return
        if not found:
            return
        opts = self._rules(self.policy)
        restored: list[firewall.Family] = []
        errors: dict[firewall.Family, str] = {}
        for family in found:
            try:
                firewall.restore_family(self.backend, family, opts)
            except (firewall.FirewallError, OSError, subprocess.SubprocessError) as exc:
                errors[family] = " ".join(str(exc).split())[:ERROR_TEXT] or type(exc).__name__
            else:
                restored.append(family)
        after = time.monotonic()
        if restored:
            self._restored += 1
            missing = [p for f in restored for p in found[f]]
            # Logged first: the line's time is when the rules were back, not when the checks after it end.
            self._last_restored = {"time": self.clock(), "families": restored, "missing": missing}
            self._event("rules-restored", families=restored, missing=missing, restored_total=self._restored,
                        took_ms=round(1000 * (after - now), 1))
            self._notice(f"rules restored ({', '.join(f'IPv{f}' for f in restored)}): {'; '.join(missing)}")
            self._expect(opts, tuple(restored))
            # Something that keeps removing them: check less often (never more than FIGHT_MAX).
            self._fight = min(FIGHT_MAX, max(TICK, 2 * self._fight)) if after - self._last_restore < FIGHT_WINDOW \
                else 0.0
            self._last_restore = after
            if self._fight:
                watch.retry(after + self._fight, [])
        if errors:
            self._restore_failures += 1
            self._failing = "; ".join(f"IPv{f}: {e}" for f, e in errors.items())
            missing = [p for f in errors for p in found[f]]
            self._event("rules-restore-failed", families=sorted(errors), missing=missing, error=self._failing,
                        retry_in=self._retry, failures_total=self._restore_failures)
            self._notice(f"NOT ENFORCING as the policy says: netguard's rules are missing and could not be "
                         f"restored ({self._failing}); missing: {'; '.join(missing)}; "
                         f"trying again in {self._retry:g} s")
            self._notifier.status(f"NOT ENFORCING: rules missing, restore failing: {self._failing}")
            watch.retry(after + self._retry, sorted(errors))
            self._retry = min(RETRY_MAX, 2 * self._retry)
        elif self._failing is not None:
            self._failing = None
            self._retry = RETRY_FIRST
            self._notifier.status(f"enforcing {self.policy.label} (rules restored after failures)")

    def _sample_drops(self) -> None:
        try:
            q = queue_state(self.policy.queue_num)
        except OSError:
            return
        if q is None:
            return
        d = self._drops
        if q.dropped > d["queue_dropped"] or q.user_dropped > d["user_dropped"]:
            d["last_increase"] = self.clock()
        d["queue_dropped"], d["user_dropped"] = q.dropped, q.user_dropped

    # -- metrics --------------------------------------------------------------------------------

    def sample(self) -> Sample:
        """The figures for one scrape (from the metrics thread: reads ints, copies small dicts)."""
        from netguard.daemon.metrics import Sample

        st = self.engine.stats
        blocks = dict(self._blocks)
        q = None
        with contextlib.suppress(OSError):
            q = queue_state(self.policy.queue_num)
        dns_blocked = sum(n for (_, source), n in blocks.items() if source == "dns-answer")
        p = self.policy
        return Sample(
            version=__version__, backend=self.backend, started=self._started, packets=st.packets,
            flows={"allow": st.allowed, "block": st.blocked},
            dns_answers={"allow": self._dns_allowed, "block": dns_blocked}, dns_rewritten=st.dns_rewritten,
            blocks=blocks, cut=self._cut, fail_verdicts=st.fail_verdicts, limits=dict(st.by_limit),
            log_failures=self._log_failures, rules_ok=self._failing is None, rules_restored=self._restored,
            rules_restore_failures=self._restore_failures, rule_checks=0 if self._watch is None else self._watch.checks,
            queue_dropped=None if q is None else q.dropped, user_dropped=None if q is None else q.user_dropped,
            policy_name=p.name, policy_version=str(getattr(p, "version", None) or ""),
            policy_sha256=self._policy_sha256, policy_loaded=self._loaded, reloads=dict(self._reloads),
            last_reload_ok=self._last_reload is None or bool(self._last_reload["ok"]),
            names_learned=len(self.engine.names), undecided_flows=self.engine.undecided,
            followed_flows=self.engine.followed, unconfirmed_flows=self.engine.unconfirmed)

    def _start_metrics(self) -> Any:
        """The metrics registry, and the HTTP server if asked for (None without one). A metrics
        endpoint that cannot start is reported, never a reason to stop enforcing."""
        if self.metrics is None and self.metrics_textfile is None:
            return None
        from netguard.daemon import metrics

        self._metrics_registry = metrics.registry_for(self.sample)
        if self.metrics is None:
            return None
        try:
            server = metrics.Server(self.metrics, self._metrics_registry)
        except OSError as exc:
            self._metrics_error = f"cannot serve metrics at {_address_text(self.metrics)}: {exc.strerror or exc}"
            self._notice(self._metrics_error)
            return None
        self._notice(f"metrics at http://{_address_text((self.metrics[0], server.port))}/metrics")
        return server

    def _write_textfile(self) -> None:
        if self.metrics_textfile is None or self._metrics_registry is None:
            return
        from netguard.daemon import metrics

        self._next_textfile = time.monotonic() + metrics.TEXTFILE_INTERVAL
        try:
            metrics.write_textfile(self.metrics_textfile, self._metrics_registry)
        except OSError as exc:
            error = f"cannot write metrics to {self.metrics_textfile}: {exc.strerror or exc}"
            if error != self._metrics_error:
                self._notice(error)
            self._metrics_error = error
        else:
            self._metrics_error = None

    def _rules(self, policy: Policy) -> firewall.Options:
        """The rule options for a policy, in the variant (with xt u32 or without, families) chosen at start."""
        u32 = self._skip_empty
        return dataclasses.replace(firewall.with_u32(firewall_options(policy), u32), families=self._families)

    def _policy_mtime(self) -> float | None:
        if self.policy_path is None:
            return None
        try:
            return os.stat(self.policy_path).st_mtime
        except OSError:
            return None

    def _notice(self, text: str) -> None:
        self.err.write(f"netguard: {text}\n")
        self.err.flush()


def _address_text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
