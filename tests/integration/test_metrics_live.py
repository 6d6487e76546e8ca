"""Metrics from a real daemon: a real Prometheus server (Debian package `prometheus`) in the lab's
client namespace scrapes `netguard run --metrics`, and a query through Prometheus's HTTP API sees
a block counted, by registry and source; the textfile mode writes a file node_exporter can read.

Strategy: Prometheus runs in the same namespace as the daemon (its scrapes go to 127.0.0.1 there,
never to this machine's network), with a one-second scrape interval and its storage in the test's
temporary directory; it is stopped by the PID this test started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Runner, curl

from netguard.lab import lab as lab_mod

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("prometheus") is None and not os.environ.get("CI"),
                       reason="prometheus missing (Debian package prometheus, scripts/bootstrap --test)"),
]

BLOCKED = "ghcr.io"
METRICS_PORT = 9151
PROMETHEUS = "127.0.0.1:9090"
SCRAPE = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: netguard
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""
READY_TIMEOUT = 30.0  # seconds for Prometheus to open its storage and answer
SEEN_TIMEOUT = 20.0  # seconds for a block to show in a query (scrape every 1 s)


@pytest.fixture
def prometheus(lab: lab_mod.Lab, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = tmp_path / "prometheus.yml"
    config.write_text(SCRAPE.format(port=METRICS_PORT))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = lab.client_popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address={PROMETHEUS}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while lab.client_run(["curl", "-sf", "-m", "2", f"http://{PROMETHEUS}/-/ready"]).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield proc
    finally:
        lab_mod.stop(proc, signal.SIGTERM, timeout=20)
        log.close()


def query(lab: lab_mod.Lab, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API; the result vector."""
    url = f"http://{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(promql)}"
    r = lab.client_run(["curl", "-sf", "-m", "5", url])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def value(lab: lab_mod.Lab, promql: str) -> float | None:
    result = query(lab, promql)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_daemon_and_counts_a_block(lab: lab_mod.Lab, tmp_path: Path,
                                                         prometheus: subprocess.Popen[bytes]) -> None:
    runner = Runner(lab, tmp_path, name="metrics", args=("--metrics", str(METRICS_PORT))).start()
    try:
        runner.wait_for(f"metrics at http://127.0.0.1:{METRICS_PORT}/metrics")
        deadline = time.monotonic() + SEEN_TIMEOUT
        while value(lab, 'up{job="netguard"}') != 1.0:
            assert time.monotonic() < deadline, "Prometheus never scraped netguard"
            time.sleep(0.5)
        blocks = 'netguard_blocks_total{job="netguard", registry="ghcr", source="sni"}'
        assert value(lab, blocks) in (None, 0.0)
        assert curl(lab, BLOCKED, 4, timeout=5).code != 0
        while (seen := value(lab, blocks)) != 1.0:
            assert time.monotonic() < deadline + SEEN_TIMEOUT, f"the block never showed: {seen}"
            time.sleep(0.5)
        assert value(lab, 'netguard_flows_total{verdict="block"}') == 1.0
        info = query(lab, "netguard_policy_info")
        assert info and info[0]["metric"]["name"] == "default policy" and len(info[0]["metric"]["sha256"]) == 64
        assert value(lab, "netguard_rules_ok") == 1.0 and value(lab, "netguard_queue_bound") == 1.0
        # No label carries a host name: registries are catalog ids or "other".
        registries = {r["metric"]["registry"] for r in query(lab, "netguard_blocks_total")}
        assert registries == {"ghcr"}
    finally:
        runner.stop()


def test_textfile_for_node_exporter(lab: lab_mod.Lab, tmp_path: Path) -> None:
    textfile = tmp_path / "textfile" / "netguard.prom"
    textfile.parent.mkdir()
    runner = Runner(lab, tmp_path, name="textfile", args=("--metrics-textfile", str(textfile))).start()
    try:
        assert "netguard_rules_ok 1.0" in textfile.read_text()  # written once enforcing
        assert curl(lab, BLOCKED, 4, timeout=5).code != 0
    finally:
        assert runner.stop() == 0
    text = textfile.read_text()  # the last write, at stop
    assert 'netguard_blocks_total{registry="ghcr",source="sni"} 1.0' in text, text
    assert textfile.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textfile.parent.iterdir()] == ["netguard.prom"]
    promtool = shutil.which("promtool")
    if promtool is not None:  # the same package; it lints what node_exporter would read
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
