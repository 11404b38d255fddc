"""The boto3 SQS client, its botocore configuration, and botocore errors turned into lrtkit's.

Throttling and transient network errors are retried by botocore itself (``adaptive`` retry
mode: exponential backoff plus client-side rate limiting). What is left after the retries is
translated once, here, into lrtkit's error tree with a message that names what to fix: the
queue URL or name, the region, the credentials, or the IAM action that was denied.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from lrtkit.errors import BrokerConfigError, BrokerError, ConnectionLost, LeaseLost, LrtError

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient

    from lrtkit_sqs.settings import SqsSettings

NOT_FOUND = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "KMS.AccessDeniedException",
        "KmsAccessDenied",
    }
)
BAD_CREDENTIALS = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidAccessKeyId",
        "InvalidSecurity",
    }
)
STALE_HANDLE = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)
TRANSIENT = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestThrottled",
        "KmsThrottled",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
    }
)
_URL_REGION = re.compile(
    r"^https?://(?:sqs\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.(?:queue\.)?amazonaws"
)


def region_of_url(url: str | None) -> str | None:
    """The AWS region named by an SQS queue URL's host, or None (custom endpoints)."""
    if not url:
        return None
    match = _URL_REGION.match(url)
    return match.group(1) if match else None


_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def error_code(exc: ClientError) -> str:
    """The error code; also from an XML error body (emulators answer JSON calls with XML)."""
    err = exc.response.get("Error", {})
    code = str(err.get("QueryErrorCode") or err.get("Code") or "")
    if code.isdigit():
        found = _XML_CODE.search(str(err.get("Message", "")))
        if found:
            return found.group(1)
    return code


def error_message(exc: ClientError) -> str:
    text = str(exc.response.get("Error", {}).get("Message", "") or exc)
    found = _XML_MESSAGE.search(text)
    return found.group(1) if found else text


def iam_action(action: str) -> str:
    """The IAM action a client method needs (batch calls need the single action's permission)."""
    name = "".join(p.capitalize() for p in action.split("_")).removesuffix("Batch")
    return f"sqs:{name}"


def is_stale_handle(exc: ClientError) -> bool:
    code = error_code(exc)
    message = error_message(exc).lower()
    return code in STALE_HANDLE or (code == "InvalidParameterValue" and "receipt handle" in message)


class SqsApi:
    """One thread-safe boto3 SQS client plus the context needed to explain its errors."""

    def __init__(self, settings: SqsSettings, poll_seconds: int) -> None:
        self.settings = settings
        self.endpoint_url = settings.endpoint_url
        self._lock = threading.Lock()
        self._client: SQSClient | None = None
        self._region: str | None = None
        self._read_timeout = poll_seconds + 15  # a long poll must never look like a dead socket

    # -- the client ----------------------------------------------------------------------------

    @property
    def region(self) -> str:
        self.client  # noqa: B018 - resolves the region
        assert self._region is not None
        return self._region

    @property
    def client(self) -> SQSClient:
        with self._lock:
            if self._client is None:
                self._client, self._region = self._build()
            return self._client

    def _build(self) -> tuple[SQSClient, str]:
        s = self.settings
        url_region = region_of_url(s.queue_url)
        if s.region and url_region and s.region != url_region:
            raise BrokerConfigError(
                f"LRT_SQS_REGION={s.region} but the queue URL {s.queue_url} is in {url_region}: "
                "make them agree (or unset LRT_SQS_REGION)"
            )
        try:
            session = boto3.session.Session(
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=(
                    s.secret_access_key.get_secret_value() if s.secret_access_key else None
                ),
                aws_session_token=s.session_token.get_secret_value() if s.session_token else None,
                profile_name=s.profile,
            )
        except ProfileNotFound as exc:
            raise BrokerConfigError(f"LRT_SQS_PROFILE: {exc}") from None
        if bool(s.access_key_id) != bool(s.secret_access_key):
            raise BrokerConfigError(
                "set both LRT_SQS_ACCESS_KEY_ID and LRT_SQS_SECRET_ACCESS_KEY (or neither, to use "
                "the standard AWS credential chain)"
            )
        region = s.region or url_region or session.region_name
        if not region:
            raise BrokerConfigError(
                "no AWS region for SQS: set LRT_SQS_REGION (or SQS_AWS_REGION, or "
                "AWS_DEFAULT_REGION), or give the queue URL in LRT_SQS_QUEUE_URL"
            )
        config = Config(
            region_name=region,
            retries={"mode": "adaptive", "max_attempts": s.max_attempts},
            connect_timeout=s.connect_timeout,
            read_timeout=self._read_timeout,
            max_pool_connections=s.publish_threads + 8,
            user_agent_extra="lrtkit-sqs",
        )
        client = session.client("sqs", endpoint_url=s.endpoint_url, config=config)
        return client, region

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- calls -----------------------------------------------------------------------------------

    def call(self, action: str, what: str, **params: Any) -> dict[str, Any]:
        """Call the client method ``action`` (snake_case) and translate its errors.

        ``what`` names the queue for messages ("queue my-jobs.fifo").
        """
        method: Callable[..., dict[str, Any]] = getattr(self.client, action)
        try:
            return method(**params)
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc, action, what) from exc

    def translate(self, exc: Exception, action: str, what: str) -> LrtError:
        """One lrtkit error for a botocore error, naming what to fix."""
        iam = iam_action(action)
        where = f"{what} in region {self._region or '?'}"
        if self.endpoint_url:
            where += f" at {self.endpoint_url}"
        if isinstance(exc, ClientError):
            code = error_code(exc)
            message = error_message(exc)
            if code in NOT_FOUND:
                return BrokerConfigError(
                    f"{where}: the queue does not exist. Run `lrtkit setup` to create it, or fix "
                    "LRT_QUEUE / LRT_SQS_QUEUE_URL, or the region (LRT_SQS_REGION) if it lives "
                    "in another one"
                )
            if code in DENIED:
                return BrokerConfigError(
                    f"{where}: permission denied for {iam} ({message}). Allow {iam} on this "
                    "queue in the IAM policy of these credentials (see docs/sqs.md)"
                )
            if code in BAD_CREDENTIALS:
                return BrokerConfigError(
                    f"{where}: AWS rejected the credentials ({code}: {message}). Check "
                    "LRT_SQS_ACCESS_KEY_ID / LRT_SQS_SECRET_ACCESS_KEY (or SQS_AWS_*), or the "
                    "standard AWS credential chain"
                )
            if is_stale_handle(exc):
                return LeaseLost(f"{where}: the receipt handle is no longer valid ({message})")
            if code in TRANSIENT:
                return ConnectionLost(
                    f"{where}: {iam} still failed after {self.settings.max_attempts} attempts "
                    f"({code}: {message})"
                )
            return BrokerError(f"{where}: {iam} failed ({code}: {message})")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BrokerConfigError(
                f"{where}: no AWS credentials found. Set LRT_SQS_ACCESS_KEY_ID and "
                "LRT_SQS_SECRET_ACCESS_KEY (or SQS_AWS_*), or configure the standard AWS chain"
            )
        if isinstance(exc, NoRegionError):
            return BrokerConfigError("no AWS region for SQS: set LRT_SQS_REGION")
        if isinstance(
            exc,
            EndpointConnectionError
            | ConnectTimeoutError
            | ReadTimeoutError
            | ConnectionClosedError,
        ):
            return ConnectionLost(
                f"{where}: cannot reach SQS for {iam} after {self.settings.max_attempts} "
                f"attempts: {exc}"
            )
        return BrokerError(f"{where}: {iam} failed: {type(exc).__name__}: {exc}")


def visibility(seconds: float) -> int:
    """Seconds as SQS's whole-second visibility timeout (rounded up, 0..43200)."""
    return max(0, min(43200, math.ceil(seconds)))
