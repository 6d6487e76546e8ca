"""The organisation policy inside the daemon: a polling thread that fetches and verifies, and the
bookkeeping the daemon's loop does with what it hands over.

Strategy (after OPA's signed bundles): the thread polls, the loop enforces, and neither waits for the
other. Each poll asks for the signature file with If-None-Match; when it is unchanged (304) so is
the policy, and the poll is one small request. When it changed, the document is fetched (also with
If-None-Match: a document re-signed with a later expiry is not downloaded again), verified
(document.accept: keys, signatures, version, expiry, policy problems) and, when accepted, kept on
disk (state.save) before it is handed over, so the highest accepted version survives a crash.
Every outcome, accepted or not, goes to the loop through a queue and one byte on a socket pair the
loop selects on; the loop logs it, puts an accepted policy in force through its usual reload path
(activate + compose), and keeps the counters that `netguard status` shows. The thread only reads
what the loop publishes (the check-in facts) through a callable.

Polling: every `interval` seconds, less up to JITTER of it (machines spread out, and a new policy is
never seen later than one interval after it is published), doubling on errors up to MAX_BACKOFF;
`pull()` (SIGUSR1, `netguard policy pull`) fetches at once.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from netguard.daemon.policyfiles import load_policy
from netguard.fleet import fetch, state
from netguard.fleet.document import MAX_DOCUMENT_BYTES, REFUSAL_KINDS, Accepted, Refusal, accept, time_text
from netguard.fleet.minisign import MAX_SIGNATURE_BYTES
from netguard.fleet.source import Source
from netguard.policy import Catalog, Policy
from netguard.policy.compose import combine, pin_host

JITTER = 0.2  # a poll waits between 80 % and 100 % of the interval
# Seconds a stopping daemon waits for the thread: it may be inside a fetch (fetch.TIMEOUT); the
# daemon's exit must not wait for that (the thread is a daemon thread and ends with the process).
STOP_WAIT = 0.5
MAX_BACKOFF = 600.0  # seconds: after errors, a machine still asks every ten minutes
Result = Literal["accepted", "unchanged", "refused", "error"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One poll, as handed to the loop."""

    time: float
    result: Result
    text: str
    kind: str | None = None  # the refusal kind
    accepted: Accepted | None = None
    took: float = 0.0
    again: bool = False  # the same refused documents as at the last poll (logged and counted then)


def effective(source: Source, org: Accepted | None, local: Policy | None) -> Policy:
    """The organisation policy (with the local file laid over it) or, before there is one, the local
    file or the embedded default; the policy server's host always allowed (policy.compose)."""
    if org is not None:
        policy = org.policy if local is None else combine(org.policy, local)
    else:
        policy = local if local is not None else load_policy(None)
    return pin_host(policy, source.host, source.port, source.url)


class Fleet:
    """The organisation policy source of one daemon."""

    def __init__(self, source: Source, catalog: Catalog, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.catalog = catalog
        self.clock = clock
        kept, why = state.load(source.state_dir, source.url, source.keys, catalog)
        self.boot_note = why
        # The loop's: what is in force. The thread's: the last accepted document and its ETags.
        self.in_force: Accepted | None = kept.accepted if kept else None
        self._good = kept
        self._refused: _Refused | None = None
        self._tls = fetch.context(source.ca_file)
        self._outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._trigger = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._checkin: Callable[[], dict[str, str]] = dict
        self.next_poll: float | None = None
        # Counters and last outcomes, written by the loop only (record()).
        self.attempts = 0
        self.results: dict[str, int] = {}
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_KINDS, 0)
        self.last: dict[str, Any] | None = None
        self.last_refusal: dict[str, Any] | None = None
        self.last_applied: dict[str, Any] | None = None
        self.consecutive_errors = 0

    # -- the loop's side ----------------------------------------------------------------------

    def compose(self, local: Policy | None) -> Policy:
        """The policy to enforce: the organisation's in force (with the local file laid over it), or,
        before there is one, the local file or the embedded default; the policy server always allowed."""
        return effective(self.source, self.in_force, local)

    def start(self, checkin: Callable[[], dict[str, str]]) -> None:
        """Start polling (the first poll at once); checkin() gives the headers of each request."""
        self._checkin = checkin
        self._thread = threading.Thread(target=self._run, name="netguard-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._trigger.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT)
        self._wake_r.close()
        self._wake_w.close()

    def fileno(self) -> int:
        """Readable when outcomes wait (for the loop's select)."""
        return self._wake_r.fileno()

    def pull(self) -> None:
        """Poll now."""
        self._trigger.set()

    def outcomes(self) -> list[Outcome]:
        """The outcomes handed over since the last call (never blocks)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        out = []
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def activate(self, accepted: Accepted | None) -> Accepted | None:
        """Put a document in force (for compose); returns the one it replaces."""
        previous, self.in_force = self.in_force, accepted
        return previous

    def record(self, outcome: Outcome, result: str, text: str) -> None:
        """Count an outcome as the loop finished it (result: applied, unchanged, refused, error,
        not-applied)."""
        self.attempts += 1
        self.results[result] = self.results.get(result, 0) + 1
        self.last = {"time": outcome.time, "result": result, "text": text, "took": round(outcome.took, 3)}
        if outcome.result == "refused" and outcome.kind is not None and not outcome.again:
            self.refusals[outcome.kind] = self.refusals.get(outcome.kind, 0) + 1
            self.last_refusal = {"time": outcome.time, "kind": outcome.kind, "text": outcome.text}
        if result == "applied" and outcome.accepted is not None:
            # When the document had arrived, and when its policy was in force (the loop's reload).
            self.last_applied = {"version": outcome.accepted.version, "fetched": outcome.time + outcome.took,
                                 "in_force": self.clock()}
        self.consecutive_errors = self.consecutive_errors + 1 if result == "error" else 0

    def stale(self, now: float) -> str | None:
        """Why the organisation policy in force cannot be trusted to be current, or None."""
        if self.in_force is None:
            return "no organisation policy yet (enforcing the local or embedded fallback)"
        if self.in_force.expired(now):
            return f"the organisation policy (version {self.in_force.version}) expired at " \
                   f"{time_text(self.in_force.expires)}"
        return None

    def status(self) -> dict[str, Any]:
        f = self.in_force
        return {
            "url": self.source.url, "state_dir": str(self.source.state_dir), "interval": self.source.interval,
            "keys": [k.id_text for k in self.source.keys],
            "in_force": None if f is None else {"version": f.version, "sha256": f.sha256, "key_id": f.key_id,
                                                "expires": f.expires, "expired": f.expired(self.clock())},
            "boot": self.boot_note, "attempts": self.attempts, "results": dict(self.results),
            "refusals": dict(self.refusals), "last": self.last, "last_refusal": self.last_refusal,
            "last_applied": self.last_applied, "consecutive_errors": self.consecutive_errors,
            "next_poll": self.next_poll,
        }

    # -- the thread's side --------------------------------------------------------------------

    def _run(self) -> None:
        errors = 0
        while not self._stopping:
            self._trigger.clear()
            try:
                outcome = self.poll_once()
            except Exception as exc:  # a bug here must not end polling for good
                outcome = Outcome(self.clock(), "error", f"internal error while polling: {type(exc).__name__}: {exc}")
            if self._stopping:
                return
            self._outbox.put(outcome)
            with contextlib.suppress(OSError):
                self._wake_w.send(b"!")
            errors = errors + 1 if outcome.result == "error" else 0
            wait = min(self.source.interval * 2 ** min(errors, 16), MAX_BACKOFF) if errors else self.source.interval
            wait = max(wait * (1 - JITTER * random.random()), 0.0)
            self.next_poll = self.clock() + wait
            self._trigger.wait(wait)

    def poll_once(self) -> Outcome:
        """One poll: fetch the signature (and, if it changed, the document), verify, keep on disk.

        After a refusal the refused pair's ETags are asked with: while both are unchanged the same
        refusal is reported again (`again`: not a new log line or count), and a pair published in
        two steps (signature first) is fetched again once its document has changed too."""
        start = time.monotonic()
        now = self.clock()
        good, refused = self._good, self._refused

        def done(result: Result, text: str, kind: str | None = None, accepted: Accepted | None = None,
                 again: bool = False) -> Outcome:
            return Outcome(now, result, text, kind, accepted, time.monotonic() - start, again)

        try:
            headers = self._checkin()
        except Exception as exc:  # the check-in facts must never stop the fetch
            headers = {"Netguard-State": f"unknown ({type(exc).__name__})"}
        known = refused or good  # the pair whose ETags are sent
        try:
            sig = fetch.get(self.source.signature_url, etag=known.sig_etag if known else None, headers=headers,
                            tls=self._tls, limit=MAX_SIGNATURE_BYTES)
            if sig.status == 304 and refused is None and good is not None:
                return done("unchanged", "signature not modified (304)")
            doc = fetch.get(self.source.url, etag=known.doc_etag if known else None, headers=headers, tls=self._tls,
                            limit=MAX_DOCUMENT_BYTES)
        except fetch.FetchError as exc:
            return done("error", str(exc))
        if known is None and (sig.status == 304 or doc.status == 304):
            return done("error", f"{self.source.url}: 304 to a request without an ETag")
        if refused is not None and sig.status == 304 and doc.status == 304:
            return done("refused", f"still published: {refused.text}", refused.kind, again=True)
        held = (refused.signature, refused.data) if refused else (good.accepted.signature, good.accepted.data) \
            if good else (b"", b"")
        sig_body = sig.body if sig.status == 200 else held[0]
        data = doc.body if doc.status == 200 else held[1]
        try:
            accepted = accept(data, sig_body, self.source.keys, self.catalog, self.source.url,
                              highest=good.accepted.version if good else None,
                              highest_sha256=good.accepted.sha256 if good else None, now=now)
        except Refusal as exc:
            self._refused = _Refused(sig.etag, doc.etag, sig_body, data, exc.kind, str(exc))
            return done("refused", str(exc), exc.kind)
        self._refused = None
        try:
            state.save(self.source.state_dir, self.source.url, accepted, doc.etag, sig.etag)
        except OSError as exc:
            # Enforced anyway: it is valid now. Only a reboot would fall back to the older copy.
            note = f"; not kept on disk ({exc})"
        else:
            note = ""
        self._good = state.Kept(accepted, doc.etag, sig.etag)
        if good is not None and good.accepted.sha256 == accepted.sha256 and good.accepted.version == accepted.version:
            return done("unchanged", f"same document and version, signature renewed (expires "
                                     f"{time_text(accepted.expires)}){note}", accepted=accepted)
        return done("accepted", f"version {accepted.version} (sha256 {accepted.sha256[:12]}…, key {accepted.key_id}, "
                                f"expires {time_text(accepted.expires)}){note}", accepted=accepted)


@dataclass(frozen=True, slots=True)
class _Refused:
    """The last refused pair: its ETags, and its bytes (for when one half changes and the other is 304)."""

    sig_etag: str | None
    doc_etag: str | None
    signature: bytes
    data: bytes
    kind: str
    text: str
