"""The worker's SaladCloud node reporter against a fake IMDS over real HTTP."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from lrtkit.autoscale.imds import (
    BUSY_DELETION_COST,
    IDLE_DELETION_COST,
    NodeReporter,
    NoopReporter,
    SaladReporter,
    node_reporter,
)
from lrtkit.config import load_settings
from lrtkit.testing.fake_salad import FakeIMDS
from lrtkit.testing.services import free_port


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS() as fake:
        yield fake


def reporter_for(url: str, **env: str) -> NodeReporter:
    return node_reporter(load_settings(environ={"LRT_SALAD_IMDS_URL": url, **env}))


def test_detects_the_imds_and_sets_deletion_cost(imds: FakeIMDS) -> None:
    reporter = reporter_for(imds.url)
    assert isinstance(reporter, SaladReporter)
    reporter.busy()
    assert imds.deletion_cost == BUSY_DELETION_COST
    reporter.busy()  # still busy (a second job): no new request
    reporter.idle()
    assert imds.deletion_cost == IDLE_DELETION_COST
    assert imds.cost_history == [BUSY_DELETION_COST, IDLE_DELETION_COST]
    assert BUSY_DELETION_COST > IDLE_DELETION_COST
    puts = imds.calls_to("PUT", "/v1/deletion-cost")
    assert puts[0].body == {"deletion_cost": BUSY_DELETION_COST}
    assert all(c.headers["metadata"] == "true" for c in imds.calls)


def test_reallocates_after_n_consecutive_failures(imds: FakeIMDS) -> None:
    reporter = reporter_for(imds.url, LRT_SALAD_REALLOCATE_AFTER="3")
    assert isinstance(reporter, SaladReporter)
    reporter.job_failed()
    reporter.job_failed()
    reporter.job_succeeded()  # resets the count
    reporter.job_failed()
    reporter.job_failed()
    assert imds.reallocations == []
    reporter.job_failed()
    assert len(imds.reallocations) == 1
    assert "3 consecutive job failures" in imds.reallocations[0]
    reporter.job_failed()  # asked once; the node is going away
    assert len(imds.reallocations) == 1


def test_never_reallocates_without_the_setting(imds: FakeIMDS) -> None:
    reporter = reporter_for(imds.url)
    for _ in range(20):
        reporter.job_failed()
    assert imds.reallocations == []


def test_imds_errors_never_reach_the_worker(
    imds: FakeIMDS, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = reporter_for(imds.url, LRT_SALAD_REALLOCATE_AFTER="1")
    imds.fail_next(500, times=1, method="PUT")
    with caplog.at_level(logging.WARNING, logger="lrtkit"):
        reporter.busy()  # refused: logged, not raised
    assert imds.deletion_cost == 0
    assert "HTTP 500" in caplog.text
    reporter.busy()  # the next call tries again
    assert imds.deletion_cost == BUSY_DELETION_COST
    imds.fail_next(503, times=1, method="POST")
    reporter.job_failed()  # reallocation refused: retried on the next failure
    assert imds.reallocations == []
    reporter.job_failed()
    assert len(imds.reallocations) == 1
    imds.close()  # the IMDS goes away entirely
    reporter.idle()
    reporter.job_failed()


def test_no_imds_gives_a_noop_reporter_fast() -> None:
    started = time.monotonic()
    reporter = reporter_for(f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert isinstance(reporter, NoopReporter)
    reporter.busy()
    reporter.idle()
    reporter.job_failed()
    reporter.job_succeeded()
    assert time.monotonic() - started < 5


def test_a_silent_address_times_out_quickly() -> None:
    # a socket that accepts connections but never answers: only the timeout ends the probe
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        reporter = reporter_for(f"http://127.0.0.1:{port}")
        elapsed = time.monotonic() - started
    assert isinstance(reporter, NoopReporter)
    assert elapsed < 5  # the 0.5 s probe timeout, far from a default socket timeout


def test_an_http_server_that_is_not_an_imds_is_not_used(imds: FakeIMDS) -> None:
    imds.fail_next(404, method="GET", path_suffix="/v1/status")
    assert isinstance(reporter_for(imds.url), NoopReporter)


@pytest.mark.parametrize("value", ["off", "", "none"])
def test_probe_can_be_switched_off(value: str) -> None:
    assert isinstance(reporter_for(value), NoopReporter)


def test_proxy_settings_are_bypassed(imds: FakeIMDS, monkeypatch: pytest.MonkeyPatch) -> None:
    # a proxy that does not exist: any request sent through it would fail
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    reporter = reporter_for(imds.url)
    assert isinstance(reporter, SaladReporter)
    reporter.busy()
    assert imds.deletion_cost == BUSY_DELETION_COST
