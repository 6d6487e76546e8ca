"""A namespace lab: a client, a DNS server and a registry stand-in behind a bridge, nothing else.

Strategy: four namespaces made with `netns.create` under unique names: a bridge namespace holding
br0 and one veth end per host, and client / dns / registry namespaces holding the other ends. No
default route anywhere, nothing in the caller's namespace, so a lab is safe on any machine and any
number of labs can run at once. The DNS namespace runs dnsmasq with `host-record`s for the lab
names (and a CNAME alias of a blocked one; optionally names sharing another name's addresses, raw
records such as HTTPS/SVCB via `dns-rr`, and a second dnsmasq answering the same on another port);
the registry namespace runs `lab.server` (HTTPS on 443 with a certificate from a CA made here,
plain HTTP on 80) on one address per name, so that an address identifies a name (unless shared).
The client namespace resolves through /etc/netns/CLIENT/resolv.conf.
`Lab.close()` (or leaving `build()`) kills what it started and deletes the namespaces, always.
Used by the integration tests, the benchmarks and `netguard demo`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netguard.daemon import netns

NET4 = "10.77.0."
NET6 = "fd77::"
CLIENT_HOST = 10
DNS_HOST = 53
READY_TIMEOUT = 10.0  # seconds for dnsmasq and the server to answer; both start in well under 1 s


@dataclass(frozen=True)
class Host:
    """A name served by the lab, with its own addresses in the registry namespace."""

    name: str
    v4: str
    v6: str


# Names chosen to hit the default policy: Docker Hub allowed, GHCR and Quay blocked, one unknown.
DEFAULT_HOSTS = (
    Host("registry-1.docker.io", NET4 + "102", NET6 + "102"),
    Host("ghcr.io", NET4 + "103", NET6 + "103"),
    Host("quay.io", NET4 + "104", NET6 + "104"),
    Host("www.example.test", NET4 + "105", NET6 + "105"),
)
# dl.allowed.test is an alias whose chain ends at a blocked registry.
DEFAULT_CNAMES = (("dl.allowed.test", "ghcr.io"),)


@dataclass
class Lab:
    """A running lab. Namespace names are unique to this lab."""

    bridge: str
    client: str
    dns: str
    registry: str
    workdir: Path
    hosts: tuple[Host, ...]
    cnames: tuple[tuple[str, str], ...]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    shared: tuple[tuple[str, str], ...] = ()  # (name, lab host whose addresses DNS also gives for it)
    dns_rr: tuple[tuple[str, int, bytes], ...] = ()  # (owner, RR type, rdata) served as they are
    alt_dns_port: int | None = None  # a second dnsmasq with the same records on this port

    @property
    def client_v4(self) -> str:
        return NET4 + str(CLIENT_HOST)

    @property
    def client_v6(self) -> str:
        return NET6 + str(CLIENT_HOST)

    @property
    def dns_v4(self) -> str:
        return NET4 + str(DNS_HOST)

    @property
    def dns_v6(self) -> str:
        return NET6 + str(DNS_HOST)

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    def host(self, name: str) -> Host:
        """The Host record for a lab name."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def address(self, name: str, family: int) -> str:
        """A lab name's address in one family (4 or 6)."""
        h = self.host(name)
        return h.v4 if family == 4 else h.v6

    def client_run(self, argv: Sequence[str], timeout: float = 30,
                   input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in the client namespace (no check), capturing text output."""
        return netns.run(self.client, argv, check=False, timeout=timeout, input=input)

    def client_popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start argv in the client namespace; the lab kills it on close."""
        p: subprocess.Popen[bytes] = subprocess.Popen(netns.exec_argv(self.client, argv), **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def close(self) -> None:
        """Kill every process this lab started and delete its namespaces."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
        for ns in (*self.containers, self.client, self.dns, self.registry, self.bridge):
            netns.delete(ns)


CONTAINER_NET4 = "10.78.0."
CONTAINER_NET6 = "fd78::"


def add_container(lab: Lab) -> str:
    """A "container" namespace behind the client namespace, which routes for it (so its traffic
    crosses the client's FORWARD chain, as a container's crosses its host's). The container is
    10.78.0.2 / fd78::2 and resolves through the lab DNS. Deleted with the lab."""
    ns = netns.unique_name("ctr")
    netns.create(ns)
    lab.containers.append(ns)
    _ip(lab.client, "link", "add", "ctr0", "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip(lab.client, "addr", "add", f"{CONTAINER_NET4}1/24", "dev", "ctr0")
    _ip(lab.client, "-6", "addr", "add", f"{CONTAINER_NET6}1/64", "dev", "ctr0", "nodad")
    _ip(lab.client, "link", "set", "ctr0", "up")
    _ip(ns, "addr", "add", f"{CONTAINER_NET4}2/24", "dev", "eth0")
    _ip(ns, "-6", "addr", "add", f"{CONTAINER_NET6}2/64", "dev", "eth0", "nodad")
    _ip(ns, "link", "set", "eth0", "up")
    _ip(ns, "route", "add", f"{NET4}0/24", "via", f"{CONTAINER_NET4}1")
    _ip(ns, "-6", "route", "add", f"{NET6}/64", "via", f"{CONTAINER_NET6}1")
    for other in (lab.dns, lab.registry):
        _ip(other, "route", "add", f"{CONTAINER_NET4}0/24", "via", lab.client_v4)
        _ip(other, "-6", "route", "add", f"{CONTAINER_NET6}/64", "via", lab.client_v6)
    netns.run(lab.client, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    etc = Path("/etc/netns") / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {lab.dns_v4}\noptions timeout:1 attempts:1\n")
    return ns


def add_host(lab: Lab, v4: str, v6: str) -> str:
    """Another host namespace on the lab's bridge, with one address per family (inside NET4 / NET6,
    not used by the lab's hosts), to run a server of a test's own. Deleted with the lab."""
    ns = netns.unique_name("host")
    netns.create(ns)
    lab.containers.append(ns)
    _wire(lab.bridge, ns, f"h{len(lab.containers)}", [v4], [v6])
    return ns


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


def _wire(bridge: str, ns: str, peer: str, v4: Sequence[str], v6: Sequence[str]) -> None:
    _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", bridge)
    _ip(bridge, "link", "set", peer, "master", "br0", "up")
    for a in v4:
        _ip(ns, "addr", "add", f"{a}/24", "dev", "eth0")
    for a in v6:
        _ip(ns, "-6", "addr", "add", f"{a}/64", "dev", "eth0", "nodad")
    _ip(ns, "link", "set", "eth0", "up")


def python_client_hello(name: str | None, curve: str | None = None) -> bytes:
    """The TLS record holding the ClientHello that Python's ssl (OpenSSL) sends for `name` (None: no
    SNI): a real client's bytes for raw senders, tests and benchmarks. `curve`: the only group
    offered (OpenSSL 3), so the key share is for it (a second hello after a HelloRetryRequest)."""
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return bytes(outgoing.read())


def padded_client_hello(name: str, padding: int) -> bytes:
    """python_client_hello(name) made longer by a padding extension (RFC 7685) of that many zero
    bytes, its lengths (record, handshake, extensions) set to match: a hello as large as one wants."""
    hello = python_client_hello(name)
    if hello[0] != 22 or hello[5] != 1:
        raise ValueError("not a single ClientHello record")
    body = hello[9:]
    # The extensions block is the body's end: legacy_version and random (34), session id, suites, compression.
    at = 34 + 1 + body[34]
    at += 2 + int.from_bytes(body[at:at + 2], "big")
    at += 1 + body[at]
    extensions, pos, end = b"", at + 2, len(body)
    while pos < end:  # OpenSSL may have padded already: that extension is replaced (one of a type)
        kind, size = int.from_bytes(body[pos:pos + 2], "big"), int.from_bytes(body[pos + 2:pos + 4], "big")
        if kind == 21:
            padding += size
        else:
            extensions += body[pos:pos + 4 + size]
        pos += 4 + size
    extensions += (21).to_bytes(2, "big") + padding.to_bytes(2, "big") + bytes(padding)
    body = body[:at] + len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return hello[:3] + len(handshake).to_bytes(2, "big") + handshake


def make_certificates(workdir: Path, names: Sequence[str], addresses: Sequence[str]) -> tuple[Path, Path]:
    """A CA (workdir/ca.crt) and a server certificate + key with SANs for every name and address."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netguard lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (workdir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = workdir / "server.crt", workdir / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _until(predicate: object, what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"lab: {what} not ready after {timeout:.0f} s")


def _start(ns: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    try:
        return subprocess.Popen(netns.exec_argv(ns, argv), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        out.close()


@contextlib.contextmanager
def build(hosts: Sequence[Host] = DEFAULT_HOSTS, cnames: Sequence[tuple[str, str]] = DEFAULT_CNAMES,
          workdir: Path | None = None, *, shared: Sequence[tuple[str, str]] = (),
          dns_rr: Sequence[tuple[str, int, bytes]] = (), alt_dns_port: int | None = None) -> Iterator[Lab]:
    """Build a lab, yield it, and tear it down whatever happens. `shared`: (name, host) pairs, DNS
    gives name the host's addresses; `dns_rr`: raw records (owner, type, rdata); `alt_dns_port`: a
    second DNS server on that port."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ng-lab-")
        workdir = Path(tmp.name)
    lab = Lab(bridge=netns.unique_name("br"), client=netns.unique_name("cli"), dns=netns.unique_name("dns"),
              registry=netns.unique_name("reg"), workdir=workdir, hosts=tuple(hosts), cnames=tuple(cnames),
              shared=tuple(shared), dns_rr=tuple(dns_rr), alt_dns_port=alt_dns_port)
    try:
        _setup(lab)
        yield lab
    finally:
        lab.close()
        if tmp is not None:
            tmp.cleanup()


def _setup(lab: Lab) -> None:
    for ns in (lab.bridge, lab.client, lab.dns, lab.registry):
        netns.create(ns)
    _ip(lab.bridge, "link", "add", "br0", "type", "bridge")
    _ip(lab.bridge, "link", "set", "br0", "up")
    _wire(lab.bridge, lab.client, "c0", [lab.client_v4], [lab.client_v6])
    _wire(lab.bridge, lab.dns, "d0", [lab.dns_v4], [lab.dns_v6])
    _wire(lab.bridge, lab.registry, "r0", [h.v4 for h in lab.hosts], [h.v6 for h in lab.hosts])

    names = [h.name for h in lab.hosts] + [alias for alias, _ in lab.cnames] + [name for name, _ in lab.shared]
    cert, key = make_certificates(lab.workdir, names, [a for h in lab.hosts for a in (h.v4, h.v6)])
    server = _start(lab.registry, [sys.executable, "-m", "netguard.lab.server", str(cert), str(key)],
                    lab.workdir / "server.log")
    lab.procs.append(server)

    conf = lab.workdir / "dnsmasq.conf"
    lines = ["no-resolv", "no-hosts", "user=root", "bind-interfaces", "local=/test/",
             f"listen-address={lab.dns_v4},{lab.dns_v6}", "log-queries", f"pid-file={lab.workdir}/dnsmasq.pid"]
    lines += [f"host-record={h.name},{h.v4},{h.v6}" for h in lab.hosts]
    lines += [f"cname={alias},{target}" for alias, target in lab.cnames]
    lines += [f"host-record={name},{lab.host(host).v4},{lab.host(host).v6}" for name, host in lab.shared]
    lines += [f"dns-rr={owner},{rtype},{rdata.hex()}" for owner, rtype, rdata in lab.dns_rr]
    conf.write_text("\n".join(lines) + "\n")
    dns = _start(lab.dns, ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--log-facility=-"],
                 lab.workdir / "dnsmasq.log")
    lab.procs.append(dns)
    if lab.alt_dns_port is not None:
        alt = lab.workdir / "dnsmasq-alt.conf"
        alt.write_text("\n".join(line.replace("dnsmasq.pid", "dnsmasq-alt.pid") for line in lines)
                       + f"\nport={lab.alt_dns_port}\n")
        lab.procs.append(_start(lab.dns, ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={alt}",
                                          "--log-facility=-"], lab.workdir / "dnsmasq-alt.log"))

    etc = Path("/etc/netns") / lab.client
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {lab.dns_v4}\noptions timeout:1 attempts:1\n")

    first = lab.hosts[0]

    def dns_ready(port: int = 53) -> bool:
        r = netns.run(lab.client, ["dig", "+short", "+time=1", "+tries=1", "-p", str(port), first.name,
                                   f"@{lab.dns_v4}"], check=False)
        return first.v4 in r.stdout.split()

    def server_ready() -> bool:
        r = netns.run(lab.client, ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://{first.v4}/"], check=False)
        return r.stdout == "200"

    _until(dns_ready, "dnsmasq")
    if lab.alt_dns_port is not None:
        port = lab.alt_dns_port
        _until(lambda: dns_ready(port), f"dnsmasq on port {port}")
    _until(server_ready, "lab server")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5) -> int | None:
    """Send sig to a process the caller started and wait for it; SIGKILL if it does not exit."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=timeout)
    return proc.returncode
