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


@pytest.mark.parametrize(("command", "named"), [
    (["train-adapter", "train", "--config", "x.yaml", "--out", "o", "--steps", "-3"], "--steps"),
    (["adapter-serve", "--max-batch", "x"], "--max-batch"),
    (["adapter-registry", "list", "--bogus"], "--bogus"),
    (["adapter-client", "predict"], "the following arguments are required"),
    (["adapter-serve", "export-onnx", "--out", "o"], "--backbone"),
])
def test_usage_error_is_one_line_naming_the_flag_and_exit_2(command, named):
    result = subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert named in result.stderr
    assert f"see {command[0]}" in result.stderr


def test_params_takes_a_backbone_folder_as_well_as_a_preset(tmp_path):
    from modeling.backbone import VLBackbone
    from modeling.config import preset

    VLBackbone.from_config(preset("tiny-bart")).save_pretrained(tmp_path / "bb")
    counts = []
    for backbone in ("tiny-bart", str(tmp_path / "bb")):
        result = subprocess.run([str(BIN / "train-adapter"), "params", "--backbone", backbone,
                                 "--tasks", "vqa", "--json"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        counts.append(result.stdout)
    assert counts[0] == counts[1]


@pytest.mark.parametrize("command", [
    ["adapter-serve", "--registry", "{tmp}/registry", "--port", "0", "--backbone", "{lm}"],
    ["adapter-serve", "export-onnx", "--out", "{tmp}/x.onnx", "--backbone", "{lm}"],
    ["train-adapter", "backbone", "info", "{lm}"],
])
def test_a_language_model_folder_as_backbone_is_one_line_pointing_at_backbone_build(
        tmp_path, command):
    lm = tmp_path / "t5-base"
    lm.mkdir()
    (lm / "config.json").write_text('{"model_type": "t5"}')
    argv = [part.format(tmp=tmp_path, lm=lm) for part in command]
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"{lm}: not a backbone folder: a 't5' folder is one part of a backbone; build " \
           "one with `train-adapter backbone build" in result.stderr
