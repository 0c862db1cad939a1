"""The parameter report reproduces VL-Adapter's published percentages."""

from __future__ import annotations

import json

import pytest
import torch

from modeling.backbone import VLBackbone
from modeling.config import preset
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


def test_counting_happens_on_the_meta_device_without_memory():
    backbone = VLBackbone.from_config(preset("vl-t5-base"), device="meta")
    assert all(p.device == torch.device("meta") for p in backbone.parameters())


def test_mixing_image_and_video_tasks_is_refused(capsys):
    assert main(["params", "--tasks", "vqa,tvqa"]) == 2
    assert "separately" in capsys.readouterr().err
