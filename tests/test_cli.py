"""Every console script exists, answers --help, and reports user errors in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCRIPTS = ("train-adapter", "adapter-registry", "adapter-serve", "adapter-client")


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_answers_help(script):
    result = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_train_adapter_user_error_is_one_line_and_exit_2():
    result = subprocess.run([str(BIN / "train-adapter"), "params", "--backbone", "huge"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown backbone preset 'huge'" in result.stderr
