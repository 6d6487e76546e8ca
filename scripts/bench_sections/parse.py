"""Parser cost: µs per parse for netguard.wire, scapy and dpkt on the same inputs.

Inputs: the curl ClientHello from tests/data/corpus (517 bytes), the post-quantum ClientHello
fixture (1901 bytes, Chromium's shape), the CNAME -> CNAME -> A response from the corpus, a TCP
packet, and the RFC 9001 client Initial. Each implementation does the work needed to get the
answer netguard needs (SNI; the answer records), timed with time.perf_counter_ns over a loop;
the value is the median of the repeats, implementations interleaved so machine drift hits all
alike. Where a goal is missed, the note carries the top of a cProfile of our parser.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path

from netguard.wire import dns, http, ip, quic, tls

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GOAL_TLS_US = 3.0
GOAL_DNS_US = 10.0
GOAL_DPKT_RATIO = 20.0


def _pcap_payloads(path: Path) -> list[tuple[bytes, bytes]]:
    """(raw IP packet, transport payload) for every packet of a corpus file (Linux cooked/raw/Ethernet)."""
    import dpkt

    out = []
    with path.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        link = reader.datalink()
        for _ts, frame in reader:
            raw = frame[{1: 14, 113: 16, 276: 20}.get(link, 0) :]
            packet = ip.parse_packet(raw)
            if packet.l4 is not None:
                out.append((raw, packet.l4.payload))
    return out


def _inputs() -> dict[str, bytes]:
    corpus = DATA / "corpus"
    curl = _pcap_payloads(corpus / "hello-curl-nogso.pcap")
    hello_raw, hello = next((raw, p) for raw, p in curl if p[:1] == b"\x16" and p[5:6] == b"\x01")
    dns_response = [p for _raw, p in _pcap_payloads(corpus / "dns-cname-udp.pcap")][1]
    return {
        "hello517": hello,
        "hello_pq": bytes.fromhex((DATA / "clienthello-pq-1901.hex").read_text().replace("\n", "")),
        "dns": dns_response,
        "tcp_packet": hello_raw,
        "quic": bytes.fromhex((DATA / "rfc9001" / "a2-client-initial-protected.hex").read_text().replace("\n", "")),
        "http": b"GET /v2/ HTTP/1.1\r\nHost: registry.example:5000\r\nUser-Agent: docker/27\r\nAccept: */*\r\n\r\n",
    }


# --- the same question asked of each implementation ---


def ours_sni(data: bytes) -> str | None:
    return tls.parse_client_hello(data).sni


def dpkt_sni(data: bytes) -> str | None:
    import dpkt

    records, _used = dpkt.ssl.tls_multi_factory(data)
    hello = dpkt.ssl.TLSHandshake(b"".join(r.data for r in records)).data
    for ext_type, body in getattr(hello, "extensions", []):
        if ext_type == 0:  # dpkt stops at the extension: read the server_name_list by hand
            (name_len,) = struct.unpack_from("!H", body, 3)
            return bytes(body[5 : 5 + name_len]).decode()
    return None


def scapy_sni(data: bytes) -> str | None:
    from scapy.layers.tls.record import TLS

    for ext in TLS(data).msg[0].ext or []:  # type: ignore[no-untyped-call]
        if ext.type == 0:
            return bytes(ext.servernames[0].servername).decode()
    return None


_TAG_LEN = struct.Struct("!HH").unpack_from


def floor_sni(data: bytes) -> str | None:
    """Reference only: SNI by direct indexing, no cursor, no ALPN/versions, minimal checks. It shows
    what the cursor discipline and the full validation cost; it is not safe to use on the wire."""
    end = 9 + ((data[6] << 16) | (data[7] << 8) | data[8])
    pos = 9 + 34
    pos += 1 + data[pos]
    pos += 2 + ((data[pos] << 8) | data[pos + 1])
    pos += 1 + data[pos] + 2
    blocks = {}
    while pos < end:
        tag, length = _TAG_LEN(data, pos)
        blocks[tag] = (pos + 4, length)
        pos += 4 + length
    block = blocks.get(0)
    return bytes(data[block[0] + 5 : block[0] + block[1]]).decode() if block else None


def ours_dns(data: bytes) -> list[object]:
    return [a.data for a in dns.parse_message(data).answers]


def dpkt_dns(data: bytes) -> list[object]:
    import dpkt

    return [a.cname if a.type == 5 else a.ip if a.type in (1, 28) else None for a in dpkt.dns.DNS(data).an]


def scapy_dns(data: bytes) -> list[object]:
    from scapy.layers.dns import DNS

    return [rr.rdata for rr in DNS(data).an]


def ours_ip(data: bytes) -> object:
    return ip.parse_packet(data).l4


def dpkt_ip(data: bytes) -> object:
    import dpkt

    return (dpkt.ip6.IP6 if data[0] >> 4 == 6 else dpkt.ip.IP)(data).data


def scapy_ip(data: bytes) -> object:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    return (IPv6 if data[0] >> 4 == 6 else IP)(data).payload


def _ours_quic(data: bytes) -> object:
    initial = quic.parse_initial(data)
    message = quic.CryptoAssembler().add(initial.crypto)
    return tls.parse_handshake(message).sni if message else None


# --- measurement ---


def _measure(funcs: dict[str, Callable[[bytes], object]], data: bytes, loops: int, repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            start = time.perf_counter_ns()
            for _ in range(loops):
                func(data)
            samples[name].append((time.perf_counter_ns() - start) / loops / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def _profile_note(func: Callable[[bytes], object], data: bytes, loops: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(loops):
        func(data)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(entry[2] for entry in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:4]  # type: ignore[attr-defined]
    parts = [f"{fn} ({Path(file).name}) {tt / total:.0%}" for (file, _line, fn), (_cc, _nc, tt, _ct, _callers) in top]
    return "profile (own time): " + ", ".join(parts)


def _row(scenario: str, metric: str, value: float, unit: str, goal: str | None, ok: bool | None,
         note: str) -> dict[str, object]:
    return {"section": "parse", "scenario": scenario, "metric": metric, "value": round(value, 3), "unit": unit,
            "goal": goal, "ok": ok, "note": note}


def _compare(scenario: str, ours: Callable[[bytes], object], dpkt_f: Callable[[bytes], object],
             scapy_f: Callable[[bytes], object], data: bytes, goal_us: float | None, loops: int, repeats: int,
             ) -> list[dict[str, object]]:
    expected = ours(data)
    answers = [f(data) for f in (dpkt_f, scapy_f)] + ([floor_sni(data)] if ours is ours_sni else [])
    if expected is None or any(a is None for a in answers):
        raise RuntimeError(f"{scenario}: an implementation found nothing")
    if ours is ours_sni and any(a != expected for a in answers):
        raise RuntimeError(f"{scenario}: implementations disagree: {expected!r} vs {answers!r}")
    if isinstance(expected, list) and any(len(a) != len(expected) for a in answers):  # type: ignore[arg-type]
        raise RuntimeError(f"{scenario}: implementations found different answer counts")
    fast = _measure({"netguard": ours, "dpkt": dpkt_f}, data, loops, repeats)
    slow = _measure({"scapy": scapy_f}, data, max(1, loops // 50), repeats)
    us = fast["netguard"]
    ratio = fast["dpkt"] / us
    met = goal_us is None or us <= goal_us
    note = f"median of {repeats} x {loops:,} parses; {len(data)} bytes"
    rows = []
    if ours is ours_sni:
        floor = _measure({"floor": floor_sni}, data, loops, repeats)["floor"]
        rows.append(_row(scenario, "cursor-free SNI-only extraction µs (reference)", floor, "µs", None, None,
                         "direct indexing, no ALPN/versions, minimal checks: the cost floor without the "
                         "cursor's per-read checks; not used in netguard"))
    rows += [
        _row(scenario, "netguard µs/parse", us, "µs", f"≤ {goal_us} µs" if goal_us else None,
             met if goal_us else None, note if met else f"{note}; {_profile_note(ours, data, loops)}"),
        _row(scenario, "dpkt µs/parse", fast["dpkt"], "µs", None, None, "same input, same answer extracted"),
        _row(scenario, "scapy µs/parse", slow["scapy"], "µs", None, None,
             f"median of {repeats} x {max(1, loops // 50):,} parses"),
    ]
    if goal_us is not None:
        rows.append(_row(scenario, "dpkt time / netguard time", ratio, "x", f"≥ {GOAL_DPKT_RATIO:g}x",
                         ratio >= GOAL_DPKT_RATIO,
                         f"{GOAL_DPKT_RATIO:g}x would need ≤ {fast['dpkt'] / GOAL_DPKT_RATIO:.2f} µs from netguard "
                         f"(dpkt {fast['dpkt']:.1f} µs); scapy / netguard: {slow['scapy'] / us:,.0f}x"))
    return rows


def run(quick: bool) -> list[dict[str, object]]:
    """Measure every scenario; `quick` uses fewer loops and repeats."""
    from scapy.all import load_layer

    load_layer("tls")
    inputs = _inputs()
    loops, repeats = (2_000, 5) if quick else (20_000, 11)
    rows: list[dict[str, object]] = []
    rows += _compare("TLS ClientHello SNI, curl 517 B", ours_sni, dpkt_sni, scapy_sni, inputs["hello517"],
                     GOAL_TLS_US, loops, repeats)
    rows += _compare("TLS ClientHello SNI, post-quantum 1901 B", ours_sni, dpkt_sni, scapy_sni,
                     inputs["hello_pq"], GOAL_TLS_US, loops, repeats)
    rows += _compare("DNS response CNAME -> CNAME -> A", ours_dns, dpkt_dns, scapy_dns, inputs["dns"],
                     GOAL_DNS_US, loops, repeats)
    rows += _compare("IPv6 + TCP header (ClientHello packet)", ours_ip, dpkt_ip, scapy_ip, inputs["tcp_packet"],
                     None, loops, repeats)
    quic_us = _measure({"quic": _ours_quic}, inputs["quic"], max(1, loops // 10), repeats)["quic"]
    rows.append(_row("QUIC v1 Initial (RFC 9001 A.2) -> SNI", "netguard µs/parse", quic_us, "µs", None, None,
                     "key derivation cached per DCID; header protection + AES-128-GCM + CRYPTO + ClientHello"))
    http_us = _measure({"http": http.parse_request_head}, inputs["http"], loops, repeats)["http"]
    rows.append(_row("HTTP/1.1 request head", "netguard µs/parse", http_us, "µs", None, None,
                     f"{len(inputs['http'])} bytes"))
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
