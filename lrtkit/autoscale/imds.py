"""The worker's side of SaladCloud: deletion cost and reallocation through the IMDS.

On a SaladCloud node the instance metadata service answers at ``LRT_SALAD_IMDS_URL``
(``http://169.254.169.254``) to requests carrying the header ``Metadata: true``. The worker
uses two of its endpoints:

* ``PUT /v1/deletion-cost`` with ``{"deletion_cost": n}``: when the autoscaler lowers the
  replica count, SaladCloud removes the instances with the lowest cost first. A busy node
  sets :data:`BUSY_DELETION_COST`, an idle one :data:`IDLE_DELETION_COST`, so scale-in takes
  idle machines and leaves running jobs alone.
* ``POST /v1/reallocate`` with ``{"reason": "..."}``: after ``LRT_SALAD_REALLOCATE_AFTER``
  consecutive job failures on this node (a bad GPU, a broken driver) the node asks to be
  moved to other hardware.

Requests go straight to the IMDS, never through ``http_proxy`` (SaladCloud requires it).
The IMDS is probed once (``GET /v1/status``, :data:`DETECT_TIMEOUT` seconds); off SaladCloud
the worker gets a no-op reporter at once. A reporter never raises into the worker: IMDS errors
are logged and the job goes on.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from lrtkit.autoscale.http import TransportError, request

if TYPE_CHECKING:
    from lrtkit.config import Settings

log = logging.getLogger("lrtkit.autoscale.imds")

BUSY_DELETION_COST = 1000
IDLE_DELETION_COST = 0
DETECT_TIMEOUT = 0.5
CALL_TIMEOUT = 2.0
DISABLED_URLS = frozenset({"", "off", "none", "false", "0"})


class NodeReporter(Protocol):
    """What the worker tells the node it runs on."""

    def busy(self) -> None:
        """A job started and this node now holds at least one job: deletion cost high."""

    def idle(self) -> None:
        """This node holds no job: deletion cost low."""

    def job_failed(self) -> None:
        """Count a failure; after ``LRT_SALAD_REALLOCATE_AFTER`` in a row, ask to reallocate."""

    def job_succeeded(self) -> None:
        """Reset the consecutive failure count."""


class NoopReporter:
    """The reporter off SaladCloud: does nothing."""

    def busy(self) -> None:
        pass

    def idle(self) -> None:
        pass

    def job_failed(self) -> None:
        pass

    def job_succeeded(self) -> None:
        pass


class SaladReporter:
    """Reports to a SaladCloud IMDS. Thread-safe; never raises.

    The deletion cost is sent only when it changes, so a worker going busy, busy, busy makes
    one request. If a request fails, the next call tries again.
    """

    def __init__(
        self,
        base_url: str,
        *,
        reallocate_after: int | None = None,
        busy_cost: int = BUSY_DELETION_COST,
        idle_cost: int = IDLE_DELETION_COST,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reallocate_after = reallocate_after
        self.busy_cost = busy_cost
        self.idle_cost = idle_cost
        self.timeout = timeout
        self._lock = threading.Lock()
        self._cost: int | None = None
        self._failures = 0
        self._reallocation_requested = False

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def busy(self) -> None:
        self._set_cost(self.busy_cost)

    def idle(self) -> None:
        self._set_cost(self.idle_cost)

    def job_succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def job_failed(self) -> None:
        with self._lock:
            self._failures += 1
            failures = self._failures
            due = (
                self.reallocate_after is not None
                and failures >= self.reallocate_after
                and not self._reallocation_requested
            )
            if not due:
                return
            reason = f"lrtkit: {failures} consecutive job failures on this node"
            if self._call("POST", "/v1/reallocate", {"reason": reason}):
                self._reallocation_requested = True
                log.warning("asked SaladCloud to reallocate this node (%s)", reason)

    def _set_cost(self, cost: int) -> None:
        with self._lock:
            if self._cost == cost:
                return
            if self._call("PUT", "/v1/deletion-cost", {"deletion_cost": cost}):
                self._cost = cost
                log.debug("deletion cost set to %d", cost)

    def _call(self, method: str, path: str, body: object) -> bool:
        url = self.base_url + path
        try:
            resp = request(
                method,
                url,
                headers={"Metadata": "true"},
                json_body=body,
                timeout=self.timeout,
                use_proxy=False,
            )
        except TransportError as exc:
            log.warning("SaladCloud IMDS did not answer %s %s: %s", method, path, exc)
            return False
        except Exception:  # a reporter must never break the worker
            log.exception("SaladCloud IMDS call %s %s failed", method, path)
            return False
        if not resp.ok:
            log.warning(
                "SaladCloud IMDS refused %s %s: HTTP %d %s", method, path, resp.status, resp.text()
            )
            return False
        return True


def imds_available(base_url: str, timeout: float = DETECT_TIMEOUT) -> bool:
    """True when a SaladCloud IMDS answers ``GET /v1/status`` at ``base_url``."""
    if base_url.strip().lower() in DISABLED_URLS:
        return False
    try:
        resp = request(
            "GET",
            base_url.rstrip("/") + "/v1/status",
            headers={"Metadata": "true"},
            timeout=timeout,
            use_proxy=False,
        )
    except Exception:  # noqa: BLE001 - any failure means no IMDS here
        return False
    return resp.ok


def node_reporter(settings: Settings) -> NodeReporter:
    """A :class:`SaladReporter` when the IMDS answers, else a :class:`NoopReporter`.

    Checked once, with a short timeout. Never raises. ``LRT_SALAD_IMDS_URL=off`` skips the probe.
    """
    try:
        url = settings.salad_imds_url
        if imds_available(url):
            log.info("SaladCloud IMDS found at %s: reporting deletion cost", url)
            return SaladReporter(url, reallocate_after=settings.salad_reallocate_after)
    except Exception:  # never break the worker's start
        log.exception("probing the SaladCloud IMDS failed; node reporting is off")
    return NoopReporter()
