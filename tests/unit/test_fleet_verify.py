"""Signed organisation policies: minisign formats and verification, the trusted comment (version and
expiry), and what `document.accept` refuses. Keys and signatures are made by the real `minisign`
binary (no root needed); `minisign -V` is the independent oracle for what verifies."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netguard.daemon.policyfiles import load_catalog
from netguard.fleet import minisign
from netguard.fleet.document import MAX_DOCUMENT_BYTES, Refusal, accept, parse_trusted_comment
from netguard.lab.policyserver import Signer

URL = "https://config.corp.example/netguard/policy.toml"
POLICY = 'name = "acme"\nallow = ["dockerhub", "ghcr"]\n'
FUTURE = "2099-01-01T00:00:00Z"
NOW = 1_800_000_000.0  # 2027-01-15


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/bootstrap --test installs it")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Signer]:
    need("minisign")
    return Signer(tmp_path_factory.mktemp("key-a")), Signer(tmp_path_factory.mktemp("key-b"))


def signed(tmp: Path, signer: Signer, text: str = POLICY, comment: str = f"version=3 expires={FUTURE}",
           legacy: bool = False) -> tuple[bytes, bytes]:
    doc = tmp / "policy.toml"
    doc.write_text(text)
    sig = signer.sign(doc, comment, legacy=legacy)
    return doc.read_bytes(), sig.read_bytes()


def check(data: bytes, sig: bytes, keys: list[minisign.PublicKey], **kw: object):  # type: ignore[no-untyped-def]
    return accept(data, sig, keys, load_catalog(), URL, **kw)  # type: ignore[arg-type]


def refusal(data: bytes, sig: bytes, keys: list[minisign.PublicKey], **kw: object) -> Refusal:
    with pytest.raises(Refusal) as e:
        check(data, sig, keys, **kw)
    return e.value


def key(s: Signer) -> minisign.PublicKey:
    return minisign.parse_public_key(s.public.read_text())


# -- minisign formats -------------------------------------------------------------------------


def test_public_key_from_file_or_line(signers: tuple[Signer, Signer]) -> None:
    a, _ = signers
    from_file = minisign.parse_public_key(a.public.read_text())
    assert from_file == minisign.parse_public_key(a.key_line) == minisign.parse_public_key(a.key_line + "\n")
    # minisign's own comment line names the key id the way id_text prints it.
    assert a.public.read_text().splitlines()[0].endswith(from_file.id_text)
    assert len(from_file.key) == 32


@pytest.mark.parametrize(("text", "message"), [
    ("", "one base64 line"),
    ("RWQ not base64 !", "not base64"),
    (base64.b64encode(b"Ed" + bytes(30)).decode(), "bytes where minisign writes 42"),
    (base64.b64encode(b"XX" + bytes(40)).decode(), "algorithm"),
    ("untrusted comment: x\nRWQa\nRWQb", "one base64 line"),
])
def test_bad_public_keys(text: str, message: str) -> None:
    with pytest.raises(minisign.SignatureError) as e:
        minisign.parse_public_key(text)
    assert e.value.kind == "malformed" and message in str(e.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["prehashed-ED", "legacy-Ed"])
def test_real_signatures_verify(signers: tuple[Signer, Signer], tmp_path: Path, legacy: bool) -> None:
    a, _ = signers
    data, sig = signed(tmp_path, a, legacy=legacy)
    parsed = minisign.parse_signature(sig)
    assert parsed.algorithm == (minisign.LEGACY if legacy else minisign.PREHASHED)
    assert parsed.trusted_comment == f"version=3 expires={FUTURE}"
    assert minisign.verify(data, parsed, [key(a)]) == key(a)
    ok = check(data, sig, [key(a)], now=NOW)
    assert (ok.version, ok.key_id, ok.policy.name) == (3, key(a).id_text, "acme")
    assert ok.policy.label == f"acme [{URL}]"


def test_tampering_fails_here_and_in_minisign(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, _ = signers
    data, sig = signed(tmp_path, a)
    tampered = data.replace(b'"ghcr"', b'"quay"')
    assert refusal(tampered, sig, [key(a)], now=NOW).kind == "bad-signature"
    # The trusted comment is signed too: raising the version in the file breaks the global signature.
    bumped = sig.replace(b"version=3", b"version=9")
    assert refusal(data, bumped, [key(a)], now=NOW).kind == "bad-signature"
    for doc, s in ((tampered, sig), (data, bumped)):
        (tmp_path / "t.toml").write_bytes(doc)
        (tmp_path / "t.toml.minisig").write_bytes(s)
        r = subprocess.run(["minisign", "-V", "-p", str(a.public), "-m", str(tmp_path / "t.toml")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0


def test_unknown_key_and_rotation(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, b = signers
    data, sig = signed(tmp_path, b)
    r = refusal(data, sig, [key(a)], now=NOW)
    assert r.kind == "unknown-key" and key(b).id_text in str(r) and key(a).id_text in str(r)
    # Key rotation: both keys trusted, either signs.
    assert check(data, sig, [key(a), key(b)], now=NOW).key_id == key(b).id_text
    data, sig = signed(tmp_path, a)
    assert check(data, sig, [key(a), key(b)], now=NOW).key_id == key(a).id_text


def test_signature_claiming_a_trusted_key_id_is_a_bad_signature(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, b = signers
    data, sig = signed(tmp_path, b)
    lines = sig.decode().split("\n")
    raw = base64.b64decode(lines[1])
    lines[1] = base64.b64encode(raw[:2] + key(a).key_id + raw[10:]).decode()
    forged = "\n".join(lines).encode()
    assert refusal(data, forged, [key(a)], now=NOW).kind == "bad-signature"


@pytest.mark.parametrize(("sig", "message"), [
    (b"", "expected 4 lines"),
    (b"untrusted comment: x\n", "expected 4 lines"),
    (b"\xff\xfe", "not UTF-8"),
    (b"x" * (minisign.MAX_SIGNATURE_BYTES + 1), "larger than"),
    ("untrusted comment: x\n" + base64.b64encode(b"EX" + bytes(72)).decode() + "\ntrusted comment: c\n"
     + base64.b64encode(bytes(64)).decode() + "\n", "algorithm"),
    ("untrusted comment: x\n" + base64.b64encode(b"ED" + bytes(72)).decode() + "\ntrusted comment: c\n"
     + base64.b64encode(bytes(63)).decode() + "\n", "global signature: 63 bytes"),
])
def test_malformed_signature_files(sig: bytes | str, message: str) -> None:
    raw = sig.encode() if isinstance(sig, str) else sig
    with pytest.raises(minisign.SignatureError) as e:
        minisign.parse_signature(raw)
    assert e.value.kind == "malformed" and message in str(e.value)


# -- the trusted comment ----------------------------------------------------------------------


def test_trusted_comment_fields() -> None:
    s = parse_trusted_comment("timestamp:1 version=42 expires=2030-06-01T12:00:00Z file:policy.toml")
    assert (s.version, s.expires) == (42, datetime(2030, 6, 1, 12, tzinfo=UTC).timestamp())
    assert parse_trusted_comment("expires=2030-06-01T12:00:00Z version=0").version == 0


@pytest.mark.parametrize(("comment", "message"), [
    ("timestamp:1700000000\tfile:policy.toml", "exactly one version=N"),  # minisign's default comment
    ("version=3", "exactly one"),
    ("expires=2030-01-01T00:00:00Z", "exactly one"),
    ("version=3 version=4 expires=2030-01-01T00:00:00Z", "exactly one"),
    ("version=-3 expires=2030-01-01T00:00:00Z", "'version=-3' not understood"),
    ("version=3 expires=2030-01-01", "'expires=2030-01-01' not understood"),
    ("version=3 expires=2030-02-30T00:00:00Z", "not a valid time"),
    ("version=99999999999999999999 expires=2030-01-01T00:00:00Z", "not understood"),
    ("version=9999999999999999999 expires=2030-01-01T00:00:00Z", "larger than"),
])
def test_bad_trusted_comments(comment: str, message: str) -> None:
    with pytest.raises(Refusal) as e:
        parse_trusted_comment(comment)
    assert e.value.kind == "malformed" and message in str(e.value)


# -- what accept refuses ----------------------------------------------------------------------


def test_rollback_and_version_reuse(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, _ = signers
    data, sig = signed(tmp_path, a, comment=f"version=3 expires={FUTURE}")
    first = check(data, sig, [key(a)], now=NOW)
    r = refusal(data, sig, [key(a)], highest=4, now=NOW)
    assert r.kind == "rollback" and "version 3 is lower than version 4" in str(r)
    # The same version again is fine for the same document, refused for another.
    assert check(data, sig, [key(a)], highest=3, highest_sha256=first.sha256, now=NOW).version == 3
    other, other_sig = signed(tmp_path, a, text=POLICY + "# changed\n", comment=f"version=3 expires={FUTURE}")
    r = refusal(other, other_sig, [key(a)], highest=3, highest_sha256=first.sha256, now=NOW)
    assert r.kind == "rollback" and "needs a higher version" in str(r)
    assert check(other, other_sig, [key(a)], highest=2, highest_sha256=first.sha256, now=NOW).version == 3


def test_expiry(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, _ = signers
    data, sig = signed(tmp_path, a, comment="version=5 expires=2027-01-15T08:00:00Z")  # NOW is 08:00:00
    r = refusal(data, sig, [key(a)], now=NOW)
    assert r.kind == "expired" and "expired at 2027-01-15T08:00:00Z" in str(r)
    assert check(data, sig, [key(a)], now=NOW - 1).version == 5
    # The copy kept on disk is checked without a clock: expired, but still the organisation's last word.
    kept = check(data, sig, [key(a)])
    assert kept.expired(NOW) and not kept.expired(NOW - 1)


def test_invalid_policy_is_refused_with_its_problems(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, _ = signers
    data, sig = signed(tmp_path, a, text='allow = [\n  "dockerhub",\n  "githb",\n]\nmode = "audit"\n')
    r = refusal(data, sig, [key(a)], now=NOW)
    assert r.kind == "invalid"
    assert f"{URL}:3:3: allow: unknown registry id 'githb'" in str(r)
    assert f"{URL}:5:1: mode = 'audit'" in str(r)
    data, sig = signed(tmp_path, a, text="allow = [")
    assert refusal(data, sig, [key(a)], now=NOW).kind == "invalid"


def test_signature_is_checked_before_anything_else(signers: tuple[Signer, Signer], tmp_path: Path) -> None:
    a, b = signers
    # An expired, rolled-back, invalid document from an unknown key is refused for its key.
    data, sig = signed(tmp_path, b, text="allow = [", comment="version=1 expires=2000-01-01T00:00:00Z")
    assert refusal(data, sig, [key(a)], highest=9, now=NOW).kind == "unknown-key"
    big = b"#" * (MAX_DOCUMENT_BYTES + 1)
    assert refusal(big, sig, [key(a)], now=NOW).kind == "too-large"
