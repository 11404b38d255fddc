"""The user-facing docs keep up with the code: every command, every setting, the Quickstart."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from lrtkit.cli import COMMANDS
from lrtkit.config import PluginSettings, Settings
from lrtkit.plugins import BROKERS, STORAGE

ROOT = Path(__file__).resolve().parents[1]


def _subclasses(cls: type[BaseSettings]) -> list[type[BaseSettings]]:
    found: list[type[BaseSettings]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _variables() -> set[str]:
    """Every variable name (aliases included) of the core and the installed plugins' settings."""
    for group in (BROKERS, STORAGE):
        for ep in entry_points(group=group):
            try:
                ep.load()  # importing a plugin defines its settings class
            except ImportError:
                continue
    names: set[str] = set()
    classes: list[type[BaseSettings]] = [Settings, *_subclasses(PluginSettings)]
    for cls in classes:
        if not cls.__module__.startswith(("lrtkit", "lrtkit_")):
            continue  # settings classes defined by tests
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(c) for c in alias.choices)
            elif isinstance(alias, str):
                names.add(alias)
            else:
                names.add(name.upper())
    return names


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(v for v in _variables() if f"`{v}`" not in text)
    assert not missing, f"docs/configuration.md does not mention: {', '.join(missing)}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_documented(command: str) -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    assert f"## `lrtkit {command}`" in text


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert "lrtkit demo" in commands[0]
    install, _, test = commands[1].partition(" && ")
    assert test == "pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci
    assert "LRT_REQUIRE_BROKERS=1" in ci


@pytest.mark.parametrize(
    "page",
    ["README.md", "docs/index.md", "docs/cli.md", "docs/configuration.md", "examples/README.md"],
)
def test_local_links_resolve(page: str) -> None:
    path = ROOT / page
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    local = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    missing = [t for t in local if not (path.parent / t).exists()]
    assert not missing, f"{page} links to missing files: {', '.join(missing)}"
