"""Denied permissions and bad credentials: one clear ``BrokerConfigError`` naming what to fix.

They run on a moto server of their own that checks signatures and IAM policies
(``lrtkit.testing.moto_iam``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from lrtkit_sqs.broker import SqsBroker

from lrtkit.config import load_settings
from lrtkit.errors import BrokerConfigError
from lrtkit.plugins import load_broker
from lrtkit.testing.broker_contract import job
from lrtkit.testing.moto_iam import moto_iam_server
from lrtkit.testing.target import unique_name

# moto asks for sqs:SendMessageBatch by that name; AWS authorises batches as sqs:SendMessage.
SUBMITTER = ["sqs:SendMessage", "sqs:SendMessageBatch", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]


@dataclass
class AuthServer:
    url: str
    queue: str
    admin: tuple[str, str]
    submitter: tuple[str, str]


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
    with moto_iam_server() as moto:
        submitter = moto.user("job-submitter", SUBMITTER)
        server = AuthServer(moto.url, unique_name(), moto.admin, submitter)
        with broker_for(server, *moto.admin) as broker:
            broker.ensure()
        yield server


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
