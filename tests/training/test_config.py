"""Run configs: every wrong field is named with what was expected."""

from __future__ import annotations

import pytest

from training.config import ConfigError, load_config, parse_config

BASE = {"backbone": "tiny", "methods": "single_adapter",
        "tasks": {"vqa": {"train": "t.json", "visual": "images"}}}


@pytest.mark.parametrize(("change", "message"), [
    ({"steps": 0}, "steps: expected an integer >= 1"),
    ({"sampling": "random"}, "sampling: expected one of"),
    ({"data_ratio": 1.5}, r"data_ratio: expected a number in \(0, 1\]"),
    ({"methods": "no_such_preset"}, "methods: unknown method preset"),
    ({"methods": [{"config": {}}]}, r"methods\[0\]: expected a mapping with a 'method' key"),
    ({"tasks": {"vqa2": {"train": "t", "visual": "v"}}}, "unknown task 'vqa2'"),
    ({"tasks": {"vqa": {"train": "t"}}}, r"tasks.vqa.visual: missing"),
    ({"tasks": {"vqa": {"train": "t", "visual": "v", "batch_size": 0}}},
     "tasks.vqa.batch_size: expected a positive integer"),
    ({"learning_rate": 1e-3}, r"unknown key\(s\) \['learning_rate'\]"),
    ({"eval_every": "weekly"}, "eval_every: expected a step count >= 0 or 'epoch'"),
    ({"steps": 1.5}, "steps: expected an integer >= 1, got 1.5"),
    ({"seed": True}, "seed: expected an integer >= 0, got True"),
    ({"weight_decay": "x"}, "weight_decay: expected a number >= 0, got 'x'"),
    ({"clip_grad": float("nan")}, "clip_grad: expected a positive number, got nan"),
    ({"eval_examples": "x"}, "eval_examples: expected an integer >= 1"),
    ({"java_metrics": "yes"}, "java_metrics: expected true, false or nothing"),
    ({"device": "tpu"}, "device: expected cpu, cuda or cuda:N, got 'tpu'"),
    ({"feature_cache": ""}, "feature_cache: expected a folder path"),
    ({"choice_answer": "index"},
     r"choice_answer: expected one of \('label', 'text', 'text_mean'\)"),
    ({"feature_cache": 3}, "feature_cache: expected a folder path .* got 3"),
    ({"methods": [{"method": "lora", "config": {"rank": "four"}}]},
     r"methods\[0\]: config.rank must be an integer, got 'four'"),
    ({"methods": [{"method": "prompt_tuning", "config": {"hidden_dim": 2000000}}]},
     r"methods\[0\]: config.hidden_dim is 2000000, above the limit"),
    ({"methods": [{"method": "lora", "config": {"rnak": 4}}]},
     r"methods\[0\]: config has unknown field\(s\) \['rnak'\]"),
    ({"methods": [{"method": "lora", "config": [4]}]}, r"methods\[0\]: config: expected a mapping"),
    ({"tasks": {"vqa": {"train": 5, "visual": "v"}}}, "tasks.vqa.train: expected a path, got 5"),
    ({"tasks": {"vqa": {"train": "t", "visual": "v", "subtitles": ["s"]}}},
     r"tasks.vqa.subtitles: expected a path, got \['s'\]"),
])
def test_bad_fields_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, **change})


def test_relative_paths_are_read_from_the_config_folder(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "backbone: ../bb\nmethods: single_lora\nfeature_cache: cache\n"
        "tasks:\n  gqa: {train: g.json, visual: img}\n")
    config = load_config(tmp_path / "run.yaml")
    assert config.backbone == str(tmp_path / "../bb")
    assert config.feature_cache == str(tmp_path / "cache")
    assert config.tasks["gqa"].train == str(tmp_path / "g.json")


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("tasks: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "latin1.yaml").write_bytes("backbone: café".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: not valid YAML"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
