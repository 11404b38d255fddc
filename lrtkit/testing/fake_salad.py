"""Fake SaladCloud services over real HTTP, for tests: the public API and the IMDS.

Each fake is a real HTTP server on a free loopback port (``http.server`` in a thread) that
keeps state, so a test sees what a client would: a container group that is started, stopped
and resized; a node's deletion cost and its reallocation requests. Both log every call and
can be told to fail the next requests (``fail_next(429, times=2, retry_after=0)``)::

    with FakeSaladAPI() as api:
        api.add_group("workers", replicas=0, status="stopped")
        env = api.environ()            # LRT_SALAD_API_URL, _API_KEY, _ORG, _PROJECT, ...
        ...
        assert api.group("workers").status == "running"

    with FakeIMDS() as imds:
        ...  LRT_SALAD_IMDS_URL=imds.url
        assert imds.deletion_cost == 1000
"""

from __future__ import annotations

import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any, dict[str, str]]


@dataclass(frozen=True)
class Call:
    """One request the fake received, and the status it answered."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    status: int


@dataclass
class _Failure:
    status: int
    times: int
    retry_after: str | None
    method: str | None
    path_suffix: str | None


class FakeHTTPServer(ABC):
    """A threaded loopback HTTP server calling ``self.handle`` for every request."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.RLock()
        self._failures: list[_Failure] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self._dispatch))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeHTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: float | str | None = None,
        method: str | None = None,
        path_suffix: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (and Retry-After)."""
        with self.lock:
            self._failures.append(
                _Failure(
                    status,
                    times,
                    None if retry_after is None else str(retry_after),
                    method.upper() if method else None,
                    path_suffix,
                )
            )

    def calls_to(self, method: str, path_suffix: str = "") -> list[Call]:
        """Calls with this method whose path ends with ``path_suffix``."""
        with self.lock:
            return [
                c for c in self.calls if c.method == method.upper() and c.path.endswith(path_suffix)
            ]

    @abstractmethod
    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        """Answer one request: status, JSON body (or None), extra headers."""

    def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self.lock:
            reply = self._injected(method, path)
            if reply is None:
                reply = self.handle(method, path, headers, body)
            self.calls.append(Call(method, path, body, headers, reply[0]))
        return reply

    def _injected(self, method: str, path: str) -> Reply | None:
        for failure in self._failures:
            if failure.method and failure.method != method:
                continue
            if failure.path_suffix and not path.endswith(failure.path_suffix):
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            extra = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return failure.status, {"title": "injected failure", "status": failure.status}, extra
        return None


def _make_handler(
    dispatch: Callable[[str, str, dict[str, str], bytes], Reply],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = dispatch(self.command, self.path, headers, raw)
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if data:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# -- the SaladCloud public API ----------------------------------------------------------------


@dataclass
class FakeGroup:
    """A container group: its replica count and status (``stopped``, ``running``...)."""

    name: str
    replicas: int = 0
    status: str = "stopped"
    history: list[str] = field(default_factory=list)


REPLICA_LIMIT = 250
_PREFIX = "/api/public"
_ORG = re.compile(r"^/organizations/([^/]+)(/.*)?$")
_PROJECT = re.compile(r"^/projects/([^/]+)(/.*)?$")
_GROUP = re.compile(r"^/containers/([^/]+)(/start|/stop)?$")


class FakeSaladAPI(FakeHTTPServer):
    """The container-group part of the SaladCloud public API, with state."""

    def __init__(
        self,
        *,
        api_key: str = "test-salad-key",
        organization: str = "acme",
        project: str = "lrt-project",
    ) -> None:
        self.api_key = api_key
        self.organization = organization
        self.project = project
        self.groups: dict[str, FakeGroup] = {}
        super().__init__()

    def __enter__(self) -> FakeSaladAPI:
        return self

    @property
    def url(self) -> str:
        """The API base URL (what ``LRT_SALAD_API_URL`` takes)."""
        return self.root + _PREFIX

    def add_group(self, name: str, replicas: int = 0, status: str = "stopped") -> FakeGroup:
        with self.lock:
            self.groups[name] = FakeGroup(name, replicas, status)
            return self.groups[name]

    def group(self, name: str) -> FakeGroup:
        with self.lock:
            return self.groups[name]

    def environ(self, group: str = "workers", **overrides: str) -> dict[str, str]:
        """``LRT_SALAD_*`` variables pointing at this fake (``overrides`` win)."""
        env = {
            "LRT_SALAD_API_URL": self.url,
            "LRT_SALAD_API_KEY": self.api_key,
            "LRT_SALAD_ORG": self.organization,
            "LRT_SALAD_PROJECT": self.project,
            "LRT_SALAD_CONTAINER_GROUP": group,
        }
        env.update(overrides)
        return env

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if headers.get("salad-api-key") != self.api_key:
            return 401, {"title": "Unauthorized", "status": 401}, {}
        if not path.startswith(_PREFIX):
            return _not_found(path)
        org = _ORG.match(path[len(_PREFIX) :])
        if org is None or org.group(1) != self.organization:
            return _not_found(path)
        rest = org.group(2) or ""
        if rest == "/projects" and method == "GET":
            return 200, {"items": [{"name": self.project}]}, {}
        project = _PROJECT.match(rest)
        if project is None or project.group(1) != self.project:
            return _not_found(path)
        rest = project.group(2) or ""
        if rest == "" and method == "GET":
            return 200, {"name": self.project, "organization_name": self.organization}, {}
        group_match = _GROUP.match(rest)
        if group_match is None or group_match.group(1) not in self.groups:
            return _not_found(path)
        group = self.groups[group_match.group(1)]
        action = group_match.group(2)
        if action is None and method == "GET":
            return 200, self._group_json(group), {}
        if action is None and method == "PATCH":
            return self._patch(group, headers, body)
        if action == "/start" and method == "POST":
            group.status = "running"
            group.history.append("start")
            return 202, None, {}
        if action == "/stop" and method == "POST":
            group.status = "stopped"
            group.history.append("stop")
            return 202, None, {}
        return 405, {"title": "Method Not Allowed", "status": 405}, {}

    def _patch(self, group: FakeGroup, headers: dict[str, str], body: Any) -> Reply:
        if headers.get("content-type", "").split(";")[0].strip() != "application/merge-patch+json":
            return 415, {"title": "Unsupported Media Type", "status": 415}, {}
        replicas = body.get("replicas") if isinstance(body, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            return 400, {"title": "Bad Request", "detail": "replicas must be an integer"}, {}
        if not 0 <= replicas <= REPLICA_LIMIT:
            detail = f"replicas must be between 0 and {REPLICA_LIMIT}"
            return 400, {"title": "Bad Request", "detail": detail}, {}
        group.replicas = replicas
        group.history.append(f"replicas={replicas}")
        return 200, self._group_json(group), {}

    def _group_json(self, group: FakeGroup) -> dict[str, Any]:
        return {
            "name": group.name,
            "organization_name": self.organization,
            "project_name": self.project,
            "replicas": group.replicas,
            "current_state": {"status": group.status},
        }


def _not_found(path: str) -> Reply:
    return 404, {"title": "Not Found", "status": 404, "detail": path}, {}


# -- the SaladCloud IMDS ----------------------------------------------------------------------


class FakeIMDS(FakeHTTPServer):
    """A node's instance metadata service: deletion cost, reallocation, status, token."""

    def __init__(self) -> None:
        self.deletion_cost: int = 0
        self.cost_history: list[int] = []
        self.reallocations: list[str] = []
        super().__init__()

    def __enter__(self) -> FakeIMDS:
        return self

    @property
    def url(self) -> str:
        """What ``LRT_SALAD_IMDS_URL`` takes."""
        return self.root

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if headers.get("metadata", "").lower() != "true":
            detail = "the Metadata: true header is missing"
            return 403, {"title": "Forbidden", "detail": detail}, {}
        if path == "/v1/status" and method == "GET":
            return 200, {"ready": True, "started": True}, {}
        if path == "/v1/token" and method == "GET":
            return 200, {"jwt": "fake.jwt.token"}, {}
        if path == "/v1/deletion-cost" and method == "GET":
            return 200, {"deletion_cost": self.deletion_cost}, {}
        if path == "/v1/deletion-cost" and method == "PUT":
            cost = body.get("deletion_cost") if isinstance(body, dict) else None
            if not isinstance(cost, int) or isinstance(cost, bool):
                return (
                    400,
                    {"title": "Bad Request", "detail": "deletion_cost must be an integer"},
                    {},
                )
            self.deletion_cost = cost
            self.cost_history.append(cost)
            return 204, None, {}
        if path == "/v1/reallocate" and method == "POST":
            reason = body.get("reason") if isinstance(body, dict) else None
            if not isinstance(reason, str) or not reason:
                return 400, {"title": "Bad Request", "detail": "reason is required"}, {}
            self.reallocations.append(reason)
            return 202, None, {}
        return _not_found(path)
