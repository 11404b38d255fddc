"""The code standards CI enforces: ``ruff check .`` and ``mypy --strict`` are clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = ["plugins/lrtkit-sqs/src", "plugins/lrtkit-rabbitmq/src"]


def _tool(name: str) -> list[str]:
    """Run a tool from this interpreter's environment (a venv's bin), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'", pytrace=False)
    return [found]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_check() -> None:
    proc = _run([*_tool("ruff"), "check", "."])
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}\n{proc.stderr}"


def test_mypy_strict() -> None:
    targets = ["lrtkit", *(p for p in PLUGIN_SOURCES if (ROOT / p).is_dir())]
    proc = _run([*_tool("mypy"), "--strict", *targets])
    assert proc.returncode == 0, f"mypy --strict found problems:\n{proc.stdout}\n{proc.stderr}"
