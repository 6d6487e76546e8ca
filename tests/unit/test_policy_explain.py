"""`policy explain`: the entries listed agree with the table's own lookup, shadowed entries and
left-out catalog hosts are shown, and the command's exit status matches `check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from netguard.daemon.policyfiles import load_catalog, load_policy
from netguard.policy import Pattern
from netguard.policy.explain import candidates, explain
from netguard.policy.table import PatternTable

NETGUARD = [sys.executable, "-m", "netguard.cli"]
LABELS = st.sampled_from(["a", "b", "io", "corp"])
HOSTS = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
PORTS = st.sampled_from([None, 443, 5000])


@given(st.lists(st.tuples(HOSTS, st.booleans(), PORTS), max_size=12), HOSTS, PORTS)
def test_candidates_find_what_lookup_finds_first(entries: list[tuple[str, bool, int | None]], host: str,
                                                 port: int | None) -> None:
    table: PatternTable[str] = PatternTable()
    for h, wildcard, p in entries:
        table.put(Pattern(h, wildcard, p), str(Pattern(h, wildcard, p)))
    found = [str(c) for c in candidates(host, port) if table.get(c) is not None]
    hit = table.lookup(host, port)
    assert (found[0] if found else None) == (None if hit is None else hit[1])
    assert len(found) == len(set(found))


def test_shadowed_entries_and_the_one_that_decides(tmp_path: Path) -> None:
    f = tmp_path / "corp.toml"
    f.write_text('allow = ["dockerhub", "registry.corp.example:5000"]\nblock = ["*.corp.example"]\n')
    e = explain("Registry.Corp.Example.", 5000, load_policy(f))
    assert [(str(m.pattern), m.rule.allowed, m.text) for m in e.matches] == [
        ("registry.corp.example:5000", True, "allow = registry.corp.example:5000"),
        ("*.corp.example", False, "block = *.corp.example"),
    ]
    assert e.host == "registry.corp.example" and e.decision.allowed
    assert not explain("registry.corp.example", 443, load_policy(f)).decision.allowed


def test_left_out_hosts_carry_the_catalogs_reason() -> None:
    policy = load_policy(None)
    e = explain("production.cloudflare.docker.com", None, policy)
    assert [(x.registry, x.written) for x in e.left_out] == [("dockerhub", "production.cloudflare.docker.com")]
    assert e.matches == () and e.decision.rule == "unknown_hosts = allow"
    ecr = explain("prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com", None, policy)
    assert "ecr" in {x.registry for x in ecr.left_out}
    assert explain("notprod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com.evil", None,
                   policy).left_out == ()
    # "*." stands for one or more labels, as in policy patterns, never for a bare domain.
    assert explain("s3.amazonaws.com", None, policy).left_out == ()
    assert explain("x.y.s3.amazonaws.com", None, policy).left_out != ()


def test_every_left_out_key_matches_a_host_written_like_it() -> None:
    for reg in load_catalog().registries.values():
        for written in reg.left_out:
            host = written.replace("*.", "any.").replace("*", "x").replace("REGION", "us-east-1")
            assert any(x.written == written for x in explain(host, None, load_policy(None)).left_out), written


def test_command(tmp_path: Path) -> None:
    r = subprocess.run([*NETGUARD, "policy", "explain", "cdn01.quay.io", "GHCR.IO.:443"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "*.quay.io" in r.stdout and "<- decides" in r.stdout and "written 'GHCR.IO.'" in r.stdout
    r = subprocess.run([*NETGUARD, "policy", "explain", "--json", "production.cloudflare.docker.com"],
                       capture_output=True, text=True, timeout=60)
    row = json.loads(r.stdout)
    assert r.returncode == 0 and row["decision"]["allowed"] and row["left_out"][0]["registry"] == "dockerhub"
    r = subprocess.run([*NETGUARD, "policy", "explain", "10.0.0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "IP address" in r.stderr
