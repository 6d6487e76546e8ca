"""Prometheus metrics without root: names and labels after the conventions, the textfile written
atomically and readable, the endpoint address syntax, and the example alert rules (docs/alerts.yml)
checked and exercised by promtool (Debian package `prometheus`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netguard.daemon.metrics import (
    OTHER,
    Sample,
    parse_address,
    registry_for,
    registry_label,
    write_textfile,
)
from netguard.daemon.policyfiles import load_catalog

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "alerts.yml"
SOURCES = {"sni", "quic-sni", "http-host", "http-connect", "socks4", "socks5", "tunnel-sni", "dns-answer", "dns-table",
           "address", "none"}
promtool = pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                              reason="promtool missing (Debian package prometheus, scripts/bootstrap --test)")


def sample(**kw: object) -> Sample:
    base: dict[str, object] = dict(
        version="0.1.0", backend="iptables-nft", started=1000.0, packets=42, flows={"allow": 7, "block": 3},
        dns_answers={"allow": 5, "block": 1}, dns_rewritten=1,
        blocks={("ghcr", "sni"): 2, ("ghcr", "dns-answer"): 1, (OTHER, "none"): 1}, cut=0, fail_verdicts=1,
        limits={"bytes": 1}, log_failures=0, rules_ok=True, rules_restored=2, rules_restore_failures=0,
        rule_checks=5, queue_dropped=0, user_dropped=3, policy_name="acme", policy_version="",
        policy_sha256="ab" * 32, policy_loaded=1000.0, reloads={"ok": 1}, names_learned=4, undecided_flows=0)
    base.update(kw)
    return Sample(**base)  # type: ignore[arg-type]


def exposition(s: Sample) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry_for(lambda: s)).decode()


def test_names_and_labels_follow_the_conventions() -> None:
    text = exposition(sample())
    families = list(text_string_to_metric_families(text))
    assert families and all(re.fullmatch(r"netguard_[a-z_]+", f.name) for f in families)
    for f in families:
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            assert not s.name.endswith(("_ms", "_milliseconds", "_bytes_total_bytes"))
            for label, value in s.labels.items():
                if label == "registry":
                    assert value in load_catalog().registries or value == OTHER
                elif label == "source":
                    assert value in SOURCES
                elif label == "verdict":
                    assert value in ("allow", "block")
    assert 'netguard_blocks_total{registry="ghcr",source="sni"} 2.0' in text
    assert 'netguard_flows_total{verdict="block"} 3.0' in text
    assert 'netguard_dns_answers_total{verdict="allow"} 5.0' in text
    assert 'netguard_queue_dropped_total{reason="socket"} 3.0' in text
    assert 'netguard_limits_hit_total{kind="bytes"} 1.0' in text
    assert f'netguard_policy_info{{name="acme",sha256="{"ab" * 32}",version=""}} 1.0' in text
    assert "netguard_rules_restored_total 2.0" in text and "netguard_rules_ok 1.0" in text
    assert re.search(r'netguard_build_info\{python="[0-9.]+",version="0.1.0"\} 1.0', text)
    assert "netguard_policy_loaded_timestamp_seconds 1000.0" in text
    assert "netguard_followed_flows 0.0" in text
    assert "netguard_followed_flows 3.0" in exposition(sample(followed_flows=3))
    assert "netguard_unconfirmed_flows 2.0" in exposition(sample(unconfirmed_flows=2))
    # An unbound queue: no drop counters at all (not zeros that would hide a reset), and a 0 gauge.
    unbound = exposition(sample(queue_dropped=None, user_dropped=None))
    assert "netguard_queue_dropped_total{" not in unbound and "netguard_queue_bound 0.0" in unbound


def test_registry_label_is_bounded() -> None:
    catalog = frozenset(load_catalog().registries)
    assert registry_label("ghcr", catalog) == "ghcr"
    assert registry_label("registry.corp.example", catalog) == OTHER  # never a raw host name
    assert registry_label(None, catalog) == OTHER


@pytest.mark.parametrize("text, expected", [
    ("9151", ("127.0.0.1", 9151)), ("0.0.0.0:9151", ("0.0.0.0", 9151)), ("[::1]:80", ("::1", 80)),
    (":9151", ("127.0.0.1", 9151)), ("localhost:1", ("localhost", 1)),
])
def test_metrics_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "x", "70000", "::1:80", "1.2.3.4:0", "host:port"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_textfile_is_replaced_whole_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "netguard.prom"
    target.write_text("old\n")
    old_umask = os.umask(0o077)  # the unit's UMask
    try:
        registry = registry_for(lambda: sample(packets=1))
        seen: list[str] = []
        stop = threading.Event()

        def reader() -> None:  # node_exporter's view while the daemon rewrites the file
            while not stop.is_set():
                seen.append(target.read_text())

        t = threading.Thread(target=reader)
        t.start()
        for _ in range(50):
            write_textfile(target, registry)
        stop.set()
        t.join()
    finally:
        os.umask(old_umask)
    final = target.read_text()
    assert "netguard_packets_total 1.0" in final
    assert all(text in ("old\n", final) for text in seen), "a reader saw a half-written file"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["netguard.prom"]  # no temp file left
    with pytest.raises(OSError):
        write_textfile(tmp_path / "missing-dir" / "netguard.prom", registry)


@promtool
def test_alert_rules_are_valid() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout


ALERT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # Machine a goes wrong in every way at minute 2; machine b stays healthy.
  - interval: 1m
    input_series:
      - series: 'up{{job="netguard", instance="a"}}'
        values: '1 1 0 0 0 0 0 0 0 0'
      - series: 'up{{job="netguard", instance="b"}}'
        values: '1x10'
      - series: 'node_textfile_mtime_seconds{{job="node", instance="a", file="/var/lib/node-exporter/netguard.prom"}}'
        values: '0x10'
      - series: 'node_textfile_mtime_seconds{{job="node", instance="b", file="/var/lib/node-exporter/netguard.prom"}}'
        values: '0+60x10'
      - series: 'netguard_rules_restored_total{{job="netguard", instance="a"}}'
        values: '0 0 1 1 1 1 1 1 1 1'
      - series: 'netguard_rules_restored_total{{job="netguard", instance="b"}}'
        values: '0x10'
      - series: 'netguard_rules_ok{{job="netguard", instance="a"}}'
        values: '1 1 0 0 0 0 0 0 0 0'
      - series: 'netguard_rules_ok{{job="netguard", instance="b"}}'
        values: '1x10'
      - series: 'netguard_fail_verdicts_total{{job="netguard", instance="a"}}'
        values: '0 0 20 40 60 80 100 120 140 160'
      - series: 'netguard_fail_verdicts_total{{job="netguard", instance="b"}}'
        values: '0+1x10'
      - series: 'netguard_queue_dropped_total{{job="netguard", instance="a", reason="queue_full"}}'
        values: '0 0 5 10 15 20 25 30 35 40'
      - series: 'netguard_queue_dropped_total{{job="netguard", instance="b", reason="queue_full"}}'
        values: '0x10'
      - series: 'netguard_policy_last_reload_ok{{job="netguard", instance="a"}}'
        values: '1 0 0 0 0 0 0 0 0 0'
      - series: 'netguard_policy_last_reload_ok{{job="netguard", instance="b"}}'
        values: '1x10'
      - series: 'netguard_policy_loaded_timestamp_seconds{{job="netguard", instance="a"}}'
        values: '-2600000x10'
      - series: 'netguard_policy_loaded_timestamp_seconds{{job="netguard", instance="b"}}'
        values: '0x10'
    promql_expr_test:
      - expr: ALERTS{{alertstate="firing"}}
        eval_time: 8m
        exp_samples:
{firing}
      - expr: ALERTS{{instance="b"}}
        eval_time: 8m
        exp_samples: []
  - interval: 1m
    input_series:
      - series: 'netguard_policy_info{{job="netguard", instance="a", name="p", version="", sha256="aa"}}'
        values: '1x90'
      - series: 'netguard_policy_info{{job="netguard", instance="b", name="p", version="", sha256="bb"}}'
        values: '1x90'
    promql_expr_test:
      - expr: ALERTS{{alertname="NetguardPolicyDiffers", alertstate="firing"}}
        eval_time: 80m
        exp_samples:
          - labels: 'ALERTS{{alertname="NetguardPolicyDiffers", alertstate="firing", severity="info"}}'
            value: 1
      - expr: ALERTS{{alertname="NetguardPolicyDiffers"}}
        eval_time: 50m
        exp_samples:
          - labels: 'ALERTS{{alertname="NetguardPolicyDiffers", alertstate="pending", severity="info"}}'
            value: 1
"""
FIRING = [
    ("NetguardDaemonAbsent", 'instance="a", job="netguard", severity="critical"'),
    ("NetguardTextfileStale", 'file="/var/lib/node-exporter/netguard.prom", instance="a", job="node", '
                              'severity="critical"'),
    ("NetguardRulesRestored", 'instance="a", job="netguard", severity="warning"'),
    ("NetguardRulesMissing", 'instance="a", job="netguard", severity="critical"'),
    ("NetguardFailVerdicts", 'instance="a", job="netguard", severity="warning"'),
    ("NetguardQueueDrops", 'instance="a", job="netguard", reason="queue_full", severity="warning"'),
    ("NetguardPolicyReloadRejected", 'instance="a", job="netguard", severity="warning"'),
    ("NetguardPolicyStale", 'instance="a", job="netguard", severity="info"'),
]


@promtool
def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    firing = "\n".join(f"          - labels: 'ALERTS{{alertname=\"{name}\", alertstate=\"firing\", {labels}}}'\n"
                       f"            value: 1" for name, labels in FIRING)
    test = tmp_path / "alerts_test.yml"
    test.write_text(ALERT_TEST.format(rules=ALERTS, firing=firing))
    r = subprocess.run(["promtool", "test", "rules", str(test)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every alert in the file is exercised here.
    names = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    assert names == {n for n, _ in FIRING} | {"NetguardPolicyDiffers"}
