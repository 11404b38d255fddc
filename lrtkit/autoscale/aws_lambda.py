"""AWS Lambda entry point: one autoscaling decision per invocation.

Configure the function with the handler ``lrtkit.autoscale.aws_lambda.handler``, an
EventBridge schedule (``rate(5 minutes)``) and the same environment a ``lrtkit autoscale
--once`` would get (``LRT_BROKER``, ``LRT_QUEUE``, ``LRT_STORAGE``, ``LRT_SALAD_*``,
``LRT_AUTOSCALE_*``). The variable names of the SaladCloud SQS guide's Lambda (``queue_url``,
``salad_org``, ``salad_project``, ``salad_container_group_name``, ``salad_api_key``,
``min_replicas``, ``max_replicas``) work too. See docs/autoscaling.md.

The function returns the decision as a JSON-able dict and raises on failure, so the
invocation shows as failed in CloudWatch (and alarms can watch it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from lrtkit.autoscale.autoscaler import Autoscaler
from lrtkit.config import load_settings

log = logging.getLogger("lrtkit.autoscale")

# The SaladCloud guides' names (Lambda and Cloudflare versions) -> lrtkit's.
GUIDE_ALIASES: dict[str, str] = {
    "queue_url": "LRT_SQS_QUEUE_URL",
    "salad_org": "LRT_SALAD_ORG",
    "org": "LRT_SALAD_ORG",
    "salad_project": "LRT_SALAD_PROJECT",
    "project": "LRT_SALAD_PROJECT",
    "salad_container_group_name": "LRT_SALAD_CONTAINER_GROUP",
    "container_group_name": "LRT_SALAD_CONTAINER_GROUP",
    "salad_api_key": "LRT_SALAD_API_KEY",
    "min_replicas": "LRT_AUTOSCALE_MIN",
    "max_replicas": "LRT_AUTOSCALE_MAX",
}
# Lambda's file system is read-only except /tmp, which a cold start empties: without a
# bucket the cool-down memory survives only while the function stays warm.
LAMBDA_FALLBACK_STORAGE = "file:///tmp/lrtkit"


def lambda_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the guides' names mapped to lrtkit's (lrtkit's own win)."""
    env = dict(environ)
    for guide_name, lrt_name in GUIDE_ALIASES.items():
        value = env.get(guide_name)
        if value and not env.get(lrt_name):
            env[lrt_name] = value
    if env.get("queue_url") and not env.get("LRT_BROKER"):
        env["LRT_BROKER"] = "sqs"
    if not env.get("LRT_STORAGE") and not env.get("R2_BUCKET_NAME"):
        env["LRT_STORAGE"] = LAMBDA_FALLBACK_STORAGE
        log.warning(
            "LRT_STORAGE is not set: keeping the autoscaler's cool-down memory in /tmp, which a "
            "cold start forgets; set LRT_STORAGE=s3://BUCKET/PREFIX to keep it"
        )
    return env


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Run one decision; return it as a dict. The event may carry ``{"provider": NAME}``."""
    _ensure_logging()
    settings = load_settings(environ=lambda_environ(os.environ))
    provider = event.get("provider") if isinstance(event, dict) else None
    with Autoscaler.from_settings(settings, provider=provider) as autoscaler:
        return autoscaler.run_once().to_dict()


def _ensure_logging() -> None:
    # The Lambda runtime installs a root handler at WARNING; decisions are INFO.
    logger = logging.getLogger("lrtkit.autoscale")
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
