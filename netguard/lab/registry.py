"""The namespace lab with a real registry in it, real container clients, and a VM with containers.

Strategy: compose `netguard.lab.lab` without changing it. `build()` makes a lab, stops its stand-in
server and starts the Docker Distribution registry (`docker-registry serve`) in the registry
namespace on :443 (TLS, the lab's certificate, so every lab name and address is served by the one
process and the one storage). An image is made by hand as an OCI layout (one gzip layer of random
bytes, config, manifest, index) and pushed with skopeo before any netguard runs, so a test can
compare what a client pulls with what was pushed, digest for digest.

Container clients run through `client_argv`: a private mount namespace in which /var/lib is a tmpfs
(skopeo as root writes its blob-info cache to /var/lib/containers) and, when asked, /etc/hosts pins
names to addresses (to reach a name over IPv6, or past a DNS block, straight to the ClientHello).

`add_vm()` builds the "VM with containers behind a bridge" topology of Docker's bridge network and
the buildx docker-container driver: a VM namespace on the lab bridge that routes and masquerades
for container namespaces on its own bridge, so their traffic crosses the VM's FORWARD chain.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

REGISTRY_BIN = "/usr/bin/docker-registry"
REPO = "lab/hello"
TAG = "1"
# Random, incompressible layer content: larger than firewall.TCP_WINDOW_BYTES (128 KiB), so an
# allowed pull crosses the queued window and must finish at line rate in the kernel.
LAYER_BYTES = 1 << 20
READY_TIMEOUT = 10.0  # seconds for the registry to answer /v2/; it starts in well under a second
PUSH_TIMEOUT = 60.0  # seconds for skopeo to push 1 MiB over veth; it takes about one
# Accept every image: the lab's images are unsigned and made by the test itself.
POLICY_JSON = '{"default": [{"type": "insecureAcceptAnything"}]}\n'
# Fully qualified names only: a short name must never be searched on real registries.
REGISTRIES_CONF = 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n'

# The VM's container network: its own prefixes, routed by the VM to the lab's.
VM_HOST = 20  # the first VM's address on the lab bridge: NET4 + 20, NET6 + 20; the next + 1
CNET4 = "10.78.0."
CNET6 = "fd78::"
CGATEWAY = 1


@dataclass(frozen=True)
class Image:
    """An OCI image layout made here: where it is and the digests of its parts."""

    layout: Path
    tag: str
    layer: bytes = field(repr=False)  # the gzip layer blob as pushed
    layer_digest: str  # sha256:... of the gzip blob
    diff_id: str  # sha256:... of the uncompressed tar
    config_digest: str
    manifest_digest: str


@dataclass
class RegistryLab:
    """A lab whose registry namespace runs docker-registry, with an image in it."""

    lab: lab_mod.Lab
    registry_proc: subprocess.Popen[bytes]
    storage: Path
    certs: Path  # a directory holding only ca.crt (what --cert-dir wants)
    policy_json: Path
    registries_conf: Path
    image: Image

    @property
    def workdir(self) -> Path:
        return self.lab.workdir


def make_image(layout: Path, tag: str = TAG, size: int = LAYER_BYTES) -> Image:
    """Write an OCI image layout by hand: one gzip layer holding `size` random bytes."""
    payload = os.urandom(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("netguard-e2e.bin")
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return "sha256:" + hexdigest

    layer_digest, config_digest = put(layer), put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer)}],
    }).encode()
    manifest_digest = put(manifest)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return Image(layout, tag, layer, layer_digest, diff_id, config_digest, manifest_digest)


def client_argv(argv: Sequence[str], hosts: Mapping[str, str] | None = None, workdir: Path | None = None) -> list[str]:
    """argv wrapped in a private mount namespace: /var/lib becomes a tmpfs (container tools as root
    write caches there), and with `hosts`, /etc/hosts maps exactly those names to those addresses
    (written to a file in workdir). Run the result inside a namespace with `netns.exec_argv`."""
    script = ["mount -t tmpfs ng-e2e /var/lib"]
    if hosts:
        if workdir is None:
            raise ValueError("client_argv: hosts needs a workdir for the file")
        fd, name = tempfile.mkstemp(prefix="hosts-", dir=workdir)
        with os.fdopen(fd, "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{addr} {host}\n" for host, addr in hosts.items()))
        script.append(f"mount --bind {shlex.quote(name)} /etc/hosts")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(script), "sh", *argv]


def run_client(ns: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60,
               hosts: Mapping[str, str] | None = None, workdir: Path | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """Run a container client in namespace ns (see `client_argv`), capturing text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(netns.exec_argv(ns, client_argv(argv, hosts, workdir)), capture_output=True, text=True,
                          timeout=timeout, env=full_env, check=False)


def client_env(reg: RegistryLab) -> dict[str, str]:
    """Environment for skopeo and podman: the lab's registries.conf, temporary files in the lab."""
    tmp = reg.workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    return {"CONTAINERS_REGISTRIES_CONF": str(reg.registries_conf), "TMPDIR": str(tmp)}


def skopeo_argv(reg: RegistryLab, *args: str) -> list[str]:
    """skopeo with the lab's trust policy (pass the registry options in args)."""
    return ["skopeo", "--policy", str(reg.policy_json), *args]


def _registry_config(reg_dir: Path, cert: Path, key: Path) -> Path:
    config = reg_dir / "config.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(reg_dir / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": ":443", "tls": {"certificate": str(cert), "key": str(key)}},
    }, indent=1))
    return config


def _replace_server(lab: lab_mod.Lab) -> subprocess.Popen[bytes]:
    """Stop the lab's stand-in server and start docker-registry on :443 in its place."""
    stand_in = [p for p in lab.procs if isinstance(p.args, list) and "netguard.lab.server" in p.args]
    if len(stand_in) != 1:
        raise RuntimeError(f"lab.registry: expected one lab server process, found {len(stand_in)}")
    lab_mod.stop(stand_in[0])
    reg_dir = lab.workdir / "registry"
    reg_dir.mkdir(exist_ok=True)
    config = _registry_config(reg_dir, lab.workdir / "server.crt", lab.workdir / "server.key")
    with (lab.workdir / "registry.log").open("wb") as log:
        proc = subprocess.Popen(netns.exec_argv(lab.registry, [REGISTRY_BIN, "serve", str(config)]),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab.procs.append(proc)
    return proc


def _wait_ready(lab: lab_mod.Lab, proc: subprocess.Popen[bytes]) -> None:
    first = lab.hosts[0]

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("lab.registry: docker-registry exited: "
                               + (lab.workdir / "registry.log").read_text(errors="replace")[-2000:])
        r = lab.client_run(["curl", "-s", "-m", "2", "--cacert", str(lab.ca_file), "--resolve",
                            f"{first.name}:443:{first.v4}", f"https://{first.name}/v2/"])
        return r.returncode == 0 and r.stdout.strip() == "{}"

    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab.registry: docker-registry not ready after {READY_TIMEOUT:.0f} s")
        time.sleep(0.05)


def push(reg: RegistryLab, host: str) -> None:
    """Push the lab image to host/REPO:TAG with skopeo (run before netguard: it is set-up)."""
    argv = skopeo_argv(reg, "copy", "--dest-cert-dir", str(reg.certs), f"oci:{reg.image.layout}:{reg.image.tag}",
                       f"docker://{host}/{REPO}:{reg.image.tag}")
    r = run_client(reg.lab.client, argv, env=client_env(reg), timeout=PUSH_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(f"lab.registry: push to {host} failed: {r.stderr.strip()}")


@contextlib.contextmanager
def build(workdir: Path, push_to: str = "registry-1.docker.io") -> Iterator[RegistryLab]:
    """A lab with docker-registry serving every lab name, the image pushed through `push_to`;
    torn down whatever happens."""
    with lab_mod.build(workdir=workdir) as lab:
        proc = _replace_server(lab)
        certs = workdir / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(lab.ca_file.read_bytes())
        policy, conf = workdir / "policy.json", workdir / "registries.conf"
        policy.write_text(POLICY_JSON)
        conf.write_text(REGISTRIES_CONF)
        image = make_image(workdir / "image")
        reg = RegistryLab(lab, proc, workdir / "registry" / "storage", certs, policy, conf, image)
        _wait_ready(lab, proc)
        push(reg, push_to)
        yield reg


# -- the VM with containers behind its bridge ---------------------------------------------------


@dataclass
class Vm:
    """A VM namespace on the lab bridge that routes and masquerades for its container namespaces."""

    ns: str
    containers: tuple[str, ...]
    index: int = 0  # VMs on one lab differ by their address on the lab bridge

    @property
    def v4(self) -> str:
        return lab_mod.NET4 + str(VM_HOST + self.index)

    @property
    def v6(self) -> str:
        return lab_mod.NET6 + str(VM_HOST + self.index)

    @staticmethod
    def container_v4(i: int) -> str:
        return CNET4 + str(CGATEWAY + 1 + i)

    @staticmethod
    def container_v6(i: int) -> str:
        return CNET6 + str(CGATEWAY + 1 + i)


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


def _setup_vm(lab: lab_mod.Lab, vm: Vm) -> None:
    netns.create(vm.ns)
    peer = f"v{vm.index}"
    _ip(vm.ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", lab.bridge)
    _ip(lab.bridge, "link", "set", peer, "master", "br0", "up")
    _ip(vm.ns, "addr", "add", f"{vm.v4}/24", "dev", "eth0")
    _ip(vm.ns, "-6", "addr", "add", f"{vm.v6}/64", "dev", "eth0", "nodad")
    _ip(vm.ns, "link", "set", "eth0", "up")
    _ip(vm.ns, "link", "add", "br1", "type", "bridge")
    _ip(vm.ns, "addr", "add", f"{CNET4}{CGATEWAY}/24", "dev", "br1")
    _ip(vm.ns, "-6", "addr", "add", f"{CNET6}{CGATEWAY}/64", "dev", "br1", "nodad")
    _ip(vm.ns, "link", "set", "br1", "up")
    netns.run(vm.ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    # Docker's bridge network: container sources leave the VM under the VM's own address.
    for tool, net in (("iptables", f"{CNET4}0/24"), ("ip6tables", f"{CNET6}/64")):
        netns.run(vm.ns, [tool, "-t", "nat", "-A", "POSTROUTING", "-s", net, "-o", "eth0", "-j", "MASQUERADE"])
    for i, ns in enumerate(vm.containers):
        netns.create(ns)
        _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"c{i}", "netns", vm.ns)
        _ip(vm.ns, "link", "set", f"c{i}", "master", "br1", "up")
        _ip(ns, "addr", "add", f"{vm.container_v4(i)}/24", "dev", "eth0")
        _ip(ns, "-6", "addr", "add", f"{vm.container_v6(i)}/64", "dev", "eth0", "nodad")
        _ip(ns, "link", "set", "eth0", "up")
        # Routes to the lab's prefixes only, through the VM: still no default route anywhere.
        _ip(ns, "route", "add", f"{lab_mod.NET4}0/24", "via", f"{CNET4}{CGATEWAY}")
        _ip(ns, "-6", "route", "add", f"{lab_mod.NET6}/64", "via", f"{CNET6}{CGATEWAY}")
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {lab.dns_v4}\noptions timeout:1 attempts:1\n")


@contextlib.contextmanager
def add_vm(lab: lab_mod.Lab, containers: int = 1, index: int = 0) -> Iterator[Vm]:
    """Attach a VM namespace with `containers` container namespaces to the lab; deleted on exit.
    Several VMs on one lab need distinct `index`es (their container networks may repeat)."""
    vm = Vm(netns.unique_name("vm"), tuple(netns.unique_name("ctr") for _ in range(containers)), index)
    try:
        _setup_vm(lab, vm)
        yield vm
    finally:
        for ns in (*vm.containers, vm.ns):
            netns.delete(ns)
