"""Settings: environment, explicit mapping, .env file, guide aliases, secrets, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from lrtkit.config import PluginSettings, Settings, load_settings
from lrtkit.errors import ConfigError

SECRET = "s3cr3t-value-never-shown"


def test_defaults_from_an_empty_environment() -> None:
    settings = load_settings(environ={})
    assert settings.broker == "local"
    assert settings.queue == "lrtkit-jobs"
    assert settings.storage == "file://./.lrtkit"
    assert settings.storage_scheme == "file"
    assert settings.lease_seconds == 60.0
    assert settings.heartbeat_seconds == 20.0
    assert (settings.max_failures, settings.max_deliveries) == (3, 10)
    assert settings.local_db == Path(".lrtkit/queue.sqlite3")
    assert settings.s3_secret_access_key is None
    assert settings.environ == {}


def test_read_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRT_BROKER", "sqs")
    monkeypatch.setenv("LRT_QUEUE", "training")
    monkeypatch.setenv("LRT_LEASE_SECONDS", "90")
    monkeypatch.setenv("LRT_MAX_DELIVERIES", "4")
    monkeypatch.setenv("LRT_STORAGE", "s3://bucket/prefix")
    settings = load_settings()
    assert (settings.broker, settings.queue) == ("sqs", "training")
    assert settings.lease_seconds == 90.0
    assert settings.heartbeat_seconds == 30.0
    assert settings.max_deliveries == 4
    assert settings.storage_scheme == "s3"
    assert settings.environ["LRT_QUEUE"] == "training"


def test_an_explicit_mapping_replaces_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRT_QUEUE", "from-os-environ")
    monkeypatch.setenv("LRT_LEASE_SECONDS", "not a number")  # never read
    settings = load_settings(environ={"LRT_QUEUE": "from-mapping"})
    assert settings.queue == "from-mapping"
    assert settings.lease_seconds == 60.0
    assert settings.environ == {"LRT_QUEUE": "from-mapping"}


def test_env_file_and_environment_precedence(tmp_path: Path) -> None:
    env_file = tmp_path / "worker.env"
    env_file.write_text(
        "# comments and blank lines are fine\n\n"
        "LRT_QUEUE=from-file\n"
        "LRT_LEASE_SECONDS=45\n"
        'LRT_S3_SECRET_ACCESS_KEY="' + SECRET + '"\n'
        "SOMETHING_ELSE=ignored\n"
    )
    settings = load_settings(env_file=env_file, environ={"LRT_LEASE_SECONDS": "30"})
    assert settings.queue == "from-file"
    assert settings.lease_seconds == 30.0  # the environment beats the file
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == SECRET
    assert settings.env_file == env_file
    as_str = load_settings(env_file=str(env_file), environ={})
    assert as_str.lease_seconds == 45.0


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError, match=r"nope\.env"):
        load_settings(env_file=missing, environ={})


def test_guide_variable_names_are_aliases() -> None:
    settings = load_settings(
        environ={
            "JOB_QUEUE": "guide-queue",
            "R2_BUCKET_NAME": "my-bucket",
            "R2_S3_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com",
            "R2_AWS_REGION": "auto",
            "R2_AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "R2_AWS_SECRET_ACCESS_KEY": SECRET,
            "SALAD_API_KEY": SECRET,
        }
    )
    assert settings.queue == "guide-queue"
    assert settings.storage == "s3://my-bucket"
    assert settings.storage_scheme == "s3"
    assert settings.s3_endpoint_url == "https://acct.r2.cloudflarestorage.com"
    assert settings.s3_region == "auto"
    assert settings.s3_access_key_id == "AKIDEXAMPLE"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == SECRET
    assert settings.salad_api_key is not None
    assert settings.salad_api_key.get_secret_value() == SECRET


def test_lrt_names_win_over_guide_aliases() -> None:
    settings = load_settings(
        environ={
            "LRT_QUEUE": "ours",
            "JOB_QUEUE": "guide",
            "LRT_STORAGE": "file:///data/lrt",
            "R2_BUCKET_NAME": "my-bucket",
            "LRT_S3_ENDPOINT_URL": "http://minio:9000",
            "R2_S3_ENDPOINT_URL": "https://r2.example",
        }
    )
    assert settings.queue == "ours"
    assert settings.storage == "file:///data/lrt"
    assert settings.s3_endpoint_url == "http://minio:9000"


def test_secrets_are_never_printed() -> None:
    settings = load_settings(
        environ={"LRT_S3_SECRET_ACCESS_KEY": SECRET, "LRT_SALAD_API_KEY": SECRET}
    )
    assert isinstance(settings.s3_secret_access_key, SecretStr)
    for text in (repr(settings), str(settings), settings.model_dump_json(), f"{settings}"):
        assert SECRET not in text
    assert SECRET not in repr(settings.model_dump())
    assert "**********" in repr(settings)
    copy = settings.with_overrides(queue="other")
    assert SECRET not in repr(copy)
    assert copy.s3_secret_access_key == settings.s3_secret_access_key


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LRT_LEASE_SECONDS", "soon", "LRT_LEASE_SECONDS"),
        ("LRT_LEASE_SECONDS", "0", "greater than 0"),
        ("LRT_MAX_FAILURES", "0", "LRT_MAX_FAILURES"),
        ("LRT_MAX_DELIVERIES", "many", "LRT_MAX_DELIVERIES"),
        ("LRT_LOG_FORMAT", "xml", "LRT_LOG_FORMAT"),
        ("LRT_AUTOSCALE_MAX", "-1", "LRT_AUTOSCALE_MAX"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: value})
    message = str(info.value)
    assert variable in message
    assert expected in message
    assert repr(value) in message  # shows what it got


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"LRT_LEASE_SECONDS": "x", "LRT_MAX_FAILURES": "y"})
    assert "LRT_LEASE_SECONDS" in str(info.value)
    assert "LRT_MAX_FAILURES" in str(info.value)


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LRT_LEASE_SECONDS=forever\n")
    with pytest.raises(ConfigError, match="LRT_LEASE_SECONDS"):
        load_settings(env_file=env_file, environ={})


def test_inconsistent_autoscale_bounds() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"LRT_AUTOSCALE_MIN": "5", "LRT_AUTOSCALE_MAX": "2"})
    assert "LRT_AUTOSCALE_MIN" in str(info.value)
    assert "LRT_AUTOSCALE_MAX" in str(info.value)


def test_storage_that_is_not_a_url() -> None:
    settings = load_settings(environ={"LRT_STORAGE": "/just/a/path"})
    with pytest.raises(ConfigError, match="LRT_STORAGE"):
        _ = settings.storage_scheme


class _DemoPluginSettings(PluginSettings):
    url: str = Field("amqp://localhost", validation_alias="LRT_DEMO_URL")
    prefetch: int = Field(1, ge=1, validation_alias="LRT_DEMO_PREFETCH")


def test_plugin_settings_come_from_the_same_sources(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LRT_DEMO_PREFETCH=4\n")
    settings = load_settings(env_file=env_file, environ={"LRT_DEMO_URL": "amqp://rabbit"})
    plugin = settings.plugin_settings(_DemoPluginSettings)
    assert (plugin.url, plugin.prefetch) == ("amqp://rabbit", 4)
    # with_overrides keeps the sources
    again = settings.with_overrides(lease_seconds=5).plugin_settings(_DemoPluginSettings)
    assert again.url == "amqp://rabbit"


def test_bad_plugin_setting_names_the_variable() -> None:
    settings = load_settings(environ={"LRT_DEMO_PREFETCH": "0"})
    with pytest.raises(ConfigError, match="LRT_DEMO_PREFETCH"):
        settings.plugin_settings(_DemoPluginSettings)


def test_settings_class_is_the_one_loaded() -> None:
    assert isinstance(load_settings(environ={}), Settings)


def test_log_level_is_checked_and_case_insensitive() -> None:
    assert load_settings(environ={"LRT_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="LRT_LOG_LEVEL") as err:
        load_settings(environ={"LRT_LOG_LEVEL": "LOUD"})
    assert "'LOUD'" in str(err.value)
