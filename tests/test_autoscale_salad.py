"""The autoscaler end to end: real local broker and file storage, fake SaladCloud API over HTTP."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrtkit.autoscale.autoscaler import Autoscaler
from lrtkit.autoscale.decision import AutoscaleConfig, Decision
from lrtkit.autoscale.salad import SaladScaler
from lrtkit.autoscale.state import StateStore, state_key
from lrtkit.broker import Message
from lrtkit.brokers.local import LocalBroker
from lrtkit.config import Settings, load_settings
from lrtkit.errors import ScalerConfigError, ScalerError
from lrtkit.plugins import load_broker, load_storage
from lrtkit.testing import unique_name
from lrtkit.testing.fake_salad import FakeSaladAPI

GROUP = "workers"


@pytest.fixture
def api() -> Iterator[FakeSaladAPI]:
    with FakeSaladAPI() as fake:
        yield fake


@pytest.fixture
def env(api: FakeSaladAPI, tmp_path: Path) -> dict[str, str]:
    return {
        "LRT_BROKER": "local",
        "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
        "LRT_QUEUE": unique_name(),
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        "LRT_AUTOSCALE_PROVIDER": "salad",
        "LRT_AUTOSCALE_MAX": "10",
        "LRT_AUTOSCALE_COOLDOWN": "300",
        **api.environ(GROUP),
    }


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def publish(settings: Settings, count: int) -> None:
    broker = load_broker(settings)
    try:
        broker.publish(
            [
                Message(f"job-{i}", json.dumps({"job_id": f"job-{i}", "steps": 1}).encode())
                for i in range(count)
            ]
        )
    finally:
        broker.close()


def fast_scaler(settings: Settings, **kw: float) -> SaladScaler:
    """The salad scaler with short backoff, for tests that make it retry."""
    base = SaladScaler.from_settings(settings)
    return SaladScaler(
        api_key=settings.salad_api_key.get_secret_value() if settings.salad_api_key else "",
        organization=base.organization,
        project=base.project,
        container_group=base.container_group,
        base_url=base.base_url,
        backoff=0.01,
        **kw,  # type: ignore[arg-type]
    )


def autoscaler(settings: Settings, clock: Clock, scaler: SaladScaler | None = None) -> Autoscaler:
    """A fresh autoscaler, as one ``--once`` run would build it."""
    if scaler is None:
        auto = Autoscaler.from_settings(settings)
    else:
        auto = Autoscaler(
            broker=load_broker(settings),
            provider=scaler,
            config=AutoscaleConfig.from_settings(settings),
            queue=settings.queue,
            store=StateStore(load_storage(settings), settings.queue),
            provider_name="salad",
        )
    auto.clock = clock
    return auto


def test_starts_a_stopped_group_when_work_waits(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=0, status="stopped")
    settings = load_settings(environ=env)
    publish(settings, 3)
    with autoscaler(settings, Clock()) as auto:
        decision = auto.run_once()
    assert (decision.waiting, decision.in_flight, decision.action) == (3, 0, "start")
    group = api.group(GROUP)
    assert (group.status, group.replicas) == ("running", 3)
    # replicas first, then start: the group never comes up at a stale size
    assert group.history == ["replicas=3", "start"]
    patch = api.calls_to("PATCH")[0]
    assert patch.body == {"replicas": 3}
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.headers["salad-api-key"] == api.api_key


def test_scales_up_a_running_group_without_restarting(
    api: FakeSaladAPI, env: dict[str, str]
) -> None:
    api.add_group(GROUP, replicas=1, status="running")
    settings = load_settings(environ=env)
    publish(settings, 5)
    with autoscaler(settings, Clock()) as auto:
        decision = auto.run_once()
    assert (decision.current, decision.desired, decision.action) == (1, 5, "scale_up")
    assert api.group(GROUP).history == ["replicas=5"]
    assert api.calls_to("POST") == []


def test_stops_at_zero_only_after_the_cooldown_across_once_runs(
    api: FakeSaladAPI, env: dict[str, str]
) -> None:
    api.add_group(GROUP, replicas=3, status="running")
    settings = load_settings(environ=env)
    clock = Clock()
    actions = []
    for advance in (0, 200, 99, 1):  # t = 0, 200, 299, 300 seconds
        clock.now += advance
        with autoscaler(settings, clock) as auto:  # a new process every time
            actions.append(auto.run_once().action)
    assert actions == ["cooldown", "cooldown", "cooldown", "stop"]
    group = api.group(GROUP)
    assert group.status == "stopped"
    assert group.history == ["stop"]
    stored = load_storage(settings).get(state_key(settings.queue))[0]
    assert json.loads(stored)["last_action"] == "stop"


def test_never_scales_below_jobs_in_flight(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=8, status="running")
    settings = load_settings(environ={**env, "LRT_AUTOSCALE_COOLDOWN": "0"})
    publish(settings, 2)
    broker = LocalBroker(settings.local_db, settings.queue)
    held = [broker.receive(0), broker.receive(0)]
    assert all(held)
    with autoscaler(settings, Clock()) as auto:
        decision = auto.run_once()
    assert (decision.waiting, decision.in_flight) == (0, 2)
    assert (decision.desired, decision.action) == (2, "scale_down")
    assert api.group(GROUP).replicas == 2
    assert api.group(GROUP).status == "running"
    broker.close()


def test_min_replicas_keep_the_group_running(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=4, status="running")
    settings = load_settings(
        environ={**env, "LRT_AUTOSCALE_MIN": "1", "LRT_AUTOSCALE_COOLDOWN": "0"}
    )
    with autoscaler(settings, Clock()) as auto:
        decision = auto.run_once()
    assert (decision.desired, decision.action) == (1, "scale_down")
    assert (api.group(GROUP).replicas, api.group(GROUP).status) == (1, "running")


def test_429_is_retried_and_retry_after_respected(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=0, status="stopped")
    settings = load_settings(environ=env)
    publish(settings, 2)
    api.fail_next(429, times=2, retry_after=0, method="GET")
    api.fail_next(429, times=1, retry_after=1, method="PATCH")
    started = time.monotonic()
    with autoscaler(settings, Clock(), fast_scaler(settings)) as auto:
        decision = auto.run_once()
    elapsed = time.monotonic() - started
    assert decision.action == "start"
    assert [c.status for c in api.calls_to("GET")] == [429, 429, 200]
    assert [c.status for c in api.calls_to("PATCH")] == [429, 200]
    assert elapsed >= 0.9  # waited what Retry-After said, not the 0.01 s backoff
    assert api.group(GROUP).replicas == 2


def test_5xx_is_retried_then_reported(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=1, status="running")
    settings = load_settings(environ=env)
    scaler = fast_scaler(settings, max_attempts=3)
    api.fail_next(503, times=2)
    assert scaler.get_state().replicas == 1  # third attempt got through
    api.fail_next(500, times=5)
    with pytest.raises(ScalerError, match=r"after 3 attempts: HTTP 500") as info:
        scaler.get_state()
    assert not isinstance(info.value, ScalerConfigError)


def test_loop_survives_an_outage_and_keeps_scaling(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=0, status="stopped")
    settings = load_settings(environ=env)
    publish(settings, 4)
    api.fail_next(502, times=1)
    seen: list[Decision] = []
    stop = threading.Event()
    with autoscaler(settings, Clock(), fast_scaler(settings, max_attempts=1)) as auto:
        runs = auto.run(0.05, stop=stop, max_runs=3, on_decision=seen.append)
    assert runs == 3
    assert [d.action for d in seen] == ["start", "none"]  # the first run hit the outage
    assert (api.group(GROUP).status, api.group(GROUP).replicas) == ("running", 4)


def test_replica_limit_is_respected_with_a_warning(
    api: FakeSaladAPI, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    api.add_group(GROUP, replicas=0, status="stopped")
    settings = load_settings(environ={**env, "LRT_AUTOSCALE_MAX": "400"})
    publish(settings, 260)
    with caplog.at_level(logging.WARNING, logger="lrtkit"), autoscaler(settings, Clock()) as auto:
        decision = auto.run_once()
    assert decision.desired == 250
    assert api.group(GROUP).replicas == 250
    assert any("limit of 250" in w for w in decision.warnings)
    assert "limit of 250" in caplog.text
    # asked directly for more, the scaler clamps too (the fake rejects > 250 like the API)
    SaladScaler.from_settings(settings).set_replicas(300)
    assert api.group(GROUP).replicas == 250


def test_bad_api_key_is_a_clear_error(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP)
    settings = load_settings(environ={**env, "LRT_SALAD_API_KEY": "wrong-secret-value"})
    with pytest.raises(ScalerConfigError, match="LRT_SALAD_API_KEY") as info:
        SaladScaler.from_settings(settings).get_state()
    assert "HTTP 401" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "names"),
    [
        ("LRT_SALAD_ORG", "other-org", "organisation 'other-org'"),
        ("LRT_SALAD_PROJECT", "other-project", "project 'other-project'"),
        ("LRT_SALAD_CONTAINER_GROUP", "other-group", "container group 'other-group'"),
    ],
)
def test_missing_org_project_or_group_is_named(
    api: FakeSaladAPI, env: dict[str, str], variable: str, value: str, names: str
) -> None:
    api.add_group(GROUP)
    settings = load_settings(environ={**env, variable: value})
    with pytest.raises(ScalerConfigError) as info:
        SaladScaler.from_settings(settings).get_state()
    message = str(info.value)
    assert names in message
    assert f"check {variable}" in message


def test_bad_names_and_missing_settings_fail_before_any_call(
    api: FakeSaladAPI, env: dict[str, str]
) -> None:
    with pytest.raises(ScalerConfigError, match=r"LRT_SALAD_PROJECT='My Project' is not"):
        SaladScaler.from_settings(load_settings(environ={**env, "LRT_SALAD_PROJECT": "My Project"}))
    bare = {k: v for k, v in env.items() if k not in ("LRT_SALAD_ORG", "LRT_SALAD_API_KEY")}
    with pytest.raises(ScalerConfigError, match="needs LRT_SALAD_API_KEY, LRT_SALAD_ORG"):
        SaladScaler.from_settings(load_settings(environ=bare))
    assert api.calls == []


def test_unexpected_client_error_is_reported_with_the_body(
    api: FakeSaladAPI, env: dict[str, str]
) -> None:
    api.add_group(GROUP, replicas=1, status="running")
    api.fail_next(409, method="POST")
    scaler = SaladScaler.from_settings(load_settings(environ=env))
    with pytest.raises(ScalerError, match=r"refused to stop the container group.*HTTP 409"):
        scaler.stop()
    assert api.group(GROUP).status == "running"


def test_unreachable_api_is_retried_then_reported(env: dict[str, str]) -> None:
    from lrtkit.testing.services import free_port

    settings = load_settings(
        environ={**env, "LRT_SALAD_API_URL": f"http://127.0.0.1:{free_port()}/api/public"}
    )
    scaler = fast_scaler(settings, max_attempts=2)
    with pytest.raises(ScalerError, match="after 2 attempts"):
        scaler.get_state()


def test_loop_stops_on_a_configuration_error(api: FakeSaladAPI, env: dict[str, str]) -> None:
    api.add_group(GROUP, replicas=1, status="running")
    settings = load_settings(environ={**env, "LRT_SALAD_API_KEY": "revoked"})
    with (
        autoscaler(settings, Clock(), fast_scaler(settings)) as auto,
        pytest.raises(ScalerConfigError, match="refused the API key"),
    ):
        auto.run(0.05, max_runs=5)
    assert len(api.calls) == 1  # not retried: a bad key does not get better
