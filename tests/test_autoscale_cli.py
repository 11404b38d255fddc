"""``lrtkit autoscale`` on the command line, the Lambda handler, and third-party scalers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from stevedore.extension import ExtensionManager

from lrtkit.autoscale.autoscaler import Autoscaler
from lrtkit.autoscale.aws_lambda import LAMBDA_FALLBACK_STORAGE, handler, lambda_environ
from lrtkit.autoscale.state import state_key
from lrtkit.broker import Message
from lrtkit.brokers.local import LocalBroker
from lrtkit.cli import cli
from lrtkit.config import load_settings
from lrtkit.plugins import load_scaler, load_storage
from lrtkit.testing import unique_name
from lrtkit.testing.fake_salad import FakeSaladAPI

GROUP = "workers"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "LRT_BROKER": "local",
        "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
        "LRT_QUEUE": unique_name(),
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
    }


@pytest.fixture
def api() -> Iterator[FakeSaladAPI]:
    with FakeSaladAPI() as fake:
        yield fake


def publish(env: dict[str, str], count: int) -> None:
    with LocalBroker(env["LRT_LOCAL_DB"], env["LRT_QUEUE"]) as broker:
        broker.publish(
            [Message(f"job-{i}", json.dumps({"job_id": f"job-{i}"}).encode()) for i in range(count)]
        )


def invoke(env: dict[str, str], *args: str) -> Result:
    # A clean environment: only what the test sets (no LRT_* leaking in from outside).
    clean = {k: None for k in os.environ if k.startswith(("LRT_", "SALAD_"))}
    return CliRunner().invoke(cli, ["autoscale", *args], env={**clean, **env})


def test_once_with_dry_run_prints_the_decision_and_changes_nothing(env: dict[str, str]) -> None:
    publish(env, 3)
    result = invoke(env, "--once", "--provider", "dry-run", "--json")
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert decision["waiting"] == 3
    assert decision["desired"] == 3
    assert decision["action"] == "start"
    assert decision["provider"] == "dry-run"
    assert "dry-run: would set replicas to 3" in result.stderr
    assert "dry-run: would start the group" in result.stderr
    assert "waiting=3 in_flight=0 policy=proportional current=0 desired=3 action=start" in (
        result.stderr
    )
    # not even the autoscaler's memory was written
    settings = load_settings(environ=env)
    assert not load_storage(settings).exists(state_key(env["LRT_QUEUE"]))


def test_flags_override_the_environment(env: dict[str, str]) -> None:
    publish(env, 5)
    env = {**env, "LRT_AUTOSCALE_MAX": "10", "LRT_AUTOSCALE_POLICY": "proportional"}
    capped = json.loads(
        invoke(env, "--once", "--provider", "dry-run", "--json", "--max", "2").stdout
    )
    assert capped["desired"] == 2
    stepped = invoke(
        env,
        "--once",
        "--provider",
        "dry-run",
        "--json",
        "--policy",
        "steps",
        "--steps",
        "1:4,100:9",
    )
    assert json.loads(stepped.stdout)["desired"] == 4
    assert json.loads(stepped.stdout)["policy"] == "steps"
    paired = invoke(env, "--once", "--provider", "dry-run", "--json", "--jobs-per-replica", "2")
    assert json.loads(paired.stdout)["desired"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "steps", "--steps", "1:1,oops"], "LRT_AUTOSCALE_STEPS entry 2 ('oops')"),
        (["--min", "5", "--max", "2"], "LRT_AUTOSCALE_MIN (5) is above LRT_AUTOSCALE_MAX (2)"),
        (["--provider", "nope"], "no 'lrtkit.scalers' plugin named 'nope'"),
        (["--provider", "salad"], "the salad scaler needs LRT_SALAD_API_KEY"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = invoke(env, "--once", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_once_drives_saladcloud(env: dict[str, str], api: FakeSaladAPI) -> None:
    api.add_group(GROUP, replicas=0, status="stopped")
    publish(env, 2)
    result = invoke({**env, **api.environ(GROUP)}, "--once")
    assert result.exit_code == 0, result.output
    assert (api.group(GROUP).status, api.group(GROUP).replicas) == ("running", 2)
    assert "action=start" in result.stderr
    bad = invoke({**env, **api.environ(GROUP, LRT_SALAD_API_KEY="nope")}, "--once")
    assert bad.exit_code == 2
    assert "LRT_SALAD_API_KEY" in bad.stderr


def test_loop_runs_until_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    publish(env, 1)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LRT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrtkit", "autoscale", "--provider", "dry-run", "--interval", "1"],
        env={**clean, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # the first decision comes at once, the second after 1 s
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    lines = [line for line in stderr.splitlines() if " autoscale queue=" in line]
    assert lines, stderr
    assert "action=start" in lines[0]
    if len(lines) > 1:  # the simulated group follows its own changes
        assert "current=1 desired=1 action=none" in lines[1]
    assert "stopping (SIGTERM)" in stderr


# -- Lambda -----------------------------------------------------------------------------------


def test_lambda_handler_uses_the_guides_variable_names(
    env: dict[str, str], api: FakeSaladAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_group(GROUP, replicas=0, status="stopped")
    publish(env, 4)
    for key in list(os.environ):
        if key.startswith(("LRT_", "SALAD_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the names of the SaladCloud SQS guide's Lambda function
    monkeypatch.setenv("LRT_SALAD_API_URL", api.url)
    monkeypatch.setenv("salad_org", api.organization)
    monkeypatch.setenv("salad_project", api.project)
    monkeypatch.setenv("salad_container_group_name", GROUP)
    monkeypatch.setenv("salad_api_key", api.api_key)
    monkeypatch.setenv("min_replicas", "0")
    monkeypatch.setenv("max_replicas", "3")
    result = handler({}, None)
    assert json.loads(json.dumps(result)) == result  # JSON-able
    assert (result["waiting"], result["desired"], result["action"]) == (4, 3, "start")
    assert (api.group(GROUP).status, api.group(GROUP).replicas) == ("running", 3)
    # the cool-down memory was stored where the next invocation finds it
    assert load_storage(load_settings(environ=env)).exists(state_key(env["LRT_QUEUE"]))
    again = handler({}, None)
    assert again["action"] == "none"


def test_lambda_environ_maps_guide_names_and_falls_back_to_tmp() -> None:
    env = lambda_environ({"queue_url": "https://sqs.example/q.fifo", "salad_org": "acme"})
    assert env["LRT_SQS_QUEUE_URL"] == "https://sqs.example/q.fifo"
    assert env["LRT_BROKER"] == "sqs"
    assert env["LRT_SALAD_ORG"] == "acme"
    assert env["LRT_STORAGE"] == LAMBDA_FALLBACK_STORAGE
    own = lambda_environ({"salad_org": "guide", "LRT_SALAD_ORG": "mine", "LRT_STORAGE": "s3://b"})
    assert own["LRT_SALAD_ORG"] == "mine"
    assert own["LRT_STORAGE"] == "s3://b"


# -- a third-party scaler ---------------------------------------------------------------------


def test_a_third_party_scaler_plugs_in_by_entry_point(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_scaler.py").write_text(
        textwrap.dedent(
            """
            from lrtkit.autoscale.provider import GroupState

            CALLS = []

            class AcmeScaler:
                replica_limit = 5

                def __init__(self):
                    self.state = GroupState(replicas=1, running=True, status="up")

                @classmethod
                def from_settings(cls, settings):
                    return cls()

                def describe(self):
                    return "acme fleet"

                def get_state(self):
                    return self.state

                def set_replicas(self, replicas):
                    CALLS.append(("set_replicas", replicas))
                    self.state = GroupState(replicas, self.state.running, self.state.status)

                def start(self):
                    CALLS.append(("start",))

                def stop(self):
                    CALLS.append(("stop",))
            """
        )
    )
    dist = site / "acme_scaler-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-scaler\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lrtkit.scalers]\nacme = acme_scaler:AcmeScaler\n")
    monkeypatch.syspath_prepend(str(site))
    # stevedore remembers each namespace's entry points for the life of the process; a plugin
    # installed after the first lookup (as here) is only seen once that memory is cleared
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})
    monkeypatch.delitem(sys.modules, "acme_scaler", raising=False)
    publish(env, 9)
    settings = load_settings(environ={**env, "LRT_AUTOSCALE_MAX": "20"})
    with Autoscaler.from_settings(settings, provider="acme") as auto:
        decision = auto.run_once()
    import acme_scaler  # type: ignore[import-not-found]

    assert decision.desired == 5  # capped by the plugin's own replica_limit
    assert acme_scaler.CALLS == [("set_replicas", 5)]
    assert decision.warnings


def test_load_scaler_builds_the_builtin_dry_run(env: dict[str, str]) -> None:
    scaler = load_scaler("dry-run", load_settings(environ=env))
    assert scaler.describe() == "dry run on a simulated group"
    state = scaler.get_state()
    assert (state.replicas, state.running) == (0, False)


def test_dry_run_reads_the_real_group_and_changes_nothing(
    env: dict[str, str], api: FakeSaladAPI
) -> None:
    api.add_group(GROUP, replicas=4, status="running")
    publish(env, 9)
    result = invoke({**env, **api.environ(GROUP)}, "--once", "--provider", "dry-run", "--json")
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert (decision["current"], decision["desired"], decision["action"]) == (4, 9, "scale_up")
    assert "dry-run: would set replicas to 9 (dry run on SaladCloud acme/" in result.stderr
    assert [c.method for c in api.calls] == ["GET"]  # read, never written
    assert api.group(GROUP).replicas == 4


def test_state_keys_are_safe_storage_keys() -> None:
    assert state_key("lrtkit-jobs") == "_lrtkit/autoscale/lrtkit-jobs.json"
    assert state_key("a/b c") == "_lrtkit/autoscale/a_b_c.json"
    assert state_key("..") == "_lrtkit/autoscale/queue.json"
