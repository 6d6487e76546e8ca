"""Where the organisation policy comes from: `netguard run` options and /etc/netguard/source.toml.

Strategy: the installers write one small TOML file; options given to `netguard run` override it key
by key. The file is parsed and checked as a whole (every problem reported at once, like a policy),
and the result is a frozen Source: the policy URL (HTTPS, a host name, no query: the signature's URL
is the policy's plus ".minisig", as `minisign -S` names it), the trusted keys (minisign public key
files, or their base64 lines; several for key rotation), an optional CA bundle trusted instead of
the system's, the state directory and the poll interval.

    policy_url = "https://config.corp.example/netguard/policy.toml"
    trusted_keys = ["/etc/netguard/org.pub", "RWQ...second key for rotation..."]
    policy_ca = "/etc/netguard/corp-ca.pem"    # optional
    state_dir = "/var/lib/netguard"            # optional
    poll_interval = 60                         # optional, seconds
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from netguard.fleet.minisign import PublicKey, SignatureError, parse_public_key
from netguard.policy import HostError, normalise_host

DEFAULT_CONFIG = Path("/etc/netguard/source.toml")
DEFAULT_STATE_DIR = Path("/var/lib/netguard")
DEFAULT_INTERVAL = 60.0
# Fast enough for tests and a demo; anything faster only loads the policy server.
MIN_INTERVAL = 1.0
# A day: a machine should notice a new policy (and its own stale one) at least that often.
MAX_INTERVAL = 86400.0
KEYS = ("policy_url", "trusted_keys", "policy_ca", "state_dir", "poll_interval")


class SourceError(ValueError):
    """The policy source is not usable; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Source:
    url: str
    keys: tuple[PublicKey, ...]
    ca_file: Path | None
    state_dir: Path
    interval: float

    @property
    def signature_url(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=parts.path + ".minisig"))

    @property
    def host(self) -> str:
        return normalise_host(urlsplit(self.url).hostname or "")

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443


def check_url(url: str) -> str | None:
    """Why url cannot be a policy URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r}: {exc}"
    if parts.scheme != "https":
        return f"{url!r}: the policy URL must be https://"
    if parts.username or parts.password:
        return f"{url!r}: no credentials in the URL (they would be in every log)"
    if parts.query or parts.fragment:
        return f"{url!r}: no query or fragment (the signature is fetched from the same URL + '.minisig')"
    if not parts.path or parts.path.endswith("/"):
        return f"{url!r}: name the policy file itself"
    if port == 0:
        return f"{url!r}: port 0"
    try:
        normalise_host(parts.hostname or "")
    except HostError as exc:
        return f"{url!r}: a host name is needed, so that netguard can always allow it ({exc})"
    return None


def read_key(spec: str) -> PublicKey:
    """A trusted key: a minisign public key file, or a key's base64 line (RW...)."""
    spec = spec.strip()
    path = Path(spec)
    if not path.exists() and spec.startswith("RW"):
        try:
            return parse_public_key(spec)
        except SignatureError as exc:
            raise SourceError(f"trusted key {spec!r}: {exc}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"trusted key {spec}: neither a key (RW...) nor a readable key file ({exc})") from None
    try:
        return parse_public_key(text)
    except SignatureError as exc:
        raise SourceError(f"trusted key {spec}: {exc}") from None


def parse_config(text: str, where: str) -> dict[str, Any]:
    """The settings in a source.toml text (only the keys it sets), checked; SourceError otherwise."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError(f"{where}: not valid TOML: {exc}") from None
    problems = [f"{where}: unknown key {k!r} (expected {', '.join(KEYS)})" for k in sorted(doc.keys() - set(KEYS))]
    out: dict[str, Any] = {}
    for key in ("policy_url", "policy_ca", "state_dir"):
        if key in doc:
            if isinstance(doc[key], str) and doc[key]:
                out[key] = doc[key]
            else:
                problems.append(f"{where}: {key}: expected a non-empty string")
    if "trusted_keys" in doc:
        keys = doc["trusted_keys"]
        if isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys):
            out["trusted_keys"] = list(keys)
        else:
            problems.append(f"{where}: trusted_keys: expected a non-empty list of strings")
    if "poll_interval" in doc:
        value = doc["poll_interval"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            out["poll_interval"] = float(value)
        else:
            problems.append(f"{where}: poll_interval: expected a number of seconds")
    if problems:
        raise SourceError("\n".join(problems))
    return out


def load_source(config: Path | None, *, url: str | None = None, keys: Sequence[str] = (), ca: str | None = None,
                state_dir: str | None = None, interval: float | None = None) -> Source | None:
    """The policy source from the config file (when it exists) and the options, which win; None when
    neither names a policy URL. SourceError lists what is wrong."""
    settings: dict[str, Any] = {}
    if config is not None and config.exists():
        try:
            text = config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{config}: cannot read it ({exc})") from None
        settings = parse_config(text, str(config))
    given = {"policy_url": url, "trusted_keys": list(keys) or None, "policy_ca": ca, "state_dir": state_dir,
             "poll_interval": interval}
    settings.update({k: v for k, v in given.items() if v is not None})
    if "policy_url" not in settings:
        if len(settings) > (1 if "state_dir" in settings else 0):
            raise SourceError("trusted keys, a policy CA or a poll interval without a policy URL "
                              "(--policy-url, or policy_url in the source file)")
        return None
    problems = []
    why = check_url(settings["policy_url"])
    if why:
        problems.append(why)
    if not settings.get("trusted_keys"):
        problems.append("an organisation policy needs at least one trusted key (--trusted-key, or trusted_keys)")
    public: list[PublicKey] = []
    for spec in settings.get("trusted_keys") or ():
        try:
            public.append(read_key(spec))
        except SourceError as exc:
            problems.append(str(exc))
    every = settings.get("poll_interval", DEFAULT_INTERVAL)
    if not MIN_INTERVAL <= every <= MAX_INTERVAL:
        problems.append(f"poll interval {every:g} s: expected {MIN_INTERVAL:g} to {MAX_INTERVAL:g}")
    ca_file = Path(settings["policy_ca"]) if "policy_ca" in settings else None
    if ca_file is not None and not ca_file.is_file():
        problems.append(f"policy CA {ca_file}: no such file")
    if problems:
        raise SourceError("\n".join(problems))
    return Source(settings["policy_url"], tuple(public), ca_file,
                  Path(settings.get("state_dir", DEFAULT_STATE_DIR)), float(every))
