"""Settings of the S3 storage: where the bucket is, how to sign, how to move big files.

The core :class:`~lrtkit.config.Settings` hold what every user sets (``LRT_STORAGE``, the
endpoint, region and keys, with the SaladCloud guides' ``R2_*`` names as aliases). The knobs
only this backend has live here, read from the same environment (``LRT_S3_*``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from lrtkit.config import PluginSettings, Settings
from lrtkit.errors import ConfigError, StorageError
from lrtkit.storage.base import check_key

if TYPE_CHECKING:
    from botocore.config import Config

MiB = 1024 * 1024

# Lenient on purpose: legacy us-east-1 buckets may hold upper case and underscores.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
_R2_HOST = "r2.cloudflarestorage.com"


class S3Options(PluginSettings):
    """Tuning of the S3 backend; every field has a default that suits R2, S3 and MinIO."""

    addressing_style: Literal["auto", "path", "virtual"] | None = Field(
        None, validation_alias="LRT_S3_ADDRESSING_STYLE"
    )
    max_attempts: int = Field(8, ge=1, le=50, validation_alias="LRT_S3_MAX_ATTEMPTS")
    connect_timeout: float = Field(10.0, gt=0, validation_alias="LRT_S3_CONNECT_TIMEOUT")
    read_timeout: float = Field(60.0, gt=0, validation_alias="LRT_S3_READ_TIMEOUT")
    multipart_threshold_mb: int = Field(16, ge=5, validation_alias="LRT_S3_MULTIPART_THRESHOLD_MB")
    multipart_chunk_mb: int = Field(16, ge=5, validation_alias="LRT_S3_MULTIPART_CHUNK_MB")
    max_concurrency: int = Field(8, ge=1, le=64, validation_alias="LRT_S3_MAX_CONCURRENCY")
    checksum: Literal["crc32", "off"] = Field("crc32", validation_alias="LRT_S3_CHECKSUM")


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix`` split up; ``prefix`` has no leading or trailing ``/``."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, key: str) -> str:
        """The object key of a storage key (checked: no escaping the prefix)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def list_prefix(self, prefix: str) -> str:
        """The object key prefix to list for a storage key prefix (may end with ``/``)."""
        if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
            raise StorageError(f"storage prefix {prefix!r} is not a relative /-separated path")
        if any(part in {".", ".."} for part in prefix.split("/")[:-1]):
            raise StorageError(f"storage prefix {prefix!r} has a '.' or '..' part")
        root = f"{self.prefix}/" if self.prefix else ""
        return root + prefix

    def relative(self, object_key: str) -> str:
        root = f"{self.prefix}/" if self.prefix else ""
        return object_key[len(root) :]


def parse_location(url: str) -> S3Location:
    """Parse ``LRT_STORAGE=s3://bucket/prefix``; ``ConfigError`` naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise ConfigError(f"LRT_STORAGE={url!r} is not an s3:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"LRT_STORAGE={url!r}: query strings are not read; set the endpoint, region and "
            "keys with LRT_S3_ENDPOINT_URL, LRT_S3_REGION, LRT_S3_ACCESS_KEY_ID, ..."
        )
    if "@" in parts.netloc:
        raise ConfigError(
            "LRT_STORAGE: credentials do not belong in the URL; use LRT_S3_ACCESS_KEY_ID "
            "and LRT_S3_SECRET_ACCESS_KEY (or R2_AWS_ACCESS_KEY_ID, R2_AWS_SECRET_ACCESS_KEY)"
        )
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"LRT_STORAGE={url!r} names no bucket: use s3://BUCKET/PREFIX")
    if not _BUCKET.match(bucket):
        raise ConfigError(
            f"LRT_STORAGE={url!r}: {bucket!r} is not a valid bucket name "
            "(3-63 characters: lower-case letters, digits, '.', '-')"
        )
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except StorageError as exc:
            raise ConfigError(f"LRT_STORAGE={url!r}: bad prefix: {exc}") from None
    return S3Location(bucket, prefix)


@dataclass(frozen=True)
class ClientSettings:
    """Everything needed to build the boto3 client (secret kept out of ``repr``)."""

    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    options: S3Options

    def __repr__(self) -> str:
        return (
            f"ClientSettings(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"access_key_id={'set' if self.access_key_id else None}, secret_access_key=***)"
        )

    @property
    def addressing_style(self) -> str:
        if self.options.addressing_style is not None:
            return self.options.addressing_style
        # Custom endpoints (MinIO, moto, most on-premise stores) rarely resolve bucket
        # sub-domains; path-style works on all of them, R2 included.
        return "path" if self.endpoint_url else "auto"

    def botocore_config(self, *, checksums: bool | None = None) -> Config:
        """The client's config; ``checksums=False`` turns off response checksum validation.

        Request checksums are never added by botocore on its own ("when_required"): lrtkit
        sends the ones it wants as plain headers, which more S3-compatible stores accept than
        botocore's default aws-chunked trailers.
        """
        from botocore.config import Config

        opts = self.options
        if checksums is None:
            checksums = opts.checksum == "crc32"
        kwargs: dict[str, Any] = {
            "retries": {"mode": "adaptive", "max_attempts": opts.max_attempts},
            "connect_timeout": opts.connect_timeout,
            "read_timeout": opts.read_timeout,
            "max_pool_connections": max(10, opts.max_concurrency * 2),
            "s3": {"addressing_style": self.addressing_style},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_supported" if checksums else "when_required",
            "tcp_keepalive": True,
            "user_agent_extra": "lrtkit",
        }
        if self.region:
            kwargs["region_name"] = self.region
        return Config(**kwargs)


def client_settings(settings: Settings) -> ClientSettings:
    """Endpoint, region and keys from ``LRT_S3_*`` / ``R2_*``; ``None`` = the AWS chain."""
    endpoint = settings.s3_endpoint_url or None
    if endpoint is not None:
        endpoint = endpoint.strip().rstrip("/")
        scheme = urlsplit(endpoint).scheme
        if scheme not in {"http", "https"} or not urlsplit(endpoint).netloc:
            raise ConfigError(
                f"LRT_S3_ENDPOINT_URL={endpoint!r} is not an http(s) URL "
                "(R2: https://ACCOUNT_ID.r2.cloudflarestorage.com)"
            )
    region = settings.s3_region or None
    if region is None and endpoint is not None and _R2_HOST in endpoint:
        region = "auto"  # R2 signs with the region "auto"
    key_id = settings.s3_access_key_id or None
    secret = settings.s3_secret_access_key
    secret_value = secret.get_secret_value() if secret is not None else None
    if bool(key_id) != bool(secret_value):
        missing = "LRT_S3_SECRET_ACCESS_KEY" if key_id else "LRT_S3_ACCESS_KEY_ID"
        raise ConfigError(
            f"{missing} is not set while its pair is: set both access key variables "
            "(or R2_AWS_ACCESS_KEY_ID and R2_AWS_SECRET_ACCESS_KEY), or neither to use "
            "the standard AWS credential chain"
        )
    options = settings.plugin_settings(S3Options)
    if options.multipart_chunk_mb > options.multipart_threshold_mb:
        raise ConfigError(
            f"LRT_S3_MULTIPART_CHUNK_MB ({options.multipart_chunk_mb}) is above "
            f"LRT_S3_MULTIPART_THRESHOLD_MB ({options.multipart_threshold_mb})"
        )
    return ClientSettings(endpoint, region, key_id, secret_value or None, options)
