"""A moto server that checks signatures and IAM policies, for "access denied" tests.

moto authenticates and authorises every request once ``INITIAL_NO_AUTH_ACTION_COUNT`` is set;
the first three requests go through unchecked, and :func:`moto_iam_server` spends them on an
admin user and its key. Tests then make users with just the actions they need.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lrtkit.testing.services import moto_server

Keys = tuple[str, str]


def _iam(url: str, keys: Keys) -> Any:
    import boto3

    return boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
    )


def _create_user(iam: Any, name: str, actions: list[str]) -> Keys:
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
    }
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@dataclass(frozen=True)
class IamMoto:
    """The server's URL and its admin's keys (allowed everything)."""

    url: str
    admin: Keys

    def user(self, name: str, actions: list[str]) -> Keys:
        """A new user allowed only ``actions`` (e.g. ``["s3:GetObject"]``); its keys."""
        return _create_user(_iam(self.url, self.admin), name, actions)


@contextmanager
def moto_iam_server() -> Iterator[IamMoto]:
    """A moto server of its own with IAM enforced, and an admin user; stopped afterwards."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as url:
        admin = _create_user(_iam(url, ("x", "y")), "admin", ["*"])  # the unchecked requests
        yield IamMoto(url, admin)
