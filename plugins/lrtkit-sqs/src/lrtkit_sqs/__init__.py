"""Amazon SQS FIFO broker for lrtkit (``LRT_BROKER=sqs``); see docs/sqs.md."""

from lrtkit_sqs.broker import SqsBroker
from lrtkit_sqs.settings import SqsSettings

__all__ = ["SqsBroker", "SqsSettings"]
