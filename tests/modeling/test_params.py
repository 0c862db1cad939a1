"""The parameter report reproduces VL-Adapter's published percentages."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from modeling.config import preset
from modeling.params import report
from modeling.presets import method_preset
from training.cli import main


def _json_report(capsys, *args: str) -> dict:
    assert main(["params", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_single_adapter_image_text_is_4_18_percent(capsys):
    result = _json_report(capsys, "--backbone", "vl-bart-base", "--preset", "single_adapter",
                          "--tasks", "vqa,gqa,nlvr2,caption")
    assert f"{result['percent']:.2f}" == "4.18"
    assert result["trainable"] == 6_081_600


def test_single_adapter_video_text_is_3_39_percent(capsys):
    result = _json_report(capsys, "--backbone", "vl-bart-base", "--preset", "single_adapter",
                          "--tasks", "tvqa,how2qa,tvc,yc2c")
    assert f"{result['percent']:.2f}" == "3.39"


@pytest.mark.parametrize(("preset_name", "percent"), [
    ("multiple_adapters", "12.22"), ("half_shared_adapters", "8.36"),
    ("multiple_compacters", "7.05"), ("single_compacter", "2.70"),
    ("multiple_prompts", "4.53"), ("single_prompt", "2.00"), ("full_finetuning", "100.00")])
def test_other_presets_match_the_paper_table(capsys, preset_name, percent):
    result = _json_report(capsys, "--preset", preset_name)
    assert f"{result['percent']:.2f}" == percent


class _TensorDevices(TorchDispatchMode):
    """Records the device of every tensor any torch op creates while active."""

    def __init__(self):
        super().__init__()
        self.devices: set[torch.device] = set()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self.devices.add(leaf.device)
        return out


def test_the_report_builds_and_counts_everything_on_the_meta_device():
    """The paper-sized backbone and its adapters are never allocated: every tensor the
    report creates is a meta tensor, and the count is still the paper's."""
    with _TensorDevices() as seen:
        result = report(preset("vl-bart-base"), method_preset("single_adapter"),
                        ["vqa", "gqa", "nlvr2", "caption"])
    assert seen.ops > 1000  # guard: the mode saw the whole build
    assert seen.devices == {torch.device("meta")}
    assert (result.trainable, f"{result.percent:.2f}") == (6_081_600, "4.18")


def test_mixing_image_and_video_tasks_is_refused(capsys):
    assert main(["params", "--tasks", "vqa,tvqa"]) == 2
    assert "separately" in capsys.readouterr().err
