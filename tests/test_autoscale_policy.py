"""Policies and decisions at the edges: 0 jobs, 1 job, over max, cool-down, in-flight floor, min."""

from __future__ import annotations

import pytest

from lrtkit.autoscale.decision import (
    COOLDOWN,
    NONE,
    SCALE_DOWN,
    SCALE_UP,
    START,
    STOP,
    AutoscaleConfig,
    Decision,
    Memory,
    decide,
    desired_replicas,
)
from lrtkit.autoscale.policy import Proportional, Step, Steps, make_policy, parse_steps
from lrtkit.autoscale.provider import GroupState
from lrtkit.config import load_settings
from lrtkit.errors import ConfigError

STEPS = "1:1,50:2,100:3,500:5,1000:8,5000:10"


def proportional(**kw: int | float) -> AutoscaleConfig:
    per = int(kw.pop("jobs_per_replica", 1))
    return AutoscaleConfig(policy=Proportional(per), jobs_per_replica=per, **kw)  # type: ignore[arg-type]


def steps(**kw: int | float) -> AutoscaleConfig:
    return AutoscaleConfig(policy=Steps(parse_steps(STEPS)), **kw)  # type: ignore[arg-type]


def run(
    config: AutoscaleConfig,
    waiting: int,
    in_flight: int,
    group: GroupState,
    memory: Memory | None = None,
    now: float = 1000.0,
) -> tuple[Decision, Memory]:
    return decide(
        queue="q",
        waiting=waiting,
        in_flight=in_flight,
        group=group,
        config=config,
        memory=memory or Memory(),
        now=now,
    )


# -- policies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "in_flight", "per", "expected"),
    [(0, 0, 1, 0), (1, 0, 1, 1), (0, 1, 1, 1), (12, 3, 1, 15), (5, 0, 2, 3), (4, 0, 2, 2)],
)
def test_proportional_counts_waiting_and_in_flight(
    waiting: int, in_flight: int, per: int, expected: int
) -> None:
    assert Proportional(per).replicas_for(waiting, in_flight) == expected


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, 0),
        (1, 1),
        (49, 1),
        (50, 2),
        (99, 2),
        (100, 3),
        (499, 3),
        (500, 5),
        (4999, 8),
        (5000, 10),
        (10**6, 10),
    ],
)
def test_steps_table(total: int, expected: int) -> None:
    policy = Steps(parse_steps(STEPS))
    assert policy.replicas_for(total, 0) == expected
    assert policy.replicas_for(0, total) == expected


def test_parse_steps_accepts_spaces() -> None:
    assert parse_steps(" 1:1 , 10: 4") == (Step(1, 1), Step(10, 4))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("1:1,50", "entry 2 ('50')"),
        ("1:1,x:2", "entry 2 ('x:2')"),
        ("0:1", "at least 1 job"),
        ("1:-1", "cannot be negative"),
        ("1:1,50:2,40:3", "entry 3 ('40:3'): thresholds must increase"),
        ("1:3,50:2", "must not decrease"),
    ],
)
def test_bad_steps_name_the_entry(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="LRT_AUTOSCALE_STEPS") as info:
        parse_steps(text)
    assert fragment in str(info.value)


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"LRT_AUTOSCALE_POLICY='fast'.*proportional, steps"):
        make_policy("fast")


def test_config_from_settings_validates_steps_and_min_max() -> None:
    settings = load_settings(
        environ={"LRT_AUTOSCALE_POLICY": "steps", "LRT_AUTOSCALE_STEPS": "1:2,5:1"}
    )
    with pytest.raises(ConfigError, match="entry 2"):
        AutoscaleConfig.from_settings(settings)
    good = load_settings(environ={"LRT_AUTOSCALE_MIN": "2", "LRT_AUTOSCALE_MAX": "4"})
    with pytest.raises(
        ConfigError, match=r"LRT_AUTOSCALE_MIN \(5\) is above LRT_AUTOSCALE_MAX \(4\)"
    ):
        AutoscaleConfig.from_settings(good.with_overrides(autoscale_min=5))


# -- clamping and floors ----------------------------------------------------------------------


def test_over_max_is_clamped() -> None:
    assert desired_replicas(proportional(max_replicas=10), 500, 0) == 10
    assert desired_replicas(steps(max_replicas=4), 6000, 0) == 4


def test_min_above_zero_keeps_replicas_with_no_work() -> None:
    assert desired_replicas(proportional(min_replicas=2, max_replicas=10), 0, 0) == 2
    assert desired_replicas(steps(min_replicas=1, max_replicas=10), 0, 0) == 1


def test_never_below_jobs_in_flight() -> None:
    # steps would say 1 replica for 10 jobs; 10 are running, so 10 machines hold them
    assert desired_replicas(steps(max_replicas=20), 0, 10) == 10
    # ...but never above max
    assert desired_replicas(steps(max_replicas=6), 0, 10) == 6
    # with two jobs per replica, 10 in flight need 5 replicas
    assert desired_replicas(proportional(jobs_per_replica=2, max_replicas=20), 0, 10) == 5


def test_provider_limit_caps_max_with_a_warning() -> None:
    config, warning = proportional(max_replicas=400).limited(250)
    assert config.max_replicas == 250
    assert warning is not None
    assert "400" in warning
    assert "250" in warning
    same, none = proportional(max_replicas=10).limited(250)
    assert same.max_replicas == 10
    assert none is None


# -- decisions ----------------------------------------------------------------------------------


def test_zero_jobs_on_a_stopped_group_does_nothing() -> None:
    d, _ = run(proportional(), 0, 0, GroupState(0, running=False, status="stopped"))
    assert (d.current, d.desired, d.action) == (0, 0, NONE)


def test_one_job_starts_a_stopped_group() -> None:
    d, memory = run(proportional(), 1, 0, GroupState(0, running=False, status="stopped"))
    assert (d.current, d.desired, d.target, d.action) == (0, 1, 1, START)
    assert memory.last_change == 1000.0


def test_stopped_group_with_old_replica_count_counts_as_zero() -> None:
    d, _ = run(proportional(), 3, 0, GroupState(7, running=False, status="stopped"))
    assert (d.current, d.target, d.action) == (0, 3, START)


def test_scale_up_is_immediate_even_right_after_a_change() -> None:
    memory = Memory(last_change=999.0)
    d, _ = run(
        proportional(cooldown=300, max_replicas=20), 12, 3, GroupState(2, True, "running"), memory
    )
    assert (d.current, d.desired, d.action) == (2, 15, SCALE_UP)
    line = d.line()
    assert "waiting=12 in_flight=3 policy=proportional current=2 desired=15 action=scale_up" in line


def test_scale_down_waits_for_the_cooldown_across_runs() -> None:
    config = proportional(cooldown=300)
    group = GroupState(5, True, "running")
    d1, m1 = run(config, 2, 0, group, Memory(), now=1000.0)
    assert (d1.desired, d1.target, d1.action) == (2, 5, COOLDOWN)
    assert m1.below_since == 1000.0
    assert d1.cooldown_remaining == pytest.approx(300)
    # the memory round-trips through JSON, as it does between --once runs
    m1 = Memory.from_dict(m1.to_dict())
    d2, m2 = run(config, 2, 0, group, m1, now=1299.0)
    assert d2.action == COOLDOWN
    assert d2.cooldown_remaining == pytest.approx(1)
    d3, m3 = run(config, 2, 0, group, m2, now=1300.0)
    assert (d3.target, d3.action) == (2, SCALE_DOWN)
    assert m3.below_since is None
    assert m3.last_change == 1300.0


def test_demand_coming_back_resets_the_cooldown() -> None:
    config = proportional(cooldown=300)
    group = GroupState(5, True, "running")
    _, m1 = run(config, 1, 0, group, now=1000.0)
    d2, m2 = run(config, 5, 0, group, m1, now=1100.0)
    assert d2.action == NONE
    assert m2.below_since is None
    d3, _ = run(config, 1, 0, group, m2, now=1350.0)
    assert d3.action == COOLDOWN  # the clock started again at 1350


def test_cooldown_counts_from_the_last_change_too() -> None:
    config = proportional(cooldown=300)
    memory = Memory(below_since=500.0, last_change=900.0)
    d, _ = run(config, 1, 0, GroupState(5, True, "running"), memory, now=1000.0)
    assert d.action == COOLDOWN
    assert d.cooldown_remaining == pytest.approx(200)


def test_scale_to_zero_stops_the_group_after_the_cooldown() -> None:
    config = proportional(cooldown=60)
    group = GroupState(3, True, "running")
    d1, m1 = run(config, 0, 0, group, now=1000.0)
    assert (d1.desired, d1.action) == (0, COOLDOWN)
    d2, _ = run(config, 0, 0, group, m1, now=1060.0)
    assert (d2.desired, d2.target, d2.action) == (0, 0, STOP)


def test_min_above_zero_never_stops() -> None:
    config = proportional(min_replicas=1, cooldown=0)
    d, _ = run(config, 0, 0, GroupState(4, True, "running"))
    assert (d.desired, d.target, d.action) == (1, 1, SCALE_DOWN)


def test_scale_down_never_below_in_flight() -> None:
    config = steps(cooldown=0, max_replicas=10)
    d, _ = run(config, 0, 4, GroupState(8, True, "running"))
    assert (d.desired, d.target, d.action) == (4, 4, SCALE_DOWN)


def test_running_group_with_zero_replicas_and_no_work_is_stopped() -> None:
    d, _ = run(proportional(cooldown=300), 0, 0, GroupState(0, True, "running"))
    assert d.action == STOP


def test_cooldown_zero_scales_down_at_once() -> None:
    d, _ = run(proportional(cooldown=0), 1, 0, GroupState(5, True, "running"))
    assert (d.target, d.action) == (1, SCALE_DOWN)


def test_memory_reader_tolerates_garbage() -> None:
    assert Memory.from_dict("nope") == Memory()
    m = Memory.from_dict({"below_since": "x", "last_change": 5, "last_desired": True, "extra": 1})
    assert m.below_since is None
    assert m.last_change == 5.0
    assert m.last_desired is None
