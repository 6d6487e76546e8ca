"""An organisation's policy server for the lab: real nginx serving a policy signed with real minisign.

Strategy: what an organisation would run, nothing of netguard's own. `Signer` makes a minisign key
pair with `minisign -G -W` (no password) and signs with `minisign -S -t 'version=N expires=...'`
(prehashed by default, legacy with -l). `PolicyServer` runs nginx (Debian's package) in the lab's
registry namespace, on the addresses of one lab name and its own port (the lab's stand-in server
holds 443 there), with the lab CA's certificate, a static root, nginx's own ETags, and the check-in
access log in the log_format docs/organisation.md gives (CHECKIN_LOG_FORMAT). Publishing sets each
file's mtime one second past the last one: nginx's ETag is mtime + size, so two versions written
within one second with the same size would otherwise look unchanged. Used by the fleet tests; the
daemon never imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from netguard.daemon import netns
from netguard.lab import lab as lab_mod

NGINX = "/usr/sbin/nginx"
MINISIGN = "minisign"
POLICY_HOST = lab_mod.Host("policy.corp.test", lab_mod.NET4 + "110", lab_mod.NET6 + "110")
PORT = 8443
READY_TIMEOUT = 10.0  # seconds for nginx to answer; it starts in well under one

# The access log format of docs/organisation.md: one JSON object per request, the check-in headers in it.
CHECKIN_LOG_FORMAT = """log_format netguard_checkin escape=json
    '{"time":"$time_iso8601","client":"$remote_addr","request":"$request_uri","status":"$status",'
    '"machine":"$http_netguard_machine","netguard":"$http_netguard_version",'
    '"policy_version":"$http_netguard_policy_version","policy_sha256":"$http_netguard_policy_sha256",'
    '"state":"$http_netguard_state","last_block":"$http_netguard_last_block"}';"""


def expires_in(seconds: float) -> str:
    """An expires= value that many seconds from now (negative: in the past)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Signer:
    """A minisign key pair made with the real tool, in `workdir`."""

    workdir: Path
    public: Path = field(init=False)
    secret: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.public, self.secret = self.workdir / "minisign.pub", self.workdir / "minisign.key"
        subprocess.run([MINISIGN, "-G", "-W", "-p", str(self.public), "-s", str(self.secret)], check=True,
                       capture_output=True, text=True, timeout=30)

    @property
    def key_line(self) -> str:
        """The public key's base64 line."""
        return self.public.read_text().splitlines()[1].strip()

    def sign(self, document: Path, comment: str, *, legacy: bool = False, out: Path | None = None) -> Path:
        """Sign document with `comment` as the trusted comment; the signature file (document.minisig)."""
        sig = out or document.with_name(document.name + ".minisig")
        argv = [MINISIGN, "-S", "-s", str(self.secret), "-m", str(document), "-x", str(sig), "-t", comment]
        if legacy:
            argv.append("-l")
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
        return sig


@dataclass
class PolicyServer:
    lab: lab_mod.Lab
    workdir: Path
    host: lab_mod.Host = POLICY_HOST
    port: int = PORT
    proc: subprocess.Popen[bytes] | None = None
    _mtime: float = field(default_factory=lambda: float(int(time.time())))

    @property
    def www(self) -> Path:
        return self.workdir / "www"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def url(self, name: str = "policy.toml") -> str:
        return f"https://{self.host.name}:{self.port}/{name}"

    def publish(self, text: str | bytes, signer: Signer | None, comment: str | None, *, name: str = "policy.toml",
                legacy: bool = False) -> Path:
        """Write the document (and, with a signer, its signature with that trusted comment) to the root."""
        path = self.www / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
        self._touch(path)
        if signer is not None and comment is not None:
            sig = signer.sign(path, comment, legacy=legacy, out=self.www / f".{name}.minisig.tmp")
            os.replace(sig, self.www / f"{name}.minisig")
            self._touch(self.www / f"{name}.minisig")
        return path

    def publish_signature(self, data: bytes, name: str = "policy.toml") -> None:
        """Replace only the signature file (a stale, foreign or broken one)."""
        sig = self.www / f"{name}.minisig"
        sig.write_bytes(data)
        self._touch(sig)

    def _touch(self, path: Path) -> None:
        self._mtime += 1
        os.utime(path, (self._mtime, self._mtime))

    def config(self) -> str:
        d = self.workdir
        temps = "\n".join(f"    {kind}_temp_path {d}/tmp/{kind};" for kind in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    types {{ text/plain toml minisig; }}
    default_type application/octet-stream;
{temps}
    {CHECKIN_LOG_FORMAT}
    access_log {self.access_log} netguard_checkin;
    server {{
        listen {self.host.v4}:{self.port} ssl;
        listen [{self.host.v6}]:{self.port} ssl;
        server_name {self.host.name};
        ssl_certificate {self.lab.workdir}/server.crt;
        ssl_certificate_key {self.lab.workdir}/server.key;
        root {self.www};
    }}
}}
"""

    def start(self) -> None:
        """Start nginx in the lab's registry namespace and wait until it serves."""
        self.www.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        with (self.workdir / "nginx.out").open("ab") as out:
            self.proc = subprocess.Popen(
                netns.exec_argv(self.lab.registry, [NGINX, "-e", str(self.workdir / "error.log"), "-p",
                                                    str(self.workdir), "-c", str(conf)]),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.lab.procs.append(self.proc)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.workdir / 'error.log').read_text(errors='replace')}")
            r = netns.run(self.lab.registry, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                              str(self.lab.ca_file), "--resolve",
                                              f"{self.host.name}:{self.port}:{self.host.v4}",
                                              f"https://{self.host.name}:{self.port}/"], check=False)
            if r.stdout in ("403", "404", "200"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx not ready after {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Stop nginx (the server is down until start())."""
        if self.proc is not None:
            lab_mod.stop(self.proc)
            self.proc = None

    def requests(self) -> list[dict[str, Any]]:
        """The access log so far, one dict per request."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def serve(lab: lab_mod.Lab, workdir: Path) -> Iterator[PolicyServer]:
    """A running policy server for the lab (its host must be among the lab's hosts); stopped on exit."""
    server = PolicyServer(lab, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
