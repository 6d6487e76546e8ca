"""The last good organisation policy on disk, so that a machine that boots offline enforces it.

Strategy: one JSON file (last-good.json) holds the document, its signature, the version (the
highest this machine has accepted: a rollback below it is refused even after a reboot), the ETags
(the next fetch after a restart can be a 304) and the URL it came from. One file, replaced with
write + fsync + rename, so a crash leaves either the old state or the new, never a document with
another document's signature. At start the document is verified again with the keys trusted now
(a key removed from the trusted set no longer vouches for it); an expired one is still enforced, as
the last word of the organisation, and reported as stale. State from another policy URL is not used.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netguard.fleet.document import MAX_DOCUMENT_BYTES, Accepted, Refusal, accept
from netguard.fleet.minisign import PublicKey
from netguard.policy import Catalog

FILE = "last-good.json"
# The state file holds a document of at most MAX_DOCUMENT_BYTES, JSON-escaped (at worst six bytes for
# one control character), and a signature; a larger file is damaged and is not read into memory.
MAX_STATE_BYTES = 6 * MAX_DOCUMENT_BYTES + 65536


@dataclass(frozen=True, slots=True)
class Kept:
    accepted: Accepted
    doc_etag: str | None
    sig_etag: str | None


def save(state_dir: Path, url: str, accepted: Accepted, doc_etag: str | None, sig_etag: str | None) -> None:
    """Replace the kept state with this accepted document (atomically)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "url": url, "version": accepted.version, "sha256": accepted.sha256, "expires": accepted.expires,
        "key_id": accepted.key_id, "doc_etag": doc_etag, "sig_etag": sig_etag,
        "document": accepted.data.decode("utf-8"),
        "signature": base64.b64encode(accepted.signature).decode("ascii"),
    }
    path = state_dir / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(state_dir: Path, url: str, keys: Sequence[PublicKey], catalog: Catalog) -> tuple[Kept | None, str | None]:
    """The kept state for url, verified again; (None, why) when there is none or it cannot be used
    (why is None when there simply is none)."""
    path = state_dir / FILE
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    if len(raw) > MAX_STATE_BYTES:
        return None, f"{path} is larger than {MAX_STATE_BYTES} bytes"
    try:
        record = json.loads(raw)
        kept_url, document, signature = record["url"], record["document"], record["signature"]
        version, sha256 = record["version"], record["sha256"]
        etags = record.get("doc_etag"), record.get("sig_etag")
        data, sig = document.encode("utf-8"), base64.b64decode(signature, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{path} is damaged ({type(exc).__name__}: {exc})"
    if kept_url != url:
        return None, f"{path} holds the policy of {kept_url}, not of {url}: not used"
    try:
        accepted = accept(data, sig, keys, catalog, url, highest=version if isinstance(version, int) else None,
                          highest_sha256=sha256 if isinstance(sha256, str) else None)
    except Refusal as exc:
        return None, f"{path}: the kept policy is not usable ({exc.kind}: {exc})"
    if accepted.version != version:
        return None, f"{path}: its signature says version {accepted.version}, the state file {version}"
    doc_etag, sig_etag = (e if isinstance(e, str) else None for e in etags)
    return Kept(accepted, doc_etag, sig_etag), None

