"""Lint and type checks as part of the suite, so CI and a developer run the same gate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]])
def test_static_checks(command: list[str]) -> None:
    if shutil.which(command[0]) is None and not (Path(sys.executable).parent / command[0]).exists():
        pytest.fail(f"{command[0]} is not installed: pip install -e '.[dev]'")
    tool = str(Path(sys.executable).parent / command[0])
    result = subprocess.run([tool, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
