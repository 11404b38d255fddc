"""A small JSON-over-HTTP client on the standard library (no extra dependency).

Both the SaladCloud public API client and the IMDS reporter speak plain JSON over HTTP;
this module is the one place that turns ``urllib`` into a status, headers and a parsed body.
Network failures (refused, timed out, DNS) come out as :class:`TransportError`; every HTTP
answer, error statuses included, comes out as an :class:`HttpResponse`: the caller decides
what a 404 or a 429 means.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class TransportError(Exception):
    """No HTTP answer: connection refused or reset, timeout, name resolution failed."""


@dataclass(frozen=True)
class HttpResponse:
    """One HTTP answer: status, headers (lower-case names) and the raw body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body parsed as JSON; ``None`` for an empty body or one that is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def text(self, limit: int = 300) -> str:
        """The body as text, shortened for error messages."""
        text = self.body.decode("utf-8", "replace").strip()
        return text if len(text) <= limit else text[:limit] + "..."


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
    use_proxy: bool = True,
) -> HttpResponse:
    """Send one request and return the answer, whatever its status.

    ``use_proxy=False`` ignores ``http_proxy``/``https_proxy`` (a metadata service must be
    reached directly; a proxy would refuse it or, worse, answer for another machine).
    Raises :class:`TransportError` when no HTTP answer came back within ``timeout`` seconds.
    """
    data = None
    all_headers = {"Accept": "application/json", **(headers or {})}
    if json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers["Content-Type"] = content_type
    if not url.startswith(("http://", "https://")):
        raise TransportError(f"{url!r} is not an http(s) URL")
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)  # noqa: S310
    try:
        opener = _DIRECT if not use_proxy else urllib.request.build_opener()
        with opener.open(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, resp.read(), _lower(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return HttpResponse(exc.code, body, _lower(exc.headers.items() if exc.headers else []))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransportError(f"{method} {url}: {reason}") from exc


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}
