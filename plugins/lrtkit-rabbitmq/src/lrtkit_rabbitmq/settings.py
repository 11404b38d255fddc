"""The RabbitMQ plugin's own settings, and connection parameters built from them.

The AMQP URL carries credentials, so it is a ``SecretStr`` and only :func:`masked_url` ever
appears in a message or a log line. ``AMQP_URL`` (the SaladCloud guide's name) is accepted as
an alias of ``LRT_RABBITMQ_URL``.
"""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import quote, unquote, urlsplit

import pika
from pydantic import AliasChoices, Field, SecretStr

from lrtkit.config import PluginSettings
from lrtkit.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"


class RabbitMQSettings(PluginSettings):
    """``LRT_RABBITMQ_*`` variables (see docs/rabbitmq.md)."""

    url: SecretStr = Field(
        SecretStr(DEFAULT_URL), validation_alias=AliasChoices("LRT_RABBITMQ_URL", "AMQP_URL")
    )
    management_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LRT_RABBITMQ_MANAGEMENT_URL")
    )
    dead_letter_exchange: str | None = Field(
        None, validation_alias=AliasChoices("LRT_RABBITMQ_DLX")
    )
    dead_letter_queue: str | None = Field(None, validation_alias=AliasChoices("LRT_RABBITMQ_DLQ"))
    consumer_timeout: float = Field(
        86400.0, ge=0, validation_alias=AliasChoices("LRT_RABBITMQ_CONSUMER_TIMEOUT")
    )
    heartbeat: int | None = Field(
        None, ge=0, validation_alias=AliasChoices("LRT_RABBITMQ_HEARTBEAT")
    )
    connection_name: str | None = Field(
        None, validation_alias=AliasChoices("LRT_RABBITMQ_CONNECTION_NAME")
    )
    connect_timeout: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("LRT_RABBITMQ_CONNECT_TIMEOUT")
    )
    reconnect_max_delay: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("LRT_RABBITMQ_RECONNECT_MAX_DELAY")
    )

    def dlx_name(self, queue: str) -> str:
        return self.dead_letter_exchange or f"{queue}.dlx"

    def dlq_name(self, queue: str) -> str:
        return self.dead_letter_queue or f"{queue}.dlq"

    def display_name(self) -> str:
        return self.connection_name or f"lrtkit {socket.gethostname()} pid {os.getpid()}"


def masked_url(url: str) -> str:
    """``url`` with the password replaced by ``***`` (the only form ever logged)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable AMQP URL>"
    userinfo = ""
    if parts.username is not None:
        userinfo = f"{parts.username}:***@" if parts.password is not None else f"{parts.username}@"
    hostport = f"{host}:{port}" if port else host
    return f"{parts.scheme}://{userinfo}{hostport}{parts.path}"


def vhost_of(url: str) -> str:
    """The virtual host named by ``url`` (``/`` when none is given)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def connection_parameters(
    settings: RabbitMQSettings, *, heartbeat: int | None, role: str
) -> pika.URLParameters:
    """pika parameters for ``settings.url``: TLS for ``amqps://``, a findable connection name.

    ``heartbeat`` applies unless the URL or ``LRT_RABBITMQ_HEARTBEAT`` sets one.
    """
    url = settings.url.get_secret_value()
    scheme = url.partition("://")[0].lower()
    if scheme not in {"amqp", "amqps"}:
        raise ConfigError(
            f"LRT_RABBITMQ_URL {masked_url(url)!r} must start with amqp:// or amqps://"
        )
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"LRT_RABBITMQ_URL {masked_url(url)!r} is not valid: {exc}") from None
    if params.ssl_options is not None and params.ssl_options.server_hostname is None:
        # pika's default TLS context checks the hostname, which needs SNI set.
        params.ssl_options = pika.SSLOptions(
            context=params.ssl_options.context or ssl.create_default_context(),
            server_hostname=params.host,
        )
    if settings.heartbeat is not None:
        params.heartbeat = settings.heartbeat
    elif "heartbeat" not in urlsplit(url).query and heartbeat is not None:
        params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.socket_timeout = min(10.0, settings.connect_timeout)
    params.blocked_connection_timeout = 60
    params.client_properties = {
        "connection_name": f"{settings.display_name()} ({role})",
        "product": "lrtkit",
    }
    return params


def quote_vhost(vhost: str) -> str:
    """The vhost as one URL path segment (``/`` becomes ``%2F``)."""
    return quote(vhost, safe="")
