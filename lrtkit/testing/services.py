"""Finding the real services tests run against.

Each service is found, in order: from an environment URL (``LRT_TEST_RABBITMQ_URL``,
``LRT_TEST_MOTO_URL``...), else started with testcontainers when a Docker engine answers (or,
for moto, as a local ``moto.server`` process), else the test is skipped, unless
``LRT_REQUIRE_BROKERS=1``, in which case it fails: CI never passes by skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NoReturn

import pytest


def brokers_required() -> bool:
    return os.environ.get("LRT_REQUIRE_BROKERS", "") == "1"


def service_unavailable(what: str) -> NoReturn:
    """Skip the test, or fail it when ``LRT_REQUIRE_BROKERS=1``."""
    message = f"{what} is not available"
    if brokers_required():
        pytest.fail(f"{message} and LRT_REQUIRE_BROKERS=1", pytrace=False)
    pytest.skip(message)


def docker_available() -> bool:
    """True when testcontainers is installed and a Docker engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means no engine
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback test server
                return
        except urllib.error.HTTPError:
            return  # it answered
        except Exception as exc:  # noqa: BLE001
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@contextmanager
def moto_server(extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A moto server (SQS, S3) reached over real HTTP; yields its endpoint URL.

    ``LRT_TEST_MOTO_URL`` points at a running one; otherwise one is started as a child process
    on a free loopback port (``pip install "moto[server]"``) and stopped afterwards, served by
    :mod:`lrtkit.testing.moto_runner` so S3 conditional writes are atomic as on S3 itself.
    ``extra_env`` (moto's own settings, e.g. ``INITIAL_NO_AUTH_ACTION_COUNT`` to enforce IAM)
    always starts a server of its own.
    """
    url = os.environ.get("LRT_TEST_MOTO_URL")
    if url and extra_env is None:
        yield url.rstrip("/")
        return
    try:
        import moto.server  # noqa: F401
    except ImportError:
        service_unavailable('moto server (pip install "moto[server]")')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrtkit.testing.moto_runner", str(port)],
        env={**os.environ, **(extra_env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/moto-api/")
        except TimeoutError:
            service_unavailable(f"moto server on port {port}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
