"""Configuration: ``LRT_*`` environment variables, an optional ``.env`` file, guide aliases.

Core settings live in :class:`Settings`. Each plugin owns its own variables in a subclass of
:class:`PluginSettings` and reads them with :meth:`Settings.plugin_settings`, which uses the
same environment and ``.env`` file the core settings came from. Tests and embedders can
build settings from an explicit mapping instead of ``os.environ``
(``load_settings(environ={...})``); plugin settings then come from that mapping too.

Variable names of the SaladCloud guides are accepted as aliases, so a user of those guides
changes nothing: ``JOB_QUEUE`` for the queue, ``R2_BUCKET_NAME`` (as ``s3://BUCKET``),
``R2_S3_ENDPOINT_URL``, ``R2_AWS_ACCESS_KEY_ID`` and ``R2_AWS_SECRET_ACCESS_KEY`` for storage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from lrtkit.errors import ConfigError

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("lrtkit_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], mapping: Mapping[str, str]) -> None:
        self._mapping = mapping
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            (k if self.case_sensitive else k.lower()): v
            for k, v in self._mapping.items()
            if not (self.env_ignore_empty and v == "")
        }


class _LrtBaseSettings(BaseSettings):
    """Shared source order: explicit arguments, then environment (or mapping), then .env."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        mapping = _ENVIRON.get()
        if mapping is not None:
            env_settings = _MappingEnvSource(settings_cls, mapping)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)


def _env(*names: str) -> Any:
    """Field alias accepting any of ``names`` (the first is the canonical ``LRT_*`` one)."""
    return AliasChoices(*names)


class PluginSettings(_LrtBaseSettings):
    """Base for a plugin's own settings class; build it with ``Settings.plugin_settings``."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)


class Settings(_LrtBaseSettings):
    """lrtkit's core settings. Field docs name the variables; see docs/configuration.md."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    broker: str = Field("local", validation_alias=_env("LRT_BROKER"))
    queue: str = Field("lrtkit-jobs", validation_alias=_env("LRT_QUEUE", "JOB_QUEUE"))
    storage: str = Field("file://./.lrtkit", validation_alias=_env("LRT_STORAGE"))
    r2_bucket_name: str | None = Field(None, validation_alias=_env("R2_BUCKET_NAME"))
    s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("LRT_S3_ENDPOINT_URL", "R2_S3_ENDPOINT_URL")
    )
    s3_region: str | None = Field(None, validation_alias=_env("LRT_S3_REGION", "R2_AWS_REGION"))
    s3_access_key_id: str | None = Field(
        None, validation_alias=_env("LRT_S3_ACCESS_KEY_ID", "R2_AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("LRT_S3_SECRET_ACCESS_KEY", "R2_AWS_SECRET_ACCESS_KEY")
    )

    lease_seconds: float = Field(60.0, gt=0, validation_alias=_env("LRT_LEASE_SECONDS"))
    max_failures: int = Field(3, ge=1, validation_alias=_env("LRT_MAX_FAILURES"))
    max_deliveries: int = Field(10, ge=1, validation_alias=_env("LRT_MAX_DELIVERIES"))
    grace_seconds: float = Field(20.0, ge=0, validation_alias=_env("LRT_GRACE_SECONDS"))
    retry_backoff_seconds: float = Field(
        5.0, ge=0, validation_alias=_env("LRT_RETRY_BACKOFF_SECONDS")
    )
    checkpoint_keep: int = Field(2, ge=1, validation_alias=_env("LRT_CHECKPOINT_KEEP"))
    local_db: Path = Field(Path("./.lrtkit/queue.sqlite3"), validation_alias=_env("LRT_LOCAL_DB"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias=_env("LRT_LOG_LEVEL")
    )
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("LRT_LOG_FORMAT"))

    # autoscaler and SaladCloud
    salad_api_key: SecretStr | None = Field(
        None, validation_alias=_env("LRT_SALAD_API_KEY", "SALAD_API_KEY")
    )
    salad_org: str | None = Field(None, validation_alias=_env("LRT_SALAD_ORG", "salad_org"))
    salad_project: str | None = Field(
        None, validation_alias=_env("LRT_SALAD_PROJECT", "salad_project")
    )
    salad_container_group: str | None = Field(
        None, validation_alias=_env("LRT_SALAD_CONTAINER_GROUP", "salad_container_group_name")
    )
    salad_api_url: str = Field(
        "https://api.salad.com/api/public", validation_alias=_env("LRT_SALAD_API_URL")
    )
    salad_imds_url: str = Field(
        "http://169.254.169.254", validation_alias=_env("LRT_SALAD_IMDS_URL")
    )
    salad_reallocate_after: int | None = Field(
        None, ge=1, validation_alias=_env("LRT_SALAD_REALLOCATE_AFTER")
    )
    autoscale_provider: str = Field("salad", validation_alias=_env("LRT_AUTOSCALE_PROVIDER"))
    autoscale_policy: str = Field("proportional", validation_alias=_env("LRT_AUTOSCALE_POLICY"))
    autoscale_min: int = Field(0, ge=0, validation_alias=_env("LRT_AUTOSCALE_MIN", "min_replicas"))
    autoscale_max: int = Field(10, ge=0, validation_alias=_env("LRT_AUTOSCALE_MAX", "max_replicas"))
    autoscale_cooldown: float = Field(300.0, ge=0, validation_alias=_env("LRT_AUTOSCALE_COOLDOWN"))
    autoscale_jobs_per_replica: int = Field(
        1, ge=1, validation_alias=_env("LRT_AUTOSCALE_JOBS_PER_REPLICA")
    )
    autoscale_steps: str = Field(
        "1:1,50:2,100:3,500:5,1000:8,5000:10", validation_alias=_env("LRT_AUTOSCALE_STEPS")
    )

    _env_file: Path | None = PrivateAttr(default=None)
    _environ: Mapping[str, str] | None = PrivateAttr(default=None)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _storage_from_guide(self) -> Settings:
        # R2_BUCKET_NAME (the guides') stands for LRT_STORAGE=s3://BUCKET when LRT_STORAGE is unset.
        if self.r2_bucket_name and "storage" not in self.model_fields_set:
            self.storage = f"s3://{self.r2_bucket_name}"
        if self.autoscale_min > self.autoscale_max:
            raise ValueError(
                f"LRT_AUTOSCALE_MIN ({self.autoscale_min}) is above "
                f"LRT_AUTOSCALE_MAX ({self.autoscale_max})"
            )
        return self

    @property
    def storage_scheme(self) -> str:
        """The storage plugin name: the scheme of ``LRT_STORAGE`` (``file``, ``s3``)."""
        scheme, sep, _ = self.storage.partition("://")
        if not sep or not scheme:
            raise ConfigError(
                f"LRT_STORAGE={self.storage!r} is not a URL: use file://PATH or s3://BUCKET/PREFIX"
            )
        return scheme.lower()

    @property
    def heartbeat_seconds(self) -> float:
        """How often the worker renews its lease: a third of the lease."""
        return self.lease_seconds / 3

    @property
    def env_file(self) -> Path | None:
        return self._env_file

    @property
    def environ(self) -> Mapping[str, str]:
        """The environment these settings were read from (a copy of ``os.environ`` if none)."""
        return self._environ if self._environ is not None else dict(os.environ)

    def plugin_settings(self, cls: type[_P]) -> _P:
        """Build a plugin's settings from the same environment and ``.env`` file as these."""
        with _using_environ(self._environ):
            return _construct(cls, self._env_file)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (for tests and per-command flags)."""
        copy = self.model_copy(update=changes)
        copy._env_file = self._env_file
        copy._environ = self._environ
        return copy


_P = TypeVar("_P", bound=BaseSettings)


@contextmanager
def _using_environ(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _construct(cls: type[_P], env_file: Path | None) -> _P:
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file}: no such file")
    try:
        if env_file is not None:
            return cls(_env_file=env_file)
        return cls()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, cls)) from None


def describe_validation_error(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """One line per bad variable, naming the variable (not the Python field)."""
    lines = []
    for err in exc.errors():
        loc = err["loc"][0] if err["loc"] else ""
        name = str(loc)
        field: FieldInfo | None = cls.model_fields.get(name)
        if field is not None and isinstance(field.validation_alias, AliasChoices):
            name = str(field.validation_alias.choices[0])
        where = f"{name}: " if name else ""
        value = err.get("input")
        secret = "SECRET" in name or "KEY" in name
        shown = "" if isinstance(value, dict) or secret else f" (got {value!r})"
        lines.append(f"{where}{err['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(
    env_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the settings from the environment (or ``environ``) and an optional ``.env`` file.

    Raises :class:`~lrtkit.errors.ConfigError` naming every bad variable.
    """
    path = Path(env_file) if env_file is not None else None
    frozen = dict(environ) if environ is not None else None
    with _using_environ(frozen):
        settings = _construct(Settings, path)
    settings._env_file = path
    settings._environ = frozen
    return settings
