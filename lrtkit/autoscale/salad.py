"""SaladCloud container groups through the public API (``lrtkit.scalers`` plugin ``salad``).

Endpoints (base ``LRT_SALAD_API_URL``, header ``Salad-Api-Key``)::

    GET   /organizations/{org}/projects/{project}/containers/{group}        replicas, state
    PATCH /organizations/{org}/projects/{project}/containers/{group}        {"replicas": n}
          (Content-Type: application/merge-patch+json)
    POST  /organizations/{org}/projects/{project}/containers/{group}/start
    POST  /organizations/{org}/projects/{project}/containers/{group}/stop

429 and 5xx answers (and network failures) are retried with exponential backoff and jitter,
waiting what ``Retry-After`` says when it says something. 401/403 and 404 are configuration
errors: :class:`~lrtkit.errors.ScalerConfigError` names the bad key, organisation, project or
container group (a 404 is narrowed down by asking for the project and the organisation).
A container group holds at most :data:`SALAD_REPLICA_LIMIT` replicas; more is clamped with a
warning.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from lrtkit.autoscale.http import HttpResponse, TransportError, request
from lrtkit.autoscale.provider import GroupState
from lrtkit.backoff import backoff
from lrtkit.errors import ScalerConfigError, ScalerError

if TYPE_CHECKING:
    from lrtkit.config import Settings

log = logging.getLogger("lrtkit.autoscale.salad")

DEFAULT_API_URL = "https://api.salad.com/api/public"
SALAD_REPLICA_LIMIT = 250
STOPPED_STATES = frozenset({"stopped", "failed"})
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
MERGE_PATCH = "application/merge-patch+json"


class SaladScaler:
    """Drives one SaladCloud container group."""

    name: ClassVar[str] = "salad"
    replica_limit: ClassVar[int] = SALAD_REPLICA_LIMIT
    persist_state: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: str,
        organization: str,
        project: str,
        container_group: str,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for variable, value in (
            ("LRT_SALAD_ORG", organization),
            ("LRT_SALAD_PROJECT", project),
            ("LRT_SALAD_CONTAINER_GROUP", container_group),
        ):
            if not NAME_PATTERN.match(value):
                raise ScalerConfigError(
                    f"{variable}={value!r} is not a SaladCloud name: 2-63 characters, lower-case "
                    "letters, digits and '-', starting with a letter (as shown in the portal URL)"
                )
        if not api_key.strip():
            raise ScalerConfigError("LRT_SALAD_API_KEY is empty: set your SaladCloud API key")
        self._api_key = api_key.strip()
        self.organization = organization
        self.project = project
        self.container_group = container_group
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> SaladScaler:
        api_key = settings.salad_api_key.get_secret_value() if settings.salad_api_key else ""
        values = {
            "LRT_SALAD_API_KEY": api_key,
            "LRT_SALAD_ORG": settings.salad_org,
            "LRT_SALAD_PROJECT": settings.salad_project,
            "LRT_SALAD_CONTAINER_GROUP": settings.salad_container_group,
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ScalerConfigError(
                f"the salad scaler needs {', '.join(missing)} "
                "(or use --provider dry-run to see decisions without SaladCloud)"
            )
        return cls(
            api_key=api_key,
            organization=str(settings.salad_org),
            project=str(settings.salad_project),
            container_group=str(settings.salad_container_group),
            base_url=settings.salad_api_url,
        )

    # -- the provider protocol -------------------------------------------------------------

    def describe(self) -> str:
        return f"SaladCloud {self.organization}/{self.project}/{self.container_group}"

    def get_state(self) -> GroupState:
        resp = self._call("GET", self._group_path(), "read the container group")
        body = resp.json()
        try:
            replicas = body["replicas"]
            status = body["current_state"]["status"]
        except (TypeError, KeyError):
            raise ScalerError(
                f"SaladCloud answered the container group request without replicas and "
                f"current_state.status: {resp.text()}"
            ) from None
        if not isinstance(replicas, int) or not isinstance(status, str):
            raise ScalerError(f"unexpected container group fields: {resp.text()}")
        return GroupState(replicas=replicas, running=status not in STOPPED_STATES, status=status)

    def set_replicas(self, replicas: int) -> None:
        if replicas > self.replica_limit:
            log.warning(
                "%d replicas requested; a SaladCloud container group holds at most %d: using %d",
                replicas,
                self.replica_limit,
                self.replica_limit,
            )
            replicas = self.replica_limit
        replicas = max(0, replicas)
        self._call(
            "PATCH",
            self._group_path(),
            f"set replicas to {replicas}",
            body={"replicas": replicas},
            content_type=MERGE_PATCH,
        )

    def start(self) -> None:
        self._call("POST", self._group_path() + "/start", "start the container group")

    def stop(self) -> None:
        self._call("POST", self._group_path() + "/stop", "stop the container group")

    # -- HTTP ------------------------------------------------------------------------------

    def _org_path(self) -> str:
        return f"/organizations/{_q(self.organization)}"

    def _project_path(self) -> str:
        return f"{self._org_path()}/projects/{_q(self.project)}"

    def _group_path(self) -> str:
        return f"{self._project_path()}/containers/{_q(self.container_group)}"

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        probe_on_404: bool = True,
    ) -> HttpResponse:
        """One API call with retries; 2xx or a clear error."""
        url = self.base_url + path
        headers = {"Salad-Api-Key": self._api_key}
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = request(
                    method,
                    url,
                    headers=headers,
                    json_body=body,
                    content_type=content_type,
                    timeout=self.timeout,
                )
            except TransportError as exc:
                last = str(exc)
                delay = self._backoff(attempt)
            else:
                if resp.ok:
                    return resp
                if resp.status in (401, 403):
                    raise ScalerConfigError(
                        f"SaladCloud refused the API key (HTTP {resp.status}) to {what} of "
                        f"{self.describe()}: check LRT_SALAD_API_KEY and that the key's user "
                        "belongs to the organisation"
                    )
                if resp.status == 404:
                    if probe_on_404:
                        raise self._not_found(what)
                    raise ScalerConfigError(f"SaladCloud has no {url} (HTTP 404)")
                if resp.status != 429 and resp.status < 500:
                    raise ScalerError(
                        f"SaladCloud refused to {what} of {self.describe()}: "
                        f"HTTP {resp.status} {resp.text()}"
                    )
                last = f"HTTP {resp.status} {resp.text(120)}"
                told = self._retry_after(resp)
                delay = told if told is not None else self._backoff(attempt)
            if attempt < self.max_attempts:
                log.warning(
                    "SaladCloud %s %s failed (%s); retry %d/%d in %.1fs",
                    method,
                    path,
                    last,
                    attempt,
                    self.max_attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise ScalerError(
            f"could not {what} of {self.describe()} after {self.max_attempts} attempts: {last}"
        )

    def _not_found(self, what: str) -> ScalerConfigError:
        """Which path element is missing: the organisation, the project or the group."""
        where = f"at {self.base_url}"
        try:
            self._call("GET", self._project_path(), "read the project", probe_on_404=False)
        except ScalerConfigError:
            try:
                self._call("GET", self._org_path() + "/projects", "list", probe_on_404=False)
            except ScalerConfigError:
                return ScalerConfigError(
                    f"SaladCloud organisation {self.organization!r} not found {where} (or the "
                    "API key has no access to it): check LRT_SALAD_ORG"
                )
            return ScalerConfigError(
                f"SaladCloud project {self.project!r} not found in organisation "
                f"{self.organization!r}: check LRT_SALAD_PROJECT"
            )
        except ScalerError:
            pass  # the probe itself failed; report what we know
        return ScalerConfigError(
            f"SaladCloud container group {self.container_group!r} not found in "
            f"{self.organization}/{self.project} (could not {what}): check "
            "LRT_SALAD_CONTAINER_GROUP"
        )

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, self.backoff, self.max_backoff)

    def _retry_after(self, resp: HttpResponse) -> float | None:
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        return float(min(max(0.0, seconds), self.max_retry_after))


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
