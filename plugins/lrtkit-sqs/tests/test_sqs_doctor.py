"""``lrtkit doctor`` on SQS: each misconfiguration is named with what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrtkit.broker import Check
from lrtkit.config import load_settings
from lrtkit.plugins import load_broker
from lrtkit.testing.target import BrokerTarget, unique_name


def diagnose(env: dict[str, str]) -> list[Check]:
    with load_broker(load_settings(environ=env)) as broker:
        return broker.diagnose()


def failing(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks if c.status == "fail"}


def doctor_cli(env: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "lrtkit", "doctor", "--json"],
        env={**env, "LRT_STORAGE": f"file://{tmp_path / 'store'}", "LRT_SALAD_IMDS_URL": "off"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_healthy_queue_passes(lrt_broker_target: BrokerTarget) -> None:
    checks = diagnose(lrt_broker_target.env)
    assert failing(checks) == {}
    names = {c.name for c in checks if c.status == "ok"}
    assert {"sqs queue", "sqs dead-letter queue", "sqs lease", "sqs permissions"} <= names


def test_missing_queue_is_named(sqs_env: dict[str, str], tmp_path: Path) -> None:
    checks = diagnose(sqs_env)
    bad = failing(checks)["sqs queue"]
    assert sqs_env["LRT_QUEUE"] + ".fifo" in bad.detail
    assert "does not exist" in bad.detail
    assert "lrtkit setup" in bad.fix

    code, report = doctor_cli(sqs_env, tmp_path)
    assert code == 1
    rows = {c["name"]: c for c in report["checks"]}
    assert rows["sqs queue"]["status"] == "fail"
    assert "does not exist" in rows["sqs queue"]["detail"]


def test_standard_queue_is_not_fifo(
    sqs_env: dict[str, str],
    sqs_client: Any,
    queue_cleanup: Callable[[str], None],
    tmp_path: Path,
) -> None:
    name = unique_name("standard")
    queue_cleanup(name)
    url = sqs_client.create_queue(QueueName=name)["QueueUrl"]
    env = {**sqs_env, "LRT_SQS_QUEUE_URL": url}
    bad = failing(diagnose(env))
    assert "standard queue, not FIFO" in bad["sqs queue"].detail
    assert "no redrive policy" in bad["sqs dead-letter queue"].detail
    assert (
        sqs_client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "0"
    )  # the probes sent nothing

    code, report = doctor_cli(env, tmp_path)
    assert code == 1
    details = " ".join(c["detail"] for c in report["checks"] if c["status"] == "fail")
    assert "not FIFO" in details


def test_fifo_queue_without_dead_letter_queue(
    sqs_env: dict[str, str], sqs_client: Any, queue_cleanup: Callable[[str], None]
) -> None:
    name = unique_name("nodlq") + ".fifo"
    queue_cleanup(name)
    url = sqs_client.create_queue(
        QueueName=name, Attributes={"FifoQueue": "true", "VisibilityTimeout": "30"}
    )["QueueUrl"]
    checks = diagnose({**sqs_env, "SQS_QUEUE_URL": url})
    bad = failing(checks)
    assert set(bad) == {"sqs dead-letter queue"}
    assert "no redrive policy" in bad["sqs dead-letter queue"].detail
    assert "maxReceiveCount=10" in bad["sqs dead-letter queue"].fix
    lease = {c.name: c for c in checks}["sqs lease"]
    assert lease.status == "warn"
    assert "VisibilityTimeout is 30" in lease.detail


def test_redrive_to_a_deleted_dead_letter_queue(
    lrt_broker_target: BrokerTarget, sqs_client: Any
) -> None:
    queue = lrt_broker_target.env["LRT_QUEUE"]
    dlq = sqs_client.get_queue_url(QueueName=f"{queue}-dlq.fifo")["QueueUrl"]
    sqs_client.delete_queue(QueueUrl=dlq)
    env = {**lrt_broker_target.env, "LRT_MAX_DELIVERIES": "5"}
    bad = failing(diagnose(env))
    assert "does not exist" in bad["sqs dead-letter queue"].detail
    assert f"{queue}-dlq.fifo" in bad["sqs dead-letter queue"].fix


def test_delivery_limit_and_lease_disagreements_warn(lrt_broker_target: BrokerTarget) -> None:
    env = {**lrt_broker_target.env, "LRT_MAX_DELIVERIES": "4", "LRT_LEASE_SECONDS": "90"}
    checks = {c.name: c for c in diagnose(env)}
    assert checks["sqs delivery limit"].status == "warn"
    assert "maxReceiveCount" in checks["sqs delivery limit"].detail
    assert checks["sqs lease"].status == "warn"
    too_long = {c.name: c for c in diagnose({**env, "LRT_LEASE_SECONDS": "50000"})}
    assert too_long["sqs lease"].status == "fail"
