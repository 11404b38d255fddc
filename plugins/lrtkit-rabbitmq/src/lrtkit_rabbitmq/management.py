"""A small client for the RabbitMQ management HTTP API (``rabbitmq_management`` plugin).

AMQP cannot count unacknowledged messages or read a queue's arguments; the management API
can. ``LRT_RABBITMQ_MANAGEMENT_URL`` is e.g. ``https://user:pass@host:15672`` (CloudAMQP:
``https://user:pass@host``); without credentials in it, those of the AMQP URL are used.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from lrtkit.errors import BrokerConfigError, BrokerError
from lrtkit_rabbitmq.settings import masked_url, quote_vhost


@dataclass(frozen=True)
class QueueInfo:
    """What the management API says about one queue."""

    ready: int
    unacked: int
    consumers: int
    arguments: dict[str, Any]
    policy: dict[str, Any]
    queue_type: str


class Management:
    def __init__(self, url: str, amqp_url: str, vhost: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise BrokerConfigError(
                f"LRT_RABBITMQ_MANAGEMENT_URL {masked_url(url)!r} must be an http(s):// URL"
            )
        user, password = parts.username, parts.password
        if user is None:
            amqp = urlsplit(amqp_url)
            user, password = amqp.username, amqp.password
        self._auth = None
        if user is not None:
            token = f"{unquote(user)}:{unquote(password or '')}".encode()
            self._auth = "Basic " + base64.b64encode(token).decode()
        port = f":{parts.port}" if parts.port else ""
        self._base = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
        self.shown = masked_url(url)
        self.vhost = vhost
        self._timeout = timeout

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self._base + path)  # noqa: S310 - http(s) checked
        if self._auth is not None:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise BrokerConfigError(
                    f"the management API at {self.shown} refused the credentials ({exc.code}); "
                    "the user needs the 'monitoring' or 'management' tag"
                ) from None
            if exc.code == 404:
                return None
            raise BrokerError(f"management API {self.shown}{path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BrokerError(f"management API at {self.shown} did not answer: {exc}") from None

    def overview(self) -> dict[str, Any]:
        data = self._get("/api/overview")
        return data if isinstance(data, dict) else {}

    def queue(self, name: str) -> QueueInfo | None:
        data = self._get(f"/api/queues/{quote_vhost(self.vhost)}/{quote_vhost(name)}")
        if not isinstance(data, dict):
            return None
        return QueueInfo(
            ready=int(data.get("messages_ready") or 0),
            unacked=int(data.get("messages_unacknowledged") or 0),
            consumers=int(data.get("consumers") or 0),
            arguments=dict(data.get("arguments") or {}),
            policy=dict(data.get("effective_policy_definition") or {}),
            queue_type=str(data.get("type") or ""),
        )
