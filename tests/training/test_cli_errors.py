"""train-adapter train: every user error is one line on stderr and exit 2; presets train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from modeling.backbone import VLBackbone
from training.cli import main
from training.config import load_task_split, parse_config


def _one_task(world: dict, task: str, **changes) -> dict:
    """The world's run config cut to `task`, with `changes` to its data entry."""
    return {**world["raw"], "steps": 1, "tasks": {task: {**world["raw"]["tasks"][task],
                                                         **changes}}}


def _subtitles_folder_without_srt(world: dict, tmp_path: Path) -> dict:
    """A subtitles folder is TVQA's folder of .srt files; this one has none."""
    return _one_task(world, "tvqa", subtitles=str(tmp_path))


def _train_file_folder(world: dict, tmp_path: Path) -> dict:
    return _one_task(world, "nlvr2", train=str(tmp_path))


def _features_too_wide(world: dict, tmp_path: Path) -> dict:
    """A feature store with 100-wide features; the tiny backbone takes 64."""
    raw = _one_task(world, "vqa")
    data = parse_config(raw).tasks["vqa"]
    ids = {v for split in ("train", "val") for e in load_task_split("vqa", data, split)
           for v in e.visual_ids}
    save_file({v: np.zeros((4, 100), np.float32) for v in ids}, str(tmp_path / "f.safetensors"))
    return _one_task(world, "vqa", visual=str(tmp_path / "f.safetensors"))


def _broken_image(world: dict, tmp_path: Path) -> dict:
    raw = _one_task(world, "nlvr2")
    images = tmp_path / "images"
    shutil.copytree(raw["tasks"]["nlvr2"]["visual"], images)
    first = load_task_split("nlvr2", parse_config(raw).tasks["nlvr2"], "train")[0]
    broken = next(images.glob(f"{first.visual_ids[0]}.*"))
    broken.write_bytes(b"not an image")
    return _one_task(world, "nlvr2", visual=str(images))


def _backbone_is_a_language_model_folder(world: dict, tmp_path: Path) -> dict:
    """`backbone:` names a Hugging Face T5 folder: one part, not a backbone."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    return {**_one_task(world, "vqa"), "backbone": str(tmp_path)}


# case -> (config maker, what the one line must say)
CASES = {
    "subtitles folder without .srt": (_subtitles_folder_without_srt,
                                      "expected a folder of <vid_name>.srt files"),
    "train file is a folder": (_train_file_folder, "expected a file, got a folder"),
    "features wider than feat_dim": (_features_too_wide, "has feat_dim 100; this backbone "
                                                         "takes 64"),
    "image file is not an image": (_broken_image, "not a readable image"),
    "backbone is a T5 folder": (_backbone_is_a_language_model_folder,
                                "not a backbone folder: a 't5' folder is one part of a "
                                "backbone; build one with `train-adapter backbone build"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_on_stderr_and_exit_2(world, tmp_path, capsys, case):
    make, expected = CASES[case]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make(world, tmp_path)))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("train-adapter: error: ") and expected in err, err


def test_a_preset_backbone_trains_with_a_tokenizer_of_the_run_and_is_saved(world, tmp_path,
                                                                          capsys):
    raw = {**_one_task(world, "nlvr2"), "backbone": "tiny", "steps": 2}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert f"backbone: {tmp_path / 'out' / 'backbone'}" in capsys.readouterr().out
    saved = VLBackbone.from_pretrained(tmp_path / "out" / "backbone")
    manifest = json.loads((tmp_path / "out" / "artifact" / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"] == saved.fingerprint()
    assert manifest["base_model"]["preset"] == "tiny"
    example = load_task_split("nlvr2", parse_config(raw).tasks["nlvr2"], "train")[0]
    ids = saved.tokenizer(example.source_text)["input_ids"]
    assert saved.tokenizer.unk_token_id not in ids and len(ids) > 2
