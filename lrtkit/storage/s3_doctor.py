"""``lrtkit doctor`` for the S3 storage: settings, bucket, a probe object, conditional writes.

The conditional-write probe matters most: some S3-compatible stores accept ``If-Match`` /
``If-None-Match`` and ignore them. lrtkit then still works, but a stale worker (one whose
lease ran out while it was still running) could overwrite a newer worker's checkpoint
manifest: fencing rests on the broker lease alone. The probe writes with a wrong etag and
over an existing object; a store that lets either through is reported.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lrtkit.broker import Check
from lrtkit.errors import LrtError, PreconditionFailed

if TYPE_CHECKING:
    from lrtkit.storage.s3 import S3Storage

_NO_FENCING = (
    "a stale worker could overwrite a newer checkpoint: fencing rests on the broker lease alone"
)


def describe(storage: S3Storage) -> str:
    """Bucket, prefix, endpoint, region, addressing and where the credentials come from."""
    meta = storage.client.meta
    style = storage.addressing_style
    return (
        f"bucket {storage.bucket}, prefix {storage.prefix!r}"
        f", endpoint {meta.endpoint_url}, region {meta.region_name}, {style} addressing, "
        f"credentials: {storage.credentials_source}"
    )


def diagnose(storage: S3Storage) -> list[Check]:
    checks = [Check("s3 settings", "ok", describe(storage))]
    if storage.credentials_source == "none found":
        checks.append(
            Check(
                "s3 credentials",
                "fail",
                "no S3 credentials found",
                "set LRT_S3_ACCESS_KEY_ID and LRT_S3_SECRET_ACCESS_KEY (or the guides' "
                "R2_AWS_ACCESS_KEY_ID and R2_AWS_SECRET_ACCESS_KEY)",
            )
        )
        return checks
    try:
        storage.check_bucket()
    except LrtError as exc:
        checks.append(Check("s3 bucket", "fail", str(exc), "create the bucket or fix access"))
        return checks
    checks.append(Check("s3 bucket", "ok", f"{storage.bucket} answers"))
    checks.extend(_probe(storage))
    checks.append(_lifecycle(storage))
    return checks


def _probe(storage: S3Storage) -> list[Check]:
    key = f"_lrtkit/doctor-probe-{uuid.uuid4().hex[:8]}"
    try:
        etag = storage.put(key, b"probe")
        data, _ = storage.get(key)
        listed = key in set(storage.list_keys("_lrtkit/"))
    except LrtError as exc:
        with contextlib.suppress(Exception):
            storage.delete(key)
        return [Check("s3 read/write", "fail", str(exc))]
    checks = []
    if data != b"probe" or not listed:
        checks.append(Check("s3 read/write", "fail", f"{storage.url}: probe read back wrong"))
    else:
        checks.append(Check("s3 read/write", "ok", f"{storage.url}: put, get, list"))
    ignored: list[str] = []
    attempts: tuple[tuple[str, Callable[[], str]], ...] = (
        ("If-Match", lambda: storage.put(key, b"stale", if_match=f'"{etag.strip(chr(34))}0"')),
        ("If-None-Match", lambda: storage.put(key, b"again", if_none_match=True)),
    )
    for name, attempt in attempts:
        try:
            attempt()
            ignored.append(name)
        except PreconditionFailed:
            pass
        except LrtError as exc:
            ignored.append(f"{name} ({exc})")
    if ignored:
        checks.append(
            Check(
                "conditional writes",
                "warn",
                f"{storage.endpoint} did not enforce {', '.join(ignored)}: {_NO_FENCING}",
                "use S3, R2 or MinIO >= 2024-11; keep LRT_LEASE_SECONDS well above "
                "the time a checkpoint save takes",
            )
        )
    else:
        checks.append(
            Check("conditional writes", "ok", "If-Match and If-None-Match enforced (fencing on)")
        )
    try:
        storage.delete(key)
    except LrtError as exc:
        checks.append(Check("s3 delete", "fail", str(exc)))
    else:
        checks.append(Check("s3 delete", "ok", "probe deleted"))
    return checks


def _lifecycle(storage: S3Storage) -> Check:
    """Warn when interrupted multipart uploads are never cleaned up (they are billed)."""
    rules: list[Any] = []
    try:
        answer = storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)
        rules = list(answer.get("Rules", []))
    except Exception as exc:  # noqa: BLE001 - optional check
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        if code != "NoSuchLifecycleConfiguration":
            return Check("s3 lifecycle", "ok", f"not checked ({code})")
    for rule in rules:
        if rule.get("Status") == "Enabled" and "AbortIncompleteMultipartUpload" in rule:
            return Check("s3 lifecycle", "ok", "incomplete multipart uploads are aborted")
    return Check(
        "s3 lifecycle",
        "warn",
        f"{storage.bucket} keeps the parts of interrupted multipart uploads forever "
        "(a worker killed mid-upload leaves them; they are billed)",
        "add a lifecycle rule AbortIncompleteMultipartUpload after 1-7 days",
    )
