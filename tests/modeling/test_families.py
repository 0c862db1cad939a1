"""`modeling.families.load_backbone`: the one place a `--backbone` value becomes a backbone
(a preset, a built folder, or a folder of a registered family), and its one-line refusals."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from modeling import families
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import FAMILIES, backbone_config, load_backbone
from modeling.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    """A tiny backbone with a tokenizer, saved as a folder of ours."""
    tokenizer = build_word_tokenizer(["red", "cube"], "t5")
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    VLBackbone.from_config(preset("tiny"), seed=3, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_preset_builds_random_weights_from_the_seed_with_the_callers_tokenizer():
    seen = []

    def tokenizer_of(config):
        seen.append(config.preset)
        return build_word_tokenizer(["blue"], config.lm_type)

    built = load_backbone("tiny", seed=5, preset_tokenizer=tokenizer_of)
    assert seen == ["tiny"]
    assert built.tokenizer.convert_tokens_to_ids("blue") == 3
    assert built.fingerprint() == VLBackbone.from_config(
        preset("tiny"), seed=5, tokenizer=built.tokenizer).fingerprint()
    assert load_backbone("tiny", seed=6).fingerprint() != \
        VLBackbone.from_config(preset("tiny"), seed=5).fingerprint()


def test_saved_folder_loads_with_its_weights_and_tokenizer(saved_tiny):
    loaded = load_backbone(saved_tiny)
    assert loaded.fingerprint() == VLBackbone.from_pretrained(saved_tiny).fingerprint()
    assert loaded.tokenizer is not None
    assert load_backbone(str(saved_tiny)).fingerprint() == loaded.fingerprint()


def test_backbone_config_of_a_preset_and_of_a_folder(saved_tiny):
    assert backbone_config("vl-bart-base") == preset("vl-bart-base")
    assert backbone_config(saved_tiny) == preset("tiny")


def test_family_folder_goes_to_the_module_registered_for_its_model_type(tmp_path, monkeypatch,
                                                                        saved_tiny):
    folder = tmp_path / "fam"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toyfamily"}))
    loaded = []
    module = types.ModuleType("toy_family_for_test")
    module.detect = lambda path: (Path(path) / "config.json").is_file()
    module.load = lambda path: loaded.append(Path(path)) or VLBackbone.from_pretrained(saved_tiny)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(FAMILIES, "toyfamily", module.__name__)
    assert families.family_of(folder) is module
    assert isinstance(load_backbone(folder), VLBackbone)
    assert loaded == [folder]
    module.detect = lambda path: False
    with pytest.raises(ValueError, match="model_type 'toyfamily' is the toy_family_for_test "
                                         "family's, but the folder lacks that family's files"):
        load_backbone(folder)


def _folder(tmp_path: Path, config: dict | None) -> Path:
    folder = tmp_path / "given"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("config", "expected"), [
    (None, "no vladapter_backbone.json and no config.json"),
    ({"model_type": "bert"},
     "no vladapter_backbone.json and config.json model_type 'bert' is not a known family"),
    ({"model_type": "t5"}, "a 't5' folder is one part of a backbone; build one with "
                           "`train-adapter backbone build"),
    ({"model_type": "clip_vision_model"}, "a 'clip_vision_model' folder is one part"),
    ({"architectures": ["X"]}, "config.json has no model_type"),
])
def test_unusable_folder_is_one_line_naming_what_is_missing(tmp_path, config, expected):
    folder = _folder(tmp_path, config)
    with pytest.raises(ValueError) as raised:
        load_backbone(folder)
    message = str(raised.value)
    assert message.startswith(f"{folder}: ")
    assert expected in message
    assert "\n" not in message


def test_unreadable_config_json_is_named(tmp_path):
    folder = _folder(tmp_path, None)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not readable JSON"):
        load_backbone(folder)


def test_unknown_name_is_neither_preset_nor_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone preset 'huge' and no such folder"):
        load_backbone("huge")


def test_built_folder_missing_a_part_names_the_folder(tmp_path, saved_tiny):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    shutil.rmtree(broken / "lm")
    with pytest.raises(ValueError) as raised:
        load_backbone(broken)
    assert str(raised.value).startswith(f"{broken}: incomplete backbone folder: ")
    assert "\n" not in str(raised.value)
