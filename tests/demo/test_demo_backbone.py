"""`make demo` takes the shipped pre-trained backbone when the repository has it, pre-trains
only where it is absent, and prints how long each stage took."""

from __future__ import annotations

import demo.run as demo_run
from modeling.backbone import VLBackbone
from modeling.config import preset
from training.pretrain import PretrainSettings


def _record(calls: list, name: str):
    def record(*args, **kwargs):
        calls.append((name, args, kwargs))
    return record


def test_the_demo_uses_the_shipped_backbone_and_writes_the_world_it_was_trained_beside(
        tmp_path, monkeypatch):
    shipped = tmp_path / "assets" / "backbone-small"
    VLBackbone.from_config(preset("tiny")).save_pretrained(shipped)
    calls: list = []
    monkeypatch.setattr(demo_run, "SHIPPED_BACKBONE", shipped)
    monkeypatch.setattr(demo_run, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(demo_run, "generate", _record(calls, "generate"))
    monkeypatch.setattr(demo_run, "pretrain", _record(calls, "pretrain"))
    assert demo_run.benchmark_backbone(1000) == shipped
    [(name, args, kwargs)] = calls
    defaults = PretrainSettings()
    assert name == "generate" and args == (tmp_path / "runs" / "data" / "world",)
    assert kwargs == {"seed": defaults.seed, "sizes": defaults.sizes}


def test_the_demo_pretrains_when_no_backbone_is_shipped(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(demo_run, "SHIPPED_BACKBONE", tmp_path / "absent")
    monkeypatch.setattr(demo_run, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(demo_run, "pretrain", _record(calls, "pretrain"))
    assert demo_run.benchmark_backbone(7) == tmp_path / "runs" / "backbone-small"
    [(name, args, _)] = calls
    assert args[:2] == (tmp_path / "runs" / "backbone-small", tmp_path / "runs" / "data")
    assert args[2].steps == 7
    with demo_run.stage("adapter training"):
        pass
    assert "-- adapter training: 0s" in capsys.readouterr().out
