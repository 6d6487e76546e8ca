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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from netguard import __version__
from netguard.daemon import conntrack, firewall
from netguard.daemon.inject import Injector
from netguard.daemon.nfqueue import Packet, Queue, apply_verdict, set_fail_open
from netguard.daemon.owner import Owner, OwnerFinder
from netguard.daemon.policyfiles import load_policy
from netguard.daemon.status import RECENT, AlreadyRunning, StatusServer
from netguard.engine import Action, Engine, Event, Verdict
from netguard.policy import Policy, PolicyError

TICK = 0.25  # seconds between checks of the policy file and engine expiry
# Netfilter hook numbers (NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT): OUTPUT queues only client flows,
# INPUT only DNS answers; FORWARD queues both (the engine tells them apart).
HOOK_OUTPUT = 3
FROM_CLIENT = {1: False, HOOK_OUTPUT: True}


@functools.lru_cache(maxsize=8)
def _mark_values(marks: firewall.Marks) -> tuple[int, int, int, int]:
    """(mask, allowed, blocked, passed) for apply_verdict: Marks.passed is worked out on each use."""
    return marks.mask, marks.allowed, marks.blocked, marks.passed


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
        if not str(exc).startswith("ip6tables") or opts.families != firewall.FAMILIES:
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
    policy: Policy = field(init=False)
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.policy = load_policy(self.policy_path)
        self.engine = Engine(self.policy)
        self._mtime = self._policy_mtime()
        self._stop = False
        self._reload = False
        self._queue: Queue | None = None
        self._marks = firewall_options(self.policy).marks
        self._injector = Injector(self._marks.passed)
        self._log_failures = 0
        self._skip_empty = True  # until apply_preferred finds the kernel without xt u32
        self._families = firewall.FAMILIES  # until the kernel refuses the IPv6 rules
        self._started = self._loaded = self.clock()
        self._last_reload: dict[str, Any] | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._owners: OwnerFinder | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Install, enforce until SIGTERM/SIGINT, remove. Returns the exit code."""
        # First, before any rule changes: a second daemon here would take the first one's rules.
        try:
            status = StatusServer()
        except AlreadyRunning as exc:
            raise StartError(str(exc)) from None
        # Stale rules of the chosen backend are replaced in one transaction by apply() below, so
        # a restart after a crash never opens a gap; those of the other backend go now.
        removed = firewall.remove(keep=self.backend)
        if removed:
            self._notice(f"removed stale netguard rules ({', '.join(removed)})")
        opts = firewall_options(self.policy)
        queue = self._queue = Queue(opts.queue_num, self._on_packet)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        enforcing = False
        try:
            try:
                self._owners = OwnerFinder()
            except OSError as exc:
                self._notice(f"blocks will be logged without their local process: {exc}")
            if opts.fail_open:
                set_fail_open(queue.fileno(), opts.queue_num)
            stale = [f"{self.backend} IPv{f}" for f in firewall.FAMILIES if firewall.installed(self.backend, f)]
            opts, no_u32, no_ipv6 = _apply_fitting(self.backend, opts)
            self._skip_empty, self._families = opts.skip_empty, opts.families
            if stale:
                self._notice(f"replaced stale netguard rules in one step ({', '.join(stale)})")
            enforcing = True
            empty = ("data-less TCP segments stay in the kernel" if no_u32 is None else
                     f"every TCP segment of an undecided flow is queued, the xt u32 rules failed: {no_u32}")
            if no_ipv6 is not None:
                empty += (f"; IPv4 only: the kernel refused the IPv6 rules ({no_ipv6}), so IPv6 connections are "
                          "NOT filtered (disable IPv6, or see `netguard doctor`)")
            self._notice(f"enforcing {self.policy.label} (backend {self.backend}, queue {opts.queue_num}, "
                         f"fail_mode {self.policy.fail_mode}; {empty})")
            self._loop(queue, wake_r, status)
            enforcing = False
        finally:
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
                if self._owners is not None:
                    self._owners.close()
        st = self.engine.stats
        limits = ", ".join(f"{k} {v}" for k, v in sorted(st.by_limit.items())) or "none"
        self._notice(f"stopped; rules removed ({st.packets} packets, {st.allowed} flows allowed, {st.blocked} "
                     f"blocked, {st.dns_rewritten} DNS answers rewritten, {st.fail_verdicts} fail verdicts; "
                     f"limits hit: {limits})")
        return 0

    def _loop(self, queue: Queue, wake: socket.socket, status: StatusServer) -> None:
        next_tick = time.monotonic() + TICK
        while not self._stop:
            timeout = max(0.0, next_tick - time.monotonic())
            ready, _, _ = select.select([queue.fileno(), wake.fileno(), status.fileno()], [], [], timeout)
            if queue.fileno() in ready:
                queue.pump()
            if status.fileno() in ready:
                status.serve(self.status)
            if wake.fileno() in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
            if self._reload:
                self._reload = False
                self.reload("SIGHUP")
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK
                mtime = self._policy_mtime()
                if mtime != self._mtime:
                    self._mtime = mtime
                    self.reload("policy file changed")
                self.engine.expire(self.clock())

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    # -- packets ------------------------------------------------------------------------------

    def _on_packet(self, packet: Packet) -> None:
        data = packet.get_payload()
        try:
            verdict = self.engine.handle(data, self.clock(), from_client=FROM_CLIENT.get(packet.hook))
        except Exception as exc:  # a bug must not take enforcement down
            self._notice(f"internal error on a packet ({type(exc).__name__}: {exc}); fail verdict")
            fail = Verdict(Action.ACCEPT if self.policy.fail_mode == "open" else Action.DROP)
            apply_verdict(packet, fail, *_mark_values(self._marks))
            return
        event = verdict.event
        if event is not None and not event.allowed:
            # Logged before the verdict: the reset it leads to takes the socket (and so its owner)
            # out of the kernel's tables, and whoever watches the log sees the line no later than
            # the client sees its failure.
            owner = None
            if packet.hook == HOOK_OUTPUT and self._owners is not None:
                owner = self._owners.find(event.key, self.clock())
            self._log(event, owner=owner)
        for raw in verdict.inject:
            try:
                self._injector.send(raw)
            except OSError as exc:
                self._notice(f"could not send the TLS alert: {exc}")
        apply_verdict(packet, verdict, *_mark_values(self._marks))

    def _log(self, event: Event, action: str | None = None, owner: Owner | None = None) -> None:
        record = event.record()
        if action:
            record["action"] = action
        if owner is not None:
            record.update(owner.record())
        self._recent.append(record)
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
            new = load_policy(self.policy_path)
        except (PolicyError, OSError, ValueError) as exc:
            return self._reloaded(why, f"reload ({why}) rejected, {self.policy.label} stays in force: {exc}")
        if new.queue_num != self.policy.queue_num:
            return self._reloaded(why, f"reload ({why}) rejected: queue_num changed ({self.policy.queue_num} -> "
                                       f"{new.queue_num}); restart netguard to move queues")
        if firewall_options(new) != firewall_options(self.policy):
            try:
                if self._queue is not None and new.fail_mode != self.policy.fail_mode:
                    set_fail_open(self._queue.fileno(), new.queue_num, new.fail_mode == "open", wait_ack=False)
                # The new set replaces the old one in one transaction per table: no moment without.
                firewall.apply(self.backend, self._rules(new))
            except (OSError, firewall.FirewallError) as exc:
                firewall.apply(self.backend, self._rules(self.policy))
                return self._reloaded(why, f"reload ({why}): new rules failed ({exc}); the old ones restored")
        old = self.policy
        self.policy = new
        self._loaded = self.clock()
        if firewall_options(new).marks != self._marks:
            self._marks = firewall_options(new).marks
            self._injector.close()
            self._injector = Injector(self._marks.passed)
        cut = self.engine.reload(new, self.clock())
        cut_count = 0
        for event in cut:
            problem = conntrack.mark_blocked(event.key, new.mark_blocked, new.mark_mask)
            if problem is None:
                cut_count += 1
                self._log(event, action="cut")
            elif problem != "gone":
                self._notice(f"could not cut {event.key.text()}: {problem}")
        return self._reloaded(why, f"reloaded ({why}): {old.label} -> {new.label}; {cut_count} open flow(s) cut",
                              ok=True)

    def _reloaded(self, why: str, text: str, ok: bool = False) -> bool:
        self._notice(text)
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
                       "limits": dict(st.by_limit), "log_failures": self._log_failures},
            "undecided_flows": self.engine.undecided, "names_learned": len(self.engine.names),
        }
        if privileged:
            doc["recent_blocks"] = list(self._recent)
        return doc

    def _rules(self, policy: Policy) -> firewall.Options:
        """The rule options for a policy, in the variant (with xt u32 or without, families) chosen at start."""
        return dataclasses.replace(firewall_options(policy), skip_empty=self._skip_empty, families=self._families)

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
