"""One HTTPS GET with If-None-Match, bounded in time and size (the polling thread's only network I/O).

Strategy: urllib over an ssl context that trusts the system's CA store or, when configured, only
the organisation's CA bundle. 304 is a result, not an error. Redirects are followed only to https
URLs (a static host may redirect; a downgrade to plain HTTP is refused, although the signature would
catch a changed document, to keep the check-in headers off the wire). The body is read up to a
limit, so a wrong URL pointing at a large file costs nothing.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

# Seconds for connecting and for each read: a policy server that answers slower is treated as down
# (the next try backs off); the daemon's loop never waits for it.
TIMEOUT = 10.0


class FetchError(RuntimeError):
    """The server could not be reached, or did not answer 200 or 304."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int  # 200 or 304
    body: bytes
    etag: str | None


class _HttpsOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme != "https":
            raise FetchError(f"redirected to {newurl}: only https:// is followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS that verifies the server: the system's CAs, or only those in ca_file."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def get(url: str, *, etag: str | None, headers: dict[str, str], tls: ssl.SSLContext, limit: int,
        timeout: float = TIMEOUT) -> Response:
    """GET url (If-None-Match: etag when given); FetchError on anything but 200 or 304."""
    request = urllib.request.Request(url, headers={**headers, **({"If-None-Match": etag} if etag else {})})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls), _HttpsOnly())
    try:
        with opener.open(request, timeout=timeout) as resp:
            body = resp.read(limit + 1)
            if len(body) > limit:
                raise FetchError(f"{url}: larger than {limit} bytes")
            return Response(resp.status, body, resp.headers.get("ETag"))
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Response(304, b"", exc.headers.get("ETag") or etag)
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, TLS errors after connecting, bad URLs
        raise FetchError(f"{url}: {exc}") from None
