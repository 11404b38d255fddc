"""S3-compatible stores that lack features or throttle: doctor detects them, lrtkit copes.

Some stores ignore ``If-Match`` / ``If-None-Match`` on PUT, or refuse them; some have no
``DeleteObjects``; all throttle. To have such stores, these tests put a small HTTP proxy in
front of moto that drops those two headers or answers them with 501, answers multi-object
deletes with 501, throttles every Nth request with 503 SlowDown, or answers conditional writes
with 409 as S3 does while another conditional write to the key is in flight (everything else
passes through unchanged).
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lrtkit.config import load_settings
from lrtkit.errors import PreconditionFailed, StorageConfigError
from lrtkit.plugins import load_storage
from lrtkit.storage.s3 import S3Storage

pytest.register_assert_rewrite("tests.s3_fixtures")

from tests.s3_fixtures import KEYS  # noqa: E402

pytest_plugins = ["tests.s3_fixtures"]

MiB = 1024 * 1024

_CONDITIONS = {"if-match", "if-none-match"}
_NOT_IMPLEMENTED = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code>"
    b"<Message>A header you provided implies functionality that is not implemented</Message>"
    b"</Error>"
)
_CONFLICT = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ConditionalRequestConflict</Code>"
    b"<Message>A conflicting operation occurred.</Message></Error>"
)
_NO_CHECKSUMS = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code>"
    b"<Message>Header 'x-amz-checksum-crc32' is not implemented</Message></Error>"
)
_SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Quirks:
    """How the proxy bends the store; ``injected`` counts the failures it made up."""

    drop_conditions: bool = False
    refuse_bulk_delete: bool = False
    slow_down_every: int = 0
    conflict_on_conditional: bool = False
    reject_conditions: bool = False
    reject_checksums: bool = False
    refused_checksums: int = 0
    requests: int = 0
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(upstream: str, quirks: Quirks) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            with quirks.lock:
                quirks.requests += 1
                throttle = quirks.slow_down_every and quirks.requests % quirks.slow_down_every == 0
                if throttle:
                    quirks.injected += 1
            if throttle:
                self._answer(503, _SLOW_DOWN)
                return
            conditional = any(k.lower() in _CONDITIONS for k in self.headers)
            if quirks.conflict_on_conditional and self.command == "PUT" and conditional:
                self._answer(409, _CONFLICT)
                return
            checksummed = any(
                k.lower().startswith(("x-amz-checksum", "x-amz-sdk-checksum", "x-amz-trailer"))
                for k in self.headers
            ) or "aws-chunked" in self.headers.get("Content-Encoding", "")
            if quirks.reject_checksums and checksummed:
                with quirks.lock:
                    quirks.refused_checksums += 1
                self._answer(501, _NO_CHECKSUMS)
                return
            if quirks.reject_conditions and self.command == "PUT" and conditional:
                self._answer(501, _NOT_IMPLEMENTED)
                return
            if quirks.refuse_bulk_delete and self.command == "POST" and "delete" in self.path:
                self._answer(501, _NOT_IMPLEMENTED)
                return
            dropped = _CONDITIONS if quirks.drop_conditions else set()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            finally:
                conn.close()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in {"transfer-encoding", "content-length", "connection"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Forward


@pytest.fixture
def quirky_store(
    s3_moto_url: str, s3_env: dict[str, str]
) -> Iterator[Callable[..., tuple[S3Storage, Quirks]]]:
    """Builds a storage on the test's prefix, reached through a proxy with the given quirks."""
    servers: list[ThreadingHTTPServer] = []

    def build(**options: Any) -> tuple[S3Storage, Quirks]:
        quirks = Quirks(**options)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s3_moto_url, quirks))
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = {
            **s3_env,
            "LRT_S3_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
            "LRT_S3_MULTIPART_THRESHOLD_MB": "5",
            "LRT_S3_MULTIPART_CHUNK_MB": "5",
        }
        storage = load_storage(load_settings(environ=env))
        assert isinstance(storage, S3Storage)
        return storage, quirks

    yield build
    for server in servers:
        server.shutdown()
        server.server_close()


def test_doctor_warns_when_the_store_ignores_conditions(
    quirky_store: Callable[..., tuple[S3Storage, Quirks]],
) -> None:
    storage, _ = quirky_store(drop_conditions=True)
    etag = storage.put("m", b"1")
    storage.put("m", b"2")
    storage.put("m", b"stale", if_match=etag)  # let through: this store cannot fence
    assert storage.get("m")[0] == b"stale"

    checks = {c.name: c for c in storage.diagnose()}
    assert checks["s3 read/write"].status == "ok"
    fencing = checks["conditional writes"]
    assert fencing.status == "warn"
    assert "If-Match, If-None-Match" in fencing.detail
    assert "fencing rests on the broker lease alone" in fencing.detail
    assert storage.endpoint in fencing.detail
    storage.delete("m")


def test_doctor_passes_on_a_store_that_enforces_them(s3_env: dict[str, str]) -> None:
    storage = load_storage(load_settings(environ=s3_env))
    checks = {c.name: c for c in storage.diagnose()}
    assert checks["conditional writes"].status == "ok"
    settings = checks["s3 settings"].detail
    assert "credentials: explicit" in settings
    assert KEYS["LRT_S3_ACCESS_KEY_ID"] not in settings


def test_delete_prefix_without_delete_objects(
    quirky_store: Callable[..., tuple[S3Storage, Quirks]],
) -> None:
    """A store without DeleteObjects (501): keys are deleted one by one instead."""
    storage, _ = quirky_store(refuse_bulk_delete=True)
    for i in range(5):
        storage.put(f"jobs/j/checkpoint/blobs/{i}", b"x")
    storage.put("jobs/k/record.json", b"{}")
    assert storage.delete_prefix("jobs/j/") == 5
    assert list(storage.list_keys("")) == ["jobs/k/record.json"]


def test_throttling_is_retried_with_backoff(
    quirky_store: Callable[..., tuple[S3Storage, Quirks]], tmp_path: Path
) -> None:
    """Every 5th request answered 503 SlowDown: every operation still succeeds."""
    storage, quirks = quirky_store(slow_down_every=5)
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(MiB) * 12)  # 3 parts of 5 MiB... and a bit
    for i in range(3):
        storage.put(f"small/{i}", str(i).encode())
    etag = storage.put("manifest", b"1", if_none_match=True)
    storage.put("manifest", b"2", if_match=etag)
    storage.upload_file("big", src)
    storage.download_file("big", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert [storage.get(f"small/{i}")[0] for i in range(3)] == [b"0", b"1", b"2"]
    assert storage.get("manifest")[0] == b"2"
    assert storage.delete_prefix("") == 5
    assert quirks.injected >= 4  # the store really did throttle


def test_conditional_request_conflict_is_a_lost_condition(
    quirky_store: Callable[..., tuple[S3Storage, Quirks]],
) -> None:
    """S3's 409 ConditionalRequestConflict (another conditional write in flight) loses too."""
    storage, _ = quirky_store(conflict_on_conditional=True)
    etag = storage.put("manifest", b"1")
    with pytest.raises(PreconditionFailed, match="ConditionalRequestConflict"):
        storage.put("manifest", b"2", if_match=etag)
    with pytest.raises(PreconditionFailed, match="ConditionalRequestConflict"):
        storage.put("other", b"2", if_none_match=True)
    assert storage.get("manifest")[0] == b"1"
    assert not storage.exists("other")
    storage.delete("manifest")


def test_store_rejecting_conditional_headers_is_a_config_error(
    quirky_store: Callable[..., tuple[S3Storage, Quirks]],
) -> None:
    """A store that answers If-Match with 501 never gets an unfenced write in its place."""
    storage, _ = quirky_store(reject_conditions=True)
    etag = storage.put("manifest", b"1")
    with pytest.raises(StorageConfigError, match="does not implement conditional writes"):
        storage.put("manifest", b"2", if_match=etag)
    assert storage.get("manifest")[0] == b"1"
    fencing = {c.name: c for c in storage.diagnose()}["conditional writes"]
    assert fencing.status == "warn"
    assert "does not implement conditional writes" in fencing.detail
    storage.delete("manifest")


def test_store_refusing_checksum_headers_still_gets_everything(
    quirky_store: Callable[..., tuple[S3Storage, Quirks]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checksum headers refused (as some stores did when boto3 1.36 began sending them):
    lrtkit resends without them, stops sending them, and still verifies downloads."""
    storage, quirks = quirky_store(reject_checksums=True)
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(MiB) * 12)
    small = tmp_path / "small.json"
    small.write_text('{"step": 1}')
    with caplog.at_level("WARNING", logger="lrtkit.storage.s3"):
        etag = storage.put("manifest", b"1", if_none_match=True)
        storage.put("manifest", b"2", if_match=etag)
        with pytest.raises(PreconditionFailed):
            storage.put("manifest", b"3", if_match=etag)
        storage.upload_file("small", small)
        storage.upload_file("big", src)
        storage.download_file("big", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert storage.get("manifest")[0] == b"2"
    assert quirks.refused_checksums >= 1
    warnings = [r.getMessage() for r in caplog.records if "refused checksum" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert storage.delete_prefix("") == 3

    fresh, quirks = quirky_store(reject_checksums=True)  # a multipart upload meets it first
    fresh.upload_file("big", src)
    assert quirks.refused_checksums >= 1
    fresh.download_file("big", tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == src.read_bytes()
    assert fresh.delete_prefix("") == 1
