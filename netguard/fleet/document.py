"""What a signed organisation policy must satisfy before netguard uses it. Pure.

Strategy: TUF's lesson is that a signature alone is not enough: an attacker on the path (or on the
server) can replay an older signed policy (rollback) or keep serving the last one forever (freeze).
So the signed part carries a version that only grows and an expiry time: minisign's trusted comment,
covered by the global signature, reads `version=N expires=YYYY-MM-DDTHH:MM:SSZ` (other words may
follow). `accept` checks, in this order, and the first failure is the refusal: size, signature file
format, key (one of the trusted keys), both signatures, the trusted comment, version against the
highest version this machine has accepted (lower: rollback; equal with other content: also
refused, a version names one document), expiry, and finally the policy itself as `policy validate`
sees it. Only then is the document a candidate to enforce. The caller keeps the policy in force on
any Refusal.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from netguard.fleet.minisign import PublicKey, SignatureError, parse_signature, verify
from netguard.policy import Catalog, Policy, PolicyError, parse_policy

# A policy of 100k entries is a few MB; anything far larger is not a policy, and is not kept in memory.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
# Versions fit a signed 64-bit integer: what other tools (log processors, spreadsheets) can hold.
MAX_VERSION = 2**63 - 1
EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_VERSION = re.compile(r"version=([0-9]{1,19})")
_EXPIRES = re.compile(r"expires=([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)")

RefusalKind = Literal["too-large", "malformed", "unknown-key", "bad-signature", "rollback", "expired", "invalid"]
REFUSAL_KINDS: tuple[RefusalKind, ...] = ("too-large", "malformed", "unknown-key", "bad-signature", "rollback",
                                          "expired", "invalid")


class Refusal(ValueError):
    """A fetched document that must not be used; `kind` is one of REFUSAL_KINDS."""

    def __init__(self, kind: RefusalKind, text: str) -> None:
        self.kind = kind
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class Signed:
    """What the trusted comment says."""

    version: int
    expires: float  # seconds since the epoch
    comment: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified organisation policy and the facts about it."""

    policy: Policy = field(repr=False)
    data: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    version: int
    expires: float
    sha256: str
    key_id: str

    def expired(self, now: float) -> bool:
        return now >= self.expires


def parse_trusted_comment(comment: str) -> Signed:
    """`version=N expires=YYYY-MM-DDTHH:MM:SSZ`, in any order, other words allowed; each exactly once."""
    words = comment.split()
    versions = [m[1] for w in words if (m := _VERSION.fullmatch(w))]
    expires = [m[1] for w in words if (m := _EXPIRES.fullmatch(w))]
    if len(versions) != 1 or len(expires) != 1:
        bad = [w for w in words if w.startswith(("version=", "expires=")) and not (
            _VERSION.fullmatch(w) or _EXPIRES.fullmatch(w))]
        hint = f" ({', '.join(repr(w) for w in bad)} not understood)" if bad else ""
        raise Refusal("malformed", f"the signed (trusted) comment {comment!r} must hold exactly one "
                                   f"version=N and one expires=YYYY-MM-DDTHH:MM:SSZ{hint}")
    version = int(versions[0])
    if version > MAX_VERSION:
        raise Refusal("malformed", f"version {version} is larger than {MAX_VERSION}")
    try:
        when = datetime.strptime(expires[0], EXPIRES_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise Refusal("malformed", f"expires={expires[0]} is not a valid time") from None
    return Signed(version, float(calendar.timegm(when.timetuple())), comment)


def time_text(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(EXPIRES_FORMAT)


def accept(data: bytes, signature: bytes, keys: Sequence[PublicKey], catalog: Catalog, source: str, *,
           highest: int | None = None, highest_sha256: str | None = None, now: float | None = None) -> Accepted:
    """Check a fetched document and its signature file; the Accepted policy, or Refusal.

    `highest` / `highest_sha256`: the highest version accepted before on this machine and its
    document's hash (None: nothing accepted yet). `now`: refuse an expired document (None: do not
    check, for the copy kept on disk, which was checked when it was fetched). `source` names the
    document in the policy's label and problems (the policy URL)."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise Refusal("too-large", f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        sig = parse_signature(signature)
        key = verify(data, sig, keys)
    except SignatureError as exc:
        raise Refusal(exc.kind, str(exc)) from None
    signed = parse_trusted_comment(sig.trusted_comment)
    sha256 = hashlib.sha256(data).hexdigest()
    if highest is not None:
        if signed.version < highest:
            raise Refusal("rollback", f"version {signed.version} is lower than version {highest}, which this "
                                      "machine has already accepted")
        if signed.version == highest and highest_sha256 is not None and sha256 != highest_sha256:
            raise Refusal("rollback", f"version {signed.version} is already in use for another document "
                                      f"(sha256 {highest_sha256[:12]}…, this one {sha256[:12]}…): a new "
                                      "document needs a higher version")
    if now is not None and now >= signed.expires:
        raise Refusal("expired", f"version {signed.version} expired at {time_text(signed.expires)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal("invalid", "the document is not UTF-8 text") from None
    try:
        policy = parse_policy(text, source, catalog, "organisation policy")
    except PolicyError as exc:
        raise Refusal("invalid", f"the policy has problems:\n{exc}") from None
    return Accepted(policy, data, signature, signed.version, signed.expires, sha256, key.id_text)
