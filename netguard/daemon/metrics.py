"""Prometheus metrics: an opt-in HTTP endpoint, or a file for node_exporter's textfile collector.

Strategy: nothing here runs per packet. The engine already counts (engine.Stats) and the daemon
counts blocks where it logs them; a scrape (or a textfile write) asks the daemon for a `Sample`
and turns it into metric families with prometheus-client's custom-collector API, so the figures
are read when someone looks, not pushed on every verdict. The HTTP endpoint is prometheus-client's
own server on a thread of its own (it reads a few integers and copies small dicts, which the GIL
keeps whole); the textfile is written from the daemon's loop every TEXTFILE_INTERVAL, as a temp
file renamed over the target (readable by node_exporter's user), so a scrape never sees half a file.

Names follow Prometheus conventions: `netguard_` prefix, counters end in `_total`, times in
seconds, labels only from bounded sets (registry: a catalog id or `other`; source: where the
name came from; verdict: allow or block; kind: an engine limit).
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

# Seconds between textfile writes: node_exporter is scraped every 15-60 s; a write costs ~1 ms.
TEXTFILE_INTERVAL = 15.0
TEXTFILE_MODE = 0o644  # node_exporter runs as its own user
DEFAULT_ADDRESS = "127.0.0.1"  # `--metrics PORT`: this machine only, unless an address is given
OTHER = "other"  # the registry label of a block outside the catalog (or without a host)


@dataclass(frozen=True)
class Sample:
    """What the daemon reports at one scrape."""

    version: str
    backend: str
    started: float
    packets: int
    flows: Mapping[str, int]  # verdict -> flows decided
    dns_answers: Mapping[str, int]  # verdict -> DNS answers judged
    dns_rewritten: int
    blocks: Mapping[tuple[str, str], int]  # (registry label, source) -> blocks logged
    cut: int
    fail_verdicts: int
    limits: Mapping[str, int]
    log_failures: int
    rules_ok: bool
    rules_restored: int
    rules_restore_failures: int
    rule_checks: int
    queue_dropped: int | None  # None: the queue is not in /proc/net/netfilter/nfnetlink_queue
    user_dropped: int | None
    policy_name: str
    policy_version: str
    policy_sha256: str
    policy_loaded: float
    reloads: Mapping[str, int] = field(default_factory=dict)  # result (ok, rejected) -> reloads
    last_reload_ok: bool = True
    names_learned: int = 0
    undecided_flows: int = 0
    followed_flows: int = 0
    unconfirmed_flows: int = 0


def registry_label(registry: str | None, catalog: frozenset[str]) -> str:
    """A block's registry as a bounded label: a catalog id, else `other` (never a raw host name)."""
    return registry if registry is not None and registry in catalog else OTHER


class NetguardCollector(Collector):
    """Metric families from the daemon's Sample, built at each collect()."""

    def __init__(self, sample: Callable[[], Sample]) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        s = self._sample()
        yield InfoMetricFamily("netguard_build", "netguard's version and Python.",
                               value={"version": s.version, "python": platform.python_version()})
        yield GaugeMetricFamily("netguard_start_time_seconds", "When the daemon started (Unix time).",
                                value=s.started)
        yield InfoMetricFamily("netguard_policy", "The policy in force.",
                               value={"name": s.policy_name, "version": s.policy_version, "sha256": s.policy_sha256})
        yield GaugeMetricFamily("netguard_policy_loaded_timestamp_seconds",
                                "When the policy in force was loaded (Unix time).", value=s.policy_loaded)
        yield GaugeMetricFamily("netguard_policy_last_reload_ok",
                                "1 unless the last reload was rejected (then an older policy is in force).",
                                value=1 if s.last_reload_ok else 0)
        reloads = CounterMetricFamily("netguard_policy_reloads", "Policy reloads by result.", labels=["result"])
        for result in ("ok", "rejected"):
            reloads.add_metric([result], s.reloads.get(result, 0))
        yield reloads
        yield CounterMetricFamily("netguard_packets", "Packets the daemon judged from the queue.", value=s.packets)
        flows = CounterMetricFamily("netguard_flows", "Connections decided, by verdict.", labels=["verdict"])
        for verdict in ("allow", "block"):
            flows.add_metric([verdict], s.flows.get(verdict, 0))
        yield flows
        dns = CounterMetricFamily("netguard_dns_answers", "DNS answers judged, by verdict.", labels=["verdict"])
        for verdict in ("allow", "block"):
            dns.add_metric([verdict], s.dns_answers.get(verdict, 0))
        yield dns
        yield CounterMetricFamily("netguard_dns_answers_rewritten", "Blocked DNS answers replaced by NXDOMAIN.",
                                  value=s.dns_rewritten)
        blocks = CounterMetricFamily("netguard_blocks", "Blocks logged, by registry (catalog id or other) and by "
                                     "where the name came from.", labels=["registry", "source"])
        for (registry, source), n in sorted(s.blocks.items()):
            blocks.add_metric([registry, source], n)
        yield blocks
        yield CounterMetricFamily("netguard_flows_cut", "Open connections cut by a policy reload.", value=s.cut)
        yield CounterMetricFamily("netguard_fail_verdicts", "Verdicts given by fail_mode (unreadable input, limits).",
                                  value=s.fail_verdicts)
        limits = CounterMetricFamily("netguard_limits_hit", "Internal limits reached, by kind.", labels=["kind"])
        for kind, n in sorted(s.limits.items()):
            limits.add_metric([kind], n)
        yield limits
        yield CounterMetricFamily("netguard_log_write_failures", "Block log lines that could not be written.",
                                  value=s.log_failures)
        yield GaugeMetricFamily("netguard_rules_ok", "1 when netguard's firewall rules were as installed at the last "
                                "check, 0 while they are missing and could not be restored.",
                                value=1 if s.rules_ok else 0)
        yield CounterMetricFamily("netguard_rules_restored", "Times the firewall rules were found missing or altered "
                                  "and restored.", value=s.rules_restored)
        yield CounterMetricFamily("netguard_rules_restore_failures", "Failed attempts to restore the firewall rules.",
                                  value=s.rules_restore_failures)
        yield CounterMetricFamily("netguard_rule_checks", "Full checks of the installed rules.", value=s.rule_checks)
        drops = CounterMetricFamily("netguard_queue_dropped", "Packets the kernel dropped at netguard's queue: "
                                    "queue_full (queue_dropped), socket (user_dropped: the netlink buffer).",
                                    labels=["reason"])
        if s.queue_dropped is not None and s.user_dropped is not None:
            drops.add_metric(["queue_full"], s.queue_dropped)
            drops.add_metric(["socket"], s.user_dropped)
        yield drops
        yield GaugeMetricFamily("netguard_queue_bound", "1 when the daemon's queue is bound in the kernel.",
                                value=0 if s.queue_dropped is None else 1)
        yield GaugeMetricFamily("netguard_names_learned", "Names held from DNS answers.", value=s.names_learned)
        yield GaugeMetricFamily("netguard_undecided_flows", "Connections waiting for a name.", value=s.undecided_flows)
        yield GaugeMetricFamily("netguard_followed_flows", "Connections read request by request (plain HTTP), or "
                                "again after a HelloRetryRequest.", value=s.followed_flows)
        yield GaugeMetricFamily("netguard_unconfirmed_flows", "TLS connections allowed by their ClientHello whose "
                                "judged bytes are kept until the kernel sees the server's first TLS record (or "
                                "they leave the table).", value=s.unconfirmed_flows)


def registry_for(sample: Callable[[], Sample]) -> CollectorRegistry:
    """A registry with netguard's collector only (no process or platform collectors: in a textfile
    their names would read as node_exporter's own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetguardCollector(sample))
    return registry


def parse_address(text: str) -> tuple[str, int]:
    """`PORT`, `ADDRESS:PORT` or `[IPv6]:PORT` -> (address, port); ValueError if it is none of these."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_ADDRESS, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9151")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host or DEFAULT_ADDRESS, int(port)


class Server:
    """prometheus-client's HTTP server on its own thread."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(address[1], address[0], registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """The exposition into `path`, atomically: a temp file in the same directory renamed over it
    (node_exporter reads only *.prom files, so the temp name is never read half written)."""
    data = generate_latest(registry)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, TEXTFILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), TEXTFILE_MODE)  # the umask (0077 under the unit) must not hide it
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
