"""The code base stays ruff clean: lint rules and formatting, with the settings in pyproject.toml."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command, repo):
    result = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
