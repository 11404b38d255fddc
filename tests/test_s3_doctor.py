"""S3-compatible stores that lack features: doctor detects them, lrtkit copes.

Some stores accept ``If-Match`` / ``If-None-Match`` on PUT and ignore them; some have no
``DeleteObjects``. To have such stores, these tests put a small HTTP proxy in front of moto
that drops those two headers, or answers multi-object deletes with 501 (everything else
passes through unchanged).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from lrtkit.config import load_settings
from lrtkit.plugins import load_storage
from lrtkit.storage.s3 import S3Storage

pytest.register_assert_rewrite("tests.s3_fixtures")

from tests.s3_fixtures import KEYS  # noqa: E402

pytest_plugins = ["tests.s3_fixtures"]

_DROPPED = {"if-match", "if-none-match"}


def _handler(upstream: str, *, refuse_bulk_delete: bool) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if refuse_bulk_delete and self.command == "POST" and "delete" in self.path:
                refusal = (
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code>"
                    b"<Message>A header you provided implies functionality that is not "
                    b"implemented</Message></Error>"
                )
                self.send_response(501)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(refusal)))
                self.end_headers()
                self.wfile.write(refusal)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROPPED}
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


@pytest.fixture(params=[False])
def header_dropping_endpoint(s3_moto_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), _handler(s3_moto_url, refuse_bulk_delete=request.param)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_doctor_warns_when_the_store_ignores_conditions(
    header_dropping_endpoint: str, s3_env: dict[str, str]
) -> None:
    storage = load_storage(
        load_settings(environ={**s3_env, "LRT_S3_ENDPOINT_URL": header_dropping_endpoint})
    )
    assert isinstance(storage, S3Storage)
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
    assert header_dropping_endpoint in fencing.detail
    storage.delete("m")


def test_doctor_passes_on_a_store_that_enforces_them(s3_env: dict[str, str]) -> None:
    storage = load_storage(load_settings(environ=s3_env))
    checks = {c.name: c for c in storage.diagnose()}
    assert checks["conditional writes"].status == "ok"
    settings = checks["s3 settings"].detail
    assert "credentials: explicit" in settings
    assert KEYS["LRT_S3_ACCESS_KEY_ID"] not in settings


@pytest.mark.parametrize("header_dropping_endpoint", [True], indirect=True)
def test_delete_prefix_without_delete_objects(
    header_dropping_endpoint: str, s3_env: dict[str, str]
) -> None:
    """A store without DeleteObjects (501): keys are deleted one by one instead."""
    storage = load_storage(
        load_settings(environ={**s3_env, "LRT_S3_ENDPOINT_URL": header_dropping_endpoint})
    )
    for i in range(5):
        storage.put(f"jobs/j/checkpoint/blobs/{i}", b"x")
    storage.put("jobs/k/record.json", b"{}")
    assert storage.delete_prefix("jobs/j/") == 5
    assert list(storage.list_keys("")) == ["jobs/k/record.json"]
