"""botocore errors turned into lrtkit's, with messages naming the bucket, key and action.

By the time an error gets here botocore has already retried what is worth retrying
(throttling, 5xx, timeouts, dropped connections, with adaptive backoff). What is left is
either the answer (missing key, lost condition) or something a person must fix (missing
bucket, denied access, bad credentials, wrong region, unreachable endpoint): that becomes
one :class:`~lrtkit.errors.StorageConfigError` that says which.
"""

from __future__ import annotations

from typing import Any

from lrtkit.errors import NotFound, PreconditionFailed, StorageConfigError, StorageError

# What IAM (or an R2 API token) must allow for each S3 operation lrtkit makes.
_ACTIONS = {
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
}

_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "AuthorizationHeaderMalformed",
}
_CONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def iam_action(operation: str) -> str:
    return _ACTIONS.get(operation, f"s3:{operation}")


def client_error_code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a botocore ``ClientError`` (``("", 0)`` if none)."""
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def translate(
    exc: BaseException,
    *,
    operation: str,
    bucket: str,
    object_key: str | None,
    storage_key: str | None = None,
    endpoint: str | None = None,
    conditional: bool = False,
) -> Exception:
    """The lrtkit error for ``exc`` raised by ``operation`` on ``bucket``/``object_key``."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    action = iam_action(operation)
    where = f"{bucket}/{object_key}" if object_key else bucket
    at = f" at {endpoint}" if endpoint else ""
    head = f"{action} on {where}{at}"

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageConfigError(
            f"{head}: no S3 credentials found: set LRT_S3_ACCESS_KEY_ID and "
            "LRT_S3_SECRET_ACCESS_KEY (or R2_AWS_ACCESS_KEY_ID and R2_AWS_SECRET_ACCESS_KEY), "
            "or configure the AWS credential chain (AWS_PROFILE, instance role)"
        )
    if isinstance(exc, EndpointConnectionError):
        return StorageConfigError(
            f"{head}: cannot reach the endpoint ({exc}); check LRT_S3_ENDPOINT_URL "
            "(R2_S3_ENDPOINT_URL) and the network"
        )
    if isinstance(exc, ConnectionError | HTTPClientError):
        return StorageError(f"{head}: connection failed after retries: {exc}")
    if not isinstance(exc, ClientError):
        return StorageError(f"{head}: {type(exc).__name__}: {exc}")

    code, status = client_error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    bucket_404 = operation == "HeadBucket" and status == 404
    if code == "NoSuchBucket" or bucket_404:
        return StorageConfigError(
            f"{head}: bucket {bucket!r} does not exist: create it, or fix LRT_STORAGE "
            "(R2_BUCKET_NAME) and LRT_S3_ENDPOINT_URL"
        )
    if code in _CONDITION or status == 412 or (conditional and status == 409):
        return PreconditionFailed(f"{head}: the conditional write lost ({code or status})")
    if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
        if conditional:
            return PreconditionFailed(f"{head}: the object to replace is gone ({code})")
        return NotFound(storage_key if storage_key is not None else (object_key or bucket))
    if code in _BAD_CREDENTIALS:
        return StorageConfigError(
            f"{head}: credentials rejected ({code}: {message}); check LRT_S3_ACCESS_KEY_ID, "
            "LRT_S3_SECRET_ACCESS_KEY (R2_AWS_*) and, for AuthorizationHeaderMalformed, "
            "LRT_S3_REGION ('auto' for R2)"
        )
    if code in {"403", "Forbidden"}:  # a HEAD answer carries no reason
        return StorageConfigError(
            f"{head}: access denied or credentials rejected (HTTP 403); check the keys "
            "(LRT_S3_ACCESS_KEY_ID, R2_AWS_ACCESS_KEY_ID...) and that they allow "
            f"{action} on {bucket}"
        )
    if code in _DENIED or status == 403:
        return StorageConfigError(
            f"{head}: access denied ({code or status}); the credentials need {action} on "
            f"arn:aws:s3:::{bucket}/* (an R2 API token needs Object Read & Write on {bucket})"
        )
    if code in {"PermanentRedirect", "301", "IllegalLocationConstraintException"}:
        return StorageConfigError(
            f"{head}: the bucket is in another region ({code}); set LRT_S3_REGION to it"
        )
    if conditional and (code == "NotImplemented" or status == 501):
        return StorageConfigError(
            f"{head}: the endpoint does not implement conditional writes ({code}: {message}); "
            "lrtkit needs If-Match / If-None-Match on PutObject to fence stale workers: "
            "use S3, R2 or MinIO >= 2024-11"
        )
    if code in {"InvalidBucketName", "InvalidArgument", "InvalidRequest", "BadDigest"}:
        return StorageError(f"{head}: rejected ({code}: {message})")
    return StorageError(f"{head}: {code or status}: {message}")
