"""A fresh local queue and file storage with the CLI pointed at them, for the CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from lrtkit.cli import cli
from lrtkit.config import load_settings
from lrtkit.plugins import load_broker, load_storage
from lrtkit.records import JobStore
from lrtkit.testing import unique_name


class CliEnv:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.env = {
            "LRT_BROKER": "local",
            "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
            "LRT_STORAGE": f"file://{tmp_path / 'store'}",
            "LRT_QUEUE": unique_name(),
        }
        self.settings = load_settings(environ=self.env)
        self.broker = load_broker(self.settings)
        self.store = JobStore(load_storage(self.settings))

    def cli(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        """Run ``lrtkit ARGS`` in process; lrtkit's own errors end as exit codes, others raise."""
        wide = {"COLUMNS": "200"}  # rich tables fold at 80 columns when not on a terminal
        result = CliRunner().invoke(
            cli, list(args), env={**self.env, **wide, **(env or {})}, input=input
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def json(self, *args: str) -> object:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)
