"""The SQS plugin's own settings (``LRT_SQS_*``, with the SaladCloud guide's names as aliases).

Read through ``Settings.plugin_settings(SqsSettings)`` so they come from the same environment
and ``.env`` file as lrtkit's core settings. Anything left unset falls back to the standard
AWS chain (``AWS_*`` variables, ``~/.aws``, instance roles).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from lrtkit.config import PluginSettings

#: SQS's own cap on one receipt's visibility: 12 hours from the moment it was received.
SQS_MAX_VISIBILITY = 43200
#: The SaladCloud guide's "Maximum message size": 256 KiB.
GUIDE_MAX_MESSAGE_SIZE = 262144


class SqsSettings(PluginSettings):
    """``LRT_SQS_*`` variables; the guide's ``SQS_*`` names are accepted too."""

    queue_url: str | None = Field(
        None, validation_alias=AliasChoices("LRT_SQS_QUEUE_URL", "SQS_QUEUE_URL")
    )
    dlq_url: str | None = Field(
        None, validation_alias=AliasChoices("LRT_SQS_DLQ_URL", "SQS_DLQ_URL")
    )
    region: str | None = Field(
        None, validation_alias=AliasChoices("LRT_SQS_REGION", "SQS_AWS_REGION")
    )
    endpoint_url: str | None = Field(None, validation_alias=AliasChoices("LRT_SQS_ENDPOINT_URL"))
    access_key_id: str | None = Field(
        None, validation_alias=AliasChoices("LRT_SQS_ACCESS_KEY_ID", "SQS_AWS_ACCESS_KEY_ID")
    )
    secret_access_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("LRT_SQS_SECRET_ACCESS_KEY", "SQS_AWS_SECRET_ACCESS_KEY"),
    )
    session_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LRT_SQS_SESSION_TOKEN", "SQS_AWS_SESSION_TOKEN")
    )
    profile: str | None = Field(None, validation_alias=AliasChoices("LRT_SQS_PROFILE"))
    max_lease_seconds: float = Field(
        SQS_MAX_VISIBILITY,
        gt=0,
        le=SQS_MAX_VISIBILITY,
        validation_alias=AliasChoices("LRT_SQS_MAX_LEASE_SECONDS"),
    )
    max_message_size: int = Field(
        GUIDE_MAX_MESSAGE_SIZE,
        ge=1024,
        le=1048576,
        validation_alias=AliasChoices("LRT_SQS_MAX_MESSAGE_SIZE"),
    )
    publish_threads: int = Field(4, ge=1, le=32, validation_alias=AliasChoices("LRT_SQS_THREADS"))
    publish_attempts: int = Field(
        5, ge=1, validation_alias=AliasChoices("LRT_SQS_PUBLISH_ATTEMPTS")
    )
    max_attempts: int = Field(8, ge=1, validation_alias=AliasChoices("LRT_SQS_MAX_ATTEMPTS"))
    connect_timeout: float = Field(
        5.0, gt=0, validation_alias=AliasChoices("LRT_SQS_CONNECT_TIMEOUT")
    )
    poll_seconds: int = Field(
        20, ge=0, le=20, validation_alias=AliasChoices("LRT_SQS_POLL_SECONDS")
    )
