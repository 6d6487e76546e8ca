"""The organisation policy's local parts, without root or network: the source configuration, the
last good document on disk, the machine id of the check-in (against systemd-id128) and its headers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netguard.daemon.policyfiles import load_catalog
from netguard.fleet import checkin, state
from netguard.fleet.client import effective
from netguard.fleet.document import accept
from netguard.fleet.minisign import parse_public_key
from netguard.fleet.source import DEFAULT_INTERVAL, SourceError, check_url, load_source, parse_config
from netguard.lab.policyserver import Signer
from netguard.policy import decide, parse_policy

URL = "https://config.corp.example:8443/netguard/policy.toml"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/bootstrap --test installs it")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    need("minisign")
    return Signer(tmp_path_factory.mktemp("key"))


# -- source -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "why"), [
    ("http://config.corp.example/p.toml", "must be https"),
    ("https://user:pw@config.corp.example/p.toml", "no credentials"),
    ("https://config.corp.example/p.toml?x=1", "no query"),
    ("https://config.corp.example/", "name the policy file"),
    ("https://10.0.0.1/p.toml", "a host name is needed"),
    ("https://config.corp.example:99999/p.toml", "out of range"),
])
def test_bad_policy_urls(url: str, why: str) -> None:
    problem = check_url(url)
    assert problem is not None and why in problem


def test_source_from_file_and_options(signer: Signer, tmp_path: Path) -> None:
    config = tmp_path / "source.toml"
    config.write_text(f'policy_url = "{URL}"\ntrusted_keys = ["{signer.public}"]\nstate_dir = "{tmp_path}/st"\n')
    s = load_source(config)
    assert s is not None
    assert (s.url, s.state_dir, s.interval, s.ca_file) == (URL, tmp_path / "st", DEFAULT_INTERVAL, None)
    assert s.keys == (parse_public_key(signer.public.read_text()),)
    assert (s.host, s.port, s.signature_url) == ("config.corp.example", 8443, URL + ".minisig")
    # Options win, key by key; a key may be its base64 line.
    t = load_source(config, url="https://Other.Example/p.toml", keys=[signer.key_line], interval=2)
    assert t is not None and (t.url, t.host, t.port, t.interval, t.keys) == (
        "https://Other.Example/p.toml", "other.example", 443, 2.0, s.keys)
    assert load_source(tmp_path / "missing.toml") is None
    assert load_source(None) is None


def test_source_problems_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as e:
        parse_config('policy_url = 3\ntrusted_key = ["x"]\npoll_interval = "often"\n', "s.toml")
    text = str(e.value)
    assert "unknown key 'trusted_key'" in text and "policy_url: expected" in text and "poll_interval:" in text
    with pytest.raises(SourceError) as e:
        load_source(None, url="http://x.example/p", keys=["RWQnot-a-key", str(tmp_path / "none.pub")],
                    interval=0.1, ca=str(tmp_path / "none.pem"))
    text = str(e.value)
    assert all(w in text for w in ("must be https", "RWQnot-a-key", "none.pub", "poll interval 0.1", "none.pem"))
    with pytest.raises(SourceError, match="at least one trusted key"):
        load_source(None, url=URL)
    with pytest.raises(SourceError, match="without a policy URL"):
        load_source(None, keys=["RWQx"])


# -- the kept state ---------------------------------------------------------------------------


def accepted(signer: Signer, tmp: Path, text: str, version: int, expires: str = "2099-01-01T00:00:00Z"):  # type: ignore[no-untyped-def]
    doc = tmp / "p.toml"
    doc.write_text(text)
    sig = signer.sign(doc, f"version={version} expires={expires}")
    return accept(doc.read_bytes(), sig.read_bytes(), [parse_public_key(signer.key_line)], load_catalog(), URL)


def test_state_round_trip_and_refusals(signer: Signer, tmp_path: Path) -> None:
    keys = [parse_public_key(signer.key_line)]
    st = tmp_path / "state"
    assert state.load(st, URL, keys, load_catalog()) == (None, None)
    a = accepted(signer, tmp_path, 'name = "acme"\nallow = ["ghcr"]\n', 7, "2001-01-01T00:00:00Z")
    state.save(st, URL, a, '"doc-etag"', '"sig-etag"')
    kept, why = state.load(st, URL, keys, load_catalog())
    assert why is None and kept is not None
    assert (kept.accepted.version, kept.accepted.sha256, kept.doc_etag, kept.sig_etag) == (
        7, a.sha256, '"doc-etag"', '"sig-etag"')
    assert kept.accepted.expired(2e9)  # an expired copy is still loaded: the organisation's last word
    assert kept.accepted.policy.label == f"acme [{URL}]"
    record = json.loads((st / state.FILE).read_text())
    assert record["document"].startswith('name = "acme"') and record["version"] == 7

    # Another URL's state is not used; a key no longer trusted does not vouch for it.
    assert "not of" in (state.load(st, "https://other.example/p.toml", keys, load_catalog())[1] or "")
    other = Signer(tmp_path / "other")
    assert "unknown-key" in (state.load(st, URL, [parse_public_key(other.key_line)], load_catalog())[1] or "")
    # The recorded version is the floor: a kept document older than it is a rollback.
    record["version"] = 8
    (st / state.FILE).write_text(json.dumps(record))
    assert "rollback" in (state.load(st, URL, keys, load_catalog())[1] or "")
    (st / state.FILE).write_text("{not json")
    assert "damaged" in (state.load(st, URL, keys, load_catalog())[1] or "")


def test_effective_policy(signer: Signer, tmp_path: Path) -> None:
    s = load_source(None, url=URL, keys=[signer.key_line], state_dir=str(tmp_path))
    assert s is not None
    local = parse_policy('block = ["registry-1.docker.io"]\nunknown_hosts = "deny"\n', "local.toml", load_catalog())
    # No organisation policy yet: the local file in full (its unknown_hosts too), the server pinned.
    p = effective(s, None, local)
    assert p.unknown_hosts == "deny" and decide("config.corp.example", 8443, p).allowed
    p = effective(s, None, None)
    assert p.label == "default policy [embedded]" and decide("config.corp.example", None, p).allowed
    a = accepted(signer, tmp_path, 'name = "acme"\nallow = ["dockerhub", "ghcr"]\nunknown_hosts = "deny"\n', 1)
    p = effective(s, a, local)
    assert p.label == f"acme [{URL}]"
    assert decide("ghcr.io", 443, p).allowed and not decide("registry-1.docker.io", 443, p).allowed
    assert decide("config.corp.example", 8443, p).allowed and not decide("evil.example", 443, p).allowed


# -- check-in ---------------------------------------------------------------------------------


def test_machine_id_is_systemds_app_specific_id(tmp_path: Path) -> None:
    need("systemd-id128")
    raw = checkin.parse_machine_id(Path("/etc/machine-id").read_text())
    if raw is None:
        pytest.skip("this machine has no /etc/machine-id")
    r = subprocess.run(["systemd-id128", "-a", checkin.APP_ID.hex(), "machine-id"], capture_output=True, text=True,
                       timeout=30, check=True)
    assert checkin.machine(tmp_path) == checkin.app_specific_id(raw) == r.stdout.strip()
    assert raw.hex() not in checkin.machine(tmp_path)


def test_machine_id_values() -> None:
    assert checkin.parse_machine_id("uninitialized\n") is None
    assert checkin.parse_machine_id("0" * 32) is None
    assert checkin.parse_machine_id("zz" * 16) is None
    a = checkin.app_specific_id(bytes(range(16)))
    assert len(a) == 32 and a[12] == "4" and a[16] in "89ab"  # a v4 UUID, as systemd makes it
    assert a != checkin.app_specific_id(bytes(range(1, 17)))


def test_checkin_headers() -> None:
    h = checkin.headers("ab" * 16, "0.1.0", 7, "f" * 64, "monitor", 1_800_000_000.0)
    assert h == {"Netguard-Machine": "ab" * 16, "Netguard-Version": "0.1.0", "Netguard-Policy-Version": "7",
                 "Netguard-Policy-Sha256": "f" * 64, "Netguard-State": "monitor",
                 "Netguard-Last-Block": "2027-01-15T08:00:00Z"}
    h = checkin.headers("ab" * 16, "0.1.0", None, None, "degraded", None)
    assert (h["Netguard-Policy-Version"], h["Netguard-Policy-Sha256"], h["Netguard-Last-Block"]) == ("none",) * 3


def test_the_documented_log_format_is_the_one_the_tests_run() -> None:
    """docs/organisation.md gives admins the nginx log_format that the integration tests run in real
    nginx and scripts/compliance-report reads; it names every check-in header."""
    from netguard.lab.policyserver import CHECKIN_LOG_FORMAT

    doc = (Path(__file__).resolve().parents[2] / "docs" / "organisation.md").read_text()
    assert CHECKIN_LOG_FORMAT in doc
    for header in checkin.headers("m", "v", 1, "s", "enforcing", None):
        assert f"`{header}`" in doc
        assert f"$http_{header.lower().replace('-', '_')}" in CHECKIN_LOG_FORMAT
