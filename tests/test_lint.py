"""The linters the project is configured for (pyproject.toml) pass on the whole tree."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.parametrize("tool", [
    ["ruff", "check", "streams_trace", "tests", "benchmarks"],
    ["mypy"],
])
def test_linter_is_clean(tool: list[str]) -> None:
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run([sys.executable, "-m", *tool], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
