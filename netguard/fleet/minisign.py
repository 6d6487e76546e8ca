"""minisign public keys and signatures: the formats parsed here, the Ed25519 checks done by `cryptography`.

Strategy: admins sign with the `minisign` tool (Debian packages it), so netguard reads its files as
they are and adds no cryptography of its own. A public key is base64 of "Ed" + key id (8 bytes) +
Ed25519 public key (32). A signature file has four lines: an untrusted comment; base64 of the
algorithm + key id + Ed25519 signature (64), where algorithm "ED" (minisign's default since 0.8)
signs the BLAKE2b-512 hash of the file and "Ed" (legacy, `minisign -l`) the file itself; the trusted
comment; and base64 of the global signature, Ed25519 over signature || trusted comment, which is
what makes the trusted comment (here: the policy's version and expiry) trustworthy. A file verifies
only when both signatures do, under a trusted key with the signature's key id. Every malformed input
is a SignatureError, never an exception of another kind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# minisign's own limit for a trusted comment is 8 KiB; with the other three lines a signature file
# stays well below this.
MAX_SIGNATURE_BYTES = 16384
KEY_ALGORITHM = b"Ed"
PREHASHED = b"ED"  # signature over BLAKE2b-512 of the file (minisign >= 0.8 default)
LEGACY = b"Ed"  # signature over the file itself
_KEY_BYTES = 2 + 8 + 32
_SIG_BYTES = 2 + 8 + 64
_UNTRUSTED = "untrusted comment:"
_TRUSTED = "trusted comment: "

Kind = Literal["malformed", "unknown-key", "bad-signature"]


class SignatureError(ValueError):
    """A key or signature that cannot be read, or a signature that does not verify."""

    def __init__(self, kind: Kind, text: str) -> None:
        self.kind = kind
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: bytes  # 8 bytes, as in the files
    key: bytes  # 32 bytes

    @property
    def id_text(self) -> str:
        """The key id as minisign prints it (a little-endian 64-bit number in hex)."""
        return key_id_text(self.key_id)


@dataclass(frozen=True, slots=True)
class Signature:
    algorithm: bytes  # PREHASHED or LEGACY
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes


def key_id_text(key_id: bytes) -> str:
    """The key id as minisign writes it in its key files' comments (upper-case hex, no leading zeros)."""
    return format(int.from_bytes(key_id, "little"), "X")


def _b64(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed", f"{what}: not base64") from None
    if len(raw) != size:
        raise SignatureError("malformed", f"{what}: {len(raw)} bytes where minisign writes {size}")
    return raw


def parse_public_key(text: str) -> PublicKey:
    """A minisign public key: the whole .pub file, or just its base64 line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith(_UNTRUSTED):
        lines = lines[1:]
    if len(lines) != 1:
        raise SignatureError("malformed", "public key: expected one base64 line (after an optional "
                                          "'untrusted comment:' line)")
    raw = _b64(lines[0], _KEY_BYTES, "public key")
    if raw[:2] != KEY_ALGORITHM:
        raise SignatureError("malformed", f"public key: algorithm {raw[:2]!r}, minisign keys are 'Ed'")
    return PublicKey(raw[2:10], raw[10:])


def parse_signature(data: bytes) -> Signature:
    """A minisign signature file (.minisig)."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError("malformed", f"signature file larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("malformed", "signature file is not UTF-8 text") from None
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if len(lines) != 4 or not lines[0].startswith(_UNTRUSTED) or not lines[2].startswith(_TRUSTED):
        raise SignatureError("malformed", "not a minisign signature file (expected 4 lines: untrusted comment, "
                                          "signature, trusted comment, global signature)")
    raw = _b64(lines[1], _SIG_BYTES, "signature")
    algorithm = raw[:2]
    if algorithm not in (PREHASHED, LEGACY):
        raise SignatureError("malformed", f"signature algorithm {algorithm!r} (minisign writes 'ED' or 'Ed')")
    return Signature(algorithm, raw[2:10], raw[10:], lines[2][len(_TRUSTED):],
                     _b64(lines[3], 64, "global signature"))


def verify(data: bytes, sig: Signature, keys: Sequence[PublicKey]) -> PublicKey:
    """The trusted key under which `sig` verifies for `data`, file and trusted comment both; else
    SignatureError ("unknown-key": no trusted key has the signature's key id; "bad-signature")."""
    candidates = [k for k in keys if k.key_id == sig.key_id]
    if not candidates:
        trusted = ", ".join(k.id_text for k in keys) or "none"
        raise SignatureError("unknown-key", f"signed with key {key_id_text(sig.key_id)}, which is not a trusted "
                                            f"key (trusted: {trusted})")
    message = hashlib.blake2b(data, digest_size=64).digest() if sig.algorithm == PREHASHED else data
    for k in candidates:
        public = Ed25519PublicKey.from_public_bytes(k.key)
        try:
            public.verify(sig.signature, message)
            public.verify(sig.global_signature, sig.signature + sig.trusted_comment.encode("utf-8"))
        except InvalidSignature:
            continue
        return k
    raise SignatureError("bad-signature", f"the signature by key {key_id_text(sig.key_id)} does not match the "
                                          "document and its trusted comment")
