"""Denied permissions and bad credentials: one clear ``BrokerConfigError`` naming what to fix.

moto checks signatures and IAM policies once ``INITIAL_NO_AUTH_ACTION_COUNT`` is set: the first
requests (an admin user and its key) go through unchecked, every later one is authenticated
and authorised. These tests run their own such server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from lrtkit_sqs.broker import SqsBroker

from lrtkit.config import load_settings
from lrtkit.errors import BrokerConfigError
from lrtkit.plugins import load_broker
from lrtkit.testing.broker_contract import job
from lrtkit.testing.services import free_port, wait_http
from lrtkit.testing.target import unique_name

# moto asks for sqs:SendMessageBatch by that name; AWS authorises batches as sqs:SendMessage.
SUBMITTER = ["sqs:SendMessage", "sqs:SendMessageBatch", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]


@dataclass
class AuthServer:
    url: str
    queue: str
    admin: tuple[str, str]
    submitter: tuple[str, str]


def _user(iam: Any, name: str, actions: list[str]) -> tuple[str, str]:
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
    }
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def broker_for(server: AuthServer, key_id: str, secret: str) -> SqsBroker:
    env = {
        "LRT_BROKER": "sqs",
        "LRT_QUEUE": server.queue,
        "LRT_SQS_ENDPOINT_URL": server.url,
        "LRT_SQS_REGION": "us-east-1",
        "LRT_SQS_ACCESS_KEY_ID": key_id,
        "LRT_SQS_SECRET_ACCESS_KEY": secret,
        "LRT_SQS_MAX_ATTEMPTS": "1",
    }
    broker = load_broker(load_settings(environ=env))
    assert isinstance(broker, SqsBroker)
    return broker


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/")

        def iam(key_id: str, secret: str) -> Any:
            return boto3.client(
                "iam",
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
            )

        admin = _user(iam("x", "y"), "admin", ["*"])  # the 3 unchecked requests
        submitter = _user(iam(*admin), "job-submitter", SUBMITTER)
        server = AuthServer(url, unique_name(), admin, submitter)
        with broker_for(server, *admin) as broker:
            broker.ensure()
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


def test_admin_keys_work(auth_server: AuthServer) -> None:
    with broker_for(auth_server, *auth_server.admin) as broker:
        broker.publish([job("auth-1")])
        delivery = broker.receive(2)
        assert delivery is not None
        broker.ack(delivery)


def test_denied_action_names_the_iam_action_and_queue(auth_server: AuthServer) -> None:
    with broker_for(auth_server, *auth_server.submitter) as broker:
        broker.publish([job("auth-2")])  # allowed
        with pytest.raises(BrokerConfigError) as err:
            broker.receive(0)
    text = str(err.value)
    assert "permission denied for sqs:ReceiveMessage" in text
    assert f"{auth_server.queue}.fifo" in text
    assert "IAM policy" in text


def test_bad_credentials_say_so(auth_server: AuthServer) -> None:
    broker = broker_for(auth_server, auth_server.admin[0], "not-the-secret")
    with broker, pytest.raises(BrokerConfigError) as err:
        broker.depth()
    assert "rejected the credentials" in str(err.value)
    assert "LRT_SQS_ACCESS_KEY_ID" in str(err.value)
    assert "not-the-secret" not in str(err.value)


def test_doctor_names_each_denied_action(auth_server: AuthServer) -> None:
    with broker_for(auth_server, *auth_server.submitter) as broker:
        checks = {c.name: c for c in broker.diagnose()}
    permissions = checks["sqs permissions"]
    assert permissions.status == "fail"
    for action in ("sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage"):
        assert action in permissions.detail
    assert "sqs:SendMessage on" not in permissions.detail.split("-dlq")[0]
    with broker_for(auth_server, *auth_server.admin) as broker:
        assert all(c.status != "fail" for c in broker.diagnose())
