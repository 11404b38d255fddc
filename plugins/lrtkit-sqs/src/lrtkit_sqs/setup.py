"""Queue names, the recommended queue attributes, ``lrtkit setup`` and ``lrtkit doctor`` checks.

The settings are the SaladCloud guide's: a FIFO queue ``<LRT_QUEUE>.fifo`` whose visibility
timeout is the lease (60 s), retention 14 days, long polling 20 s, 256 KiB messages,
content-based deduplication off (lrtkit sets ``MessageDeduplicationId = job_id``), and a
redrive policy to the FIFO dead-letter queue ``<LRT_QUEUE>-dlq.fifo`` after
``LRT_MAX_DELIVERIES`` receives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from lrtkit.broker import Check, SetupReport
from lrtkit.errors import BrokerConfigError, LrtError
from lrtkit_sqs.client import DENIED, SqsApi, error_code, iam_action, visibility

if TYPE_CHECKING:
    from lrtkit.config import Settings
    from lrtkit_sqs.settings import SqsSettings

RETENTION_SECONDS = 14 * 24 * 3600
LONG_POLL_SECONDS = 20
_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}")


def fifo_name(queue: str) -> str:
    """``LRT_QUEUE`` as an SQS FIFO queue name (``.fifo`` appended unless present)."""
    base = queue.removesuffix(".fifo")
    if not _NAME.fullmatch(base):
        raise BrokerConfigError(
            f"LRT_QUEUE={queue!r} is not a valid SQS queue name: 1 to 75 characters from "
            "[A-Za-z0-9_-] (lrtkit adds .fifo)"
        )
    return base + ".fifo"


def dlq_name(queue: str) -> str:
    """The dead-letter queue's name: ``<name>-dlq.fifo`` (the guide's ``my-job-queue-dlq.fifo``)."""
    base = fifo_name(queue).removesuffix(".fifo")
    return f"{base[:71]}-dlq.fifo"


def name_of_url(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def name_of_arn(arn: str) -> tuple[str, str]:
    """``(queue name, account id)`` of a queue ARN ``arn:aws:sqs:REGION:ACCOUNT:NAME``."""
    parts = arn.split(":")
    if len(parts) != 6:
        raise BrokerConfigError(f"{arn!r} is not an SQS queue ARN")
    return parts[5], parts[4]


def redrive_policy(attrs: dict[str, str]) -> dict[str, Any] | None:
    raw = attrs.get("RedrivePolicy")
    if not raw:
        return None
    try:
        policy = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return policy if isinstance(policy, dict) else None


def wanted_attributes(settings: Settings, sqs: SqsSettings) -> dict[str, str]:
    """What ``lrtkit setup`` sets on both queues (the redrive policy is added on the main one)."""
    return {
        "FifoQueue": "true",
        "ContentBasedDeduplication": "false",
        "VisibilityTimeout": str(visibility(min(settings.lease_seconds, sqs.max_lease_seconds))),
        "MessageRetentionPeriod": str(RETENTION_SECONDS),
        "ReceiveMessageWaitTimeSeconds": str(LONG_POLL_SECONDS),
        "MaximumMessageSize": str(sqs.max_message_size),
        "DelaySeconds": "0",
    }


@dataclass(frozen=True)
class Queues:
    """The resolved main queue and dead-letter queue."""

    url: str
    name: str
    arn: str
    attributes: dict[str, str]
    dlq_url: str | None
    dlq_arn: str | None

    @property
    def max_message_size(self) -> int:
        return int(self.attributes.get("MaximumMessageSize", "262144"))

    @property
    def max_receive_count(self) -> int | None:
        policy = redrive_policy(self.attributes)
        try:
            return int(policy["maxReceiveCount"]) if policy else None
        except (KeyError, TypeError, ValueError):
            return None


class QueueSetup:
    """Finds, creates and checks the queues for one broker."""

    def __init__(self, api: SqsApi, settings: Settings, sqs: SqsSettings) -> None:
        self.api = api
        self.settings = settings
        self.sqs = sqs

    # -- finding -------------------------------------------------------------------------------

    @property
    def main_name(self) -> str:
        if self.sqs.queue_url:
            return name_of_url(self.sqs.queue_url)
        return fifo_name(self.settings.queue)

    def find_url(self, name: str, account: str | None = None) -> str | None:
        """The URL of queue ``name``, or None if it does not exist."""
        params: dict[str, Any] = {"QueueName": name}
        if account:
            params["QueueOwnerAWSAccountId"] = account
        try:
            return str(self.api.call("get_queue_url", f"queue {name}", **params)["QueueUrl"])
        except BrokerConfigError as exc:
            if "does not exist" in str(exc):
                return None
            raise

    def attributes(self, url: str) -> dict[str, str]:
        resp = self.api.call(
            "get_queue_attributes",
            f"queue {name_of_url(url)}",
            QueueUrl=url,
            AttributeNames=["All"],
        )
        return dict(resp.get("Attributes", {}))

    def resolve(self) -> Queues:
        """The existing queues; ``BrokerConfigError`` saying what to do if they are not usable."""
        url = self.sqs.queue_url or self.find_url(self.main_name)
        if url is None:
            raise BrokerConfigError(
                f"SQS queue {self.main_name} does not exist in region {self.api.region}: run "
                "`lrtkit setup` to create it, or set LRT_SQS_QUEUE_URL (or SQS_QUEUE_URL)"
            )
        attrs = self.attributes(url)
        name = name_of_url(url)
        if attrs.get("FifoQueue") != "true":
            raise BrokerConfigError(
                f"SQS queue {name} is not a FIFO queue: lrtkit needs one (its name ends in "
                ".fifo) for MessageGroupId/MessageDeduplicationId = job_id. Run `lrtkit setup` "
                "with LRT_QUEUE set to a new name, or point LRT_SQS_QUEUE_URL at a FIFO queue"
            )
        dlq_url, dlq_arn = self._find_dlq(attrs)
        return Queues(url, name, attrs["QueueArn"], attrs, dlq_url, dlq_arn)

    def _find_dlq(self, attrs: dict[str, str]) -> tuple[str | None, str | None]:
        if self.sqs.dlq_url:
            dlq_attrs = self.attributes(self.sqs.dlq_url)
            return self.sqs.dlq_url, dlq_attrs.get("QueueArn")
        policy = redrive_policy(attrs)
        if policy and policy.get("deadLetterTargetArn"):
            arn = str(policy["deadLetterTargetArn"])
            name, account = name_of_arn(arn)
            return self.find_url(name, account), arn
        url = self.find_url(dlq_name(self.main_name))
        if url is None:
            return None, None
        return url, self.attributes(url).get("QueueArn")

    # -- lrtkit setup --------------------------------------------------------------------------

    def ensure(self) -> SetupReport:
        report = SetupReport()
        wanted = wanted_attributes(self.settings, self.sqs)
        main = self.main_name
        main_url = self.sqs.queue_url or self.find_url(main)
        main_attrs = self.attributes(main_url) if main_url else {}

        # The dead-letter queue first: the main queue's redrive policy names its ARN.
        policy = redrive_policy(main_attrs)
        if self.sqs.dlq_url:
            dname = name_of_url(self.sqs.dlq_url)
        elif policy and policy.get("deadLetterTargetArn"):
            dname = name_of_arn(str(policy["deadLetterTargetArn"]))[0]
        else:
            dname = dlq_name(main)
        dlq_url = self.sqs.dlq_url or self.find_url(dname)
        created_dlq = dlq_url is None
        if dlq_url is None:
            dlq_url = self._create(dname, wanted)
            report.created.append(dname)
        dlq_attrs = self.attributes(dlq_url)
        dlq_arn = dlq_attrs["QueueArn"]
        if not created_dlq:
            report.existing.append(dname)
            report.mismatches += self._compare(dname, dlq_attrs, wanted)

        want_redrive = {
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": self.settings.max_deliveries,
        }
        if main_url is None:
            main_url = self._create(main, {**wanted, "RedrivePolicy": json.dumps(want_redrive)})
            report.created.append(main)
        else:
            report.existing.append(main)
            report.mismatches += self._compare(main, main_attrs, wanted)
            report.mismatches += self._compare_redrive(main, main_attrs, want_redrive)
        if created_dlq:
            main_arn = self.attributes(main_url)["QueueArn"]
            allow = {"redrivePermission": "byQueue", "sourceQueueArns": [main_arn]}
            self.api.call(
                "set_queue_attributes",
                f"queue {dname}",
                QueueUrl=dlq_url,
                Attributes={"RedriveAllowPolicy": json.dumps(allow)},
            )
        return report

    def _create(self, name: str, attributes: dict[str, str]) -> str:
        fifo_name(name)  # validates the name
        resp = self.api.call("create_queue", f"queue {name}", QueueName=name, Attributes=attributes)
        return str(resp["QueueUrl"])

    @staticmethod
    def _compare(name: str, have: dict[str, str], wanted: dict[str, str]) -> list[str]:
        out = []
        for key, want in wanted.items():
            got = have.get(
                key, "false" if key in {"FifoQueue", "ContentBasedDeduplication"} else ""
            )
            if got != want:
                out.append(f"{name}: {key} is {got or 'unset'}, lrtkit recommends {want}")
        return out

    @staticmethod
    def _compare_redrive(name: str, have: dict[str, str], want: dict[str, Any]) -> list[str]:
        policy = redrive_policy(have)
        if policy is None:
            return [
                f"{name}: no RedrivePolicy (dead-letter queue), lrtkit recommends "
                f"{json.dumps(want)}"
            ]
        out = []
        if policy.get("deadLetterTargetArn") != want["deadLetterTargetArn"]:
            out.append(
                f"{name}: RedrivePolicy deadLetterTargetArn is "
                f"{policy.get('deadLetterTargetArn')}, "
                f"lrtkit expected {want['deadLetterTargetArn']}"
            )
        if str(policy.get("maxReceiveCount")) != str(want["maxReceiveCount"]):
            out.append(
                f"{name}: RedrivePolicy maxReceiveCount is {policy.get('maxReceiveCount')}, "
                f"LRT_MAX_DELIVERIES is {want['maxReceiveCount']}"
            )
        return out

    # -- lrtkit doctor -------------------------------------------------------------------------

    def diagnose(self) -> list[Check]:
        checks: list[Check] = []
        try:
            url = self.sqs.queue_url or self.find_url(self.main_name)
        except LrtError as exc:
            return [Check("sqs queue", "fail", str(exc), _fix_for(exc))]
        if url is None:
            return [
                Check(
                    "sqs queue",
                    "fail",
                    f"queue {self.main_name} does not exist in region {self.api.region}",
                    "run `lrtkit setup`, or set LRT_SQS_QUEUE_URL to an existing FIFO queue",
                )
            ]
        try:
            attrs = self.attributes(url)
        except LrtError as exc:
            return [Check("sqs queue", "fail", str(exc), _fix_for(exc))]
        name = name_of_url(url)
        if attrs.get("FifoQueue") != "true":
            checks.append(
                Check(
                    "sqs queue",
                    "fail",
                    f"{name} is a standard queue, not FIFO",
                    "lrtkit needs a FIFO queue: set LRT_QUEUE to a new name and run "
                    "`lrtkit setup` (a queue's type cannot be changed)",
                )
            )
        else:
            checks.append(Check("sqs queue", "ok", f"{url} (FIFO, region {self.api.region})"))
        if attrs.get("ContentBasedDeduplication") == "true":
            checks.append(
                Check(
                    "sqs deduplication",
                    "warn",
                    f"{name} has ContentBasedDeduplication on",
                    "turn it off: lrtkit sets MessageDeduplicationId = job_id",
                )
            )
        checks += self._diagnose_dlq(name, attrs)
        checks += self._diagnose_lease(name, attrs)
        checks += self._diagnose_permissions(url, name, attrs)
        return checks

    def _diagnose_dlq(self, name: str, attrs: dict[str, str]) -> list[Check]:
        policy = redrive_policy(attrs)
        if policy is None or not policy.get("deadLetterTargetArn"):
            return [
                Check(
                    "sqs dead-letter queue",
                    "fail",
                    f"{name} has no redrive policy: a job that kills its worker every time "
                    "would be retried forever",
                    "run `lrtkit setup` with a new LRT_QUEUE, or add a redrive policy to a FIFO "
                    f"dead-letter queue with maxReceiveCount={self.settings.max_deliveries}",
                )
            ]
        arn = str(policy["deadLetterTargetArn"])
        dname, account = name_of_arn(arn)
        try:
            durl = self.find_url(dname, account)
            dattrs = self.attributes(durl) if durl else {}
        except LrtError as exc:
            return [Check("sqs dead-letter queue", "fail", str(exc), _fix_for(exc))]
        if durl is None:
            return [
                Check(
                    "sqs dead-letter queue",
                    "fail",
                    f"the redrive policy of {name} names {arn}, which does not exist",
                    f"create the FIFO queue {dname} (`lrtkit setup`) or fix the redrive policy",
                )
            ]
        out = []
        if dattrs.get("FifoQueue") != "true":
            out.append(
                Check(
                    "sqs dead-letter queue",
                    "fail",
                    f"{dname} is not a FIFO queue",
                    "a FIFO queue's dead-letter queue must be FIFO too",
                )
            )
        else:
            out.append(Check("sqs dead-letter queue", "ok", f"{durl} (FIFO)"))
        count = policy.get("maxReceiveCount")
        if str(count) != str(self.settings.max_deliveries):
            out.append(
                Check(
                    "sqs delivery limit",
                    "warn",
                    f"maxReceiveCount of {name} is {count}, LRT_MAX_DELIVERIES is "
                    f"{self.settings.max_deliveries}",
                    "make them agree (set LRT_MAX_DELIVERIES, or edit the redrive policy)",
                )
            )
        return out

    def _diagnose_lease(self, name: str, attrs: dict[str, str]) -> list[Check]:
        lease = self.settings.lease_seconds
        if lease > self.sqs.max_lease_seconds:
            return [
                Check(
                    "sqs lease",
                    "fail",
                    f"LRT_LEASE_SECONDS={lease:g} is above SQS's visibility cap "
                    f"({self.sqs.max_lease_seconds:g} s)",
                    "use a short lease (60 s): the worker renews it while the job runs",
                )
            ]
        queue_vis = attrs.get("VisibilityTimeout", "?")
        if queue_vis != str(visibility(lease)):
            return [
                Check(
                    "sqs lease",
                    "warn",
                    f"{name} VisibilityTimeout is {queue_vis} s, LRT_LEASE_SECONDS is {lease:g}",
                    "lrtkit asks for its lease on every receive, but other consumers get the "
                    "queue's default: set VisibilityTimeout to the lease",
                )
            ]
        return [Check("sqs lease", "ok", f"visibility timeout {queue_vis} s = LRT_LEASE_SECONDS")]

    def _diagnose_permissions(self, url: str, name: str, attrs: dict[str, str]) -> list[Check]:
        """Probe each action the worker and submitter need, with requests that change nothing.

        Each probe is a request SQS rejects for its parameters (a bogus receipt handle, an
        out-of-range count, a missing group id); only an access-denied answer means the
        permission is missing.
        """
        probes: list[tuple[str, str, dict[str, Any]]] = [
            ("receive_message", name, {"QueueUrl": url, "MaxNumberOfMessages": 11}),
            (
                "change_message_visibility",
                name,
                {"QueueUrl": url, "ReceiptHandle": "lrtkit-doctor-probe", "VisibilityTimeout": 0},
            ),
            ("delete_message", name, {"QueueUrl": url, "ReceiptHandle": "lrtkit-doctor-probe"}),
        ]
        # A send without MessageGroupId is refused by a FIFO queue only: never probe others.
        if attrs.get("FifoQueue") == "true":
            probes.append(("send_message", name, {"QueueUrl": url, "MessageBody": "{}"}))
        policy = redrive_policy(attrs)
        if policy and policy.get("deadLetterTargetArn"):
            dname, account = name_of_arn(str(policy["deadLetterTargetArn"]))
            try:
                durl = self.find_url(dname, account)
                dlq_fifo = bool(durl) and self.attributes(str(durl)).get("FifoQueue") == "true"
            except LrtError:
                durl, dlq_fifo = None, False
            if durl and dlq_fifo:
                probes.append(("send_message", dname, {"QueueUrl": durl, "MessageBody": "{}"}))
                probes.append(
                    ("receive_message", dname, {"QueueUrl": durl, "MaxNumberOfMessages": 11})
                )
        denied = []
        for action, qname, params in probes:
            method = getattr(self.api.client, action)
            try:
                method(**params)
            except Exception as exc:  # noqa: BLE001 - every answer but "denied" is fine
                code = error_code(exc) if isinstance(exc, ClientError) else ""
                if code in DENIED:
                    denied.append(f"{iam_action(action)} on {qname}")
        if denied:
            return [
                Check(
                    "sqs permissions",
                    "fail",
                    "denied: " + ", ".join(denied),
                    "allow these actions in the IAM policy of these credentials (docs/sqs.md)",
                )
            ]
        return [
            Check(
                "sqs permissions",
                "ok",
                "ReceiveMessage, SendMessage, ChangeMessageVisibility, DeleteMessage not denied",
            )
        ]


def _fix_for(exc: LrtError) -> str:
    text = str(exc)
    if "does not exist" in text:
        return "run `lrtkit setup`, or fix LRT_QUEUE / LRT_SQS_QUEUE_URL / LRT_SQS_REGION"
    if "permission denied" in text:
        return "grant the IAM action named above on the queue (docs/sqs.md)"
    if "credentials" in text:
        return "fix LRT_SQS_ACCESS_KEY_ID / LRT_SQS_SECRET_ACCESS_KEY or the AWS credential chain"
    return "see the message above"
