"""`train-adapter data check`: per task and split, records and format, images / frames /
features found and missing, answer coverage; one line per problem and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_layouts import (
    GQA_QUESTIONS,
    OFFICIAL,
    write_json,
    write_karpathy,
    write_vqav2,
    write_youcook2,
)
from safetensors.numpy import save_file

from training.cli import main


def _config(tmp_path: Path, tasks: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"backbone": "tiny", "methods": "single_adapter",
                                    "tasks": tasks}, sort_keys=False))
    return path


def _check(config: Path, capsys) -> tuple[int, list[str], list[str]]:
    code = main(["data", "check", "--config", str(config)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_every_official_layout_passes_with_its_format_and_visuals_found(tmp_path, capsys):
    tasks = {task: write(tmp_path) for task, write in OFFICIAL.items()}
    code, out, err = _check(_config(tmp_path, tasks), capsys)
    assert (code, err) == (0, [])
    assert out == [
        "vqa/train: 3 records (format vqav2, detected); images: 2 found, 0 missing; "
        "answers: 4 distinct",  # 2, 3, yes, red
        "gqa/train: 3 records (format gqa, detected); images: 2 found, 0 missing; "
        "answers: 3 distinct",
        "nlvr2/train: 3 records (format nlvr2, detected); images: 4 found, 0 missing",
        "caption/train: 2 records (format karpathy, detected); images: 2 found, 0 missing",
        "caption/test: 1 record (format karpathy, detected); images: 1 found, 0 missing",
        "tvqa/train: 3 records (format tvqa, detected); frame folders: 2 found, 0 missing; "
        "subtitles: 1 of 2 videos",
        "how2qa/train: 3 records (format value, detected); frame folders: 2 found, "
        "0 missing; subtitles: 1 of 2 videos",
        "tvc/train: 3 records (format value, detected); frame folders: 2 found, 0 missing; "
        "subtitles: 1 of 2 videos",
        "yc2c/train: 2 records (format youcook2, detected); frame folders: 1 found, "
        "0 missing",
        "yc2c/val: 1 record (format youcook2, detected); frame folders: 1 found, 0 missing",
        "data check: everything found",
    ]


def test_official_youcook2_test_split_reads_empty_with_a_note_not_a_problem(tmp_path,
                                                                            capsys):
    yc2c = write_youcook2(tmp_path)
    code, out, err = _check(_config(tmp_path, {"yc2c": {**yc2c, "test": yc2c["train"]}}),
                            capsys)
    assert (code, err) == (0, [])
    assert out[2] == (
        "yc2c/test: 0 records (format youcook2, detected); frame folders: 0 found, 0 missing; "
        "note: the official YouCook2 annotations (youcookii_annotations_trainval.json) hold "
        "no test split: its test annotations were never released; evaluate on val")
    assert out[3] == "data check: everything found"


def test_an_empty_split_of_another_format_is_still_a_problem(tmp_path, capsys):
    gqa = OFFICIAL["gqa"](tmp_path)
    empty = write_json(tmp_path / "empty.json", {})
    code, _, err = _check(_config(tmp_path, {"gqa": {**gqa, "val": str(empty)}}), capsys)
    assert code == 2 and err == ["train-adapter: error: gqa/val: no records for split 'val' "
                                 "in this file"]


def test_missing_images_and_frames_are_one_line_each_and_exit_2(tmp_path, capsys):
    vqa, tvqa = OFFICIAL["vqa"](tmp_path), OFFICIAL["tvqa"](tmp_path)
    (tmp_path / "coco" / "train2014" / "COCO_train2014_000000000073.jpg").unlink()
    shutil.rmtree(tmp_path / "tvqa" / "frames_hq" / "castle_frames")
    code, out, err = _check(_config(tmp_path, {"vqa": vqa, "tvqa": tvqa}), capsys)
    assert code == 2
    assert out[0].endswith("images: 1 found, 1 missing; answers: 4 distinct")
    assert "frame folders: 1 found, 1 missing" in out[1]
    assert out[-1] == "data check: 2 problem(s)"
    assert err == [
        "train-adapter: error: vqa/train: image (.jpg/.jpeg/.png) 'COCO_train2014_000000000073' "
        f"not found in {tmp_path / 'coco'} nor in its sub-folders (3 levels) (example 73000)",
        "train-adapter: error: tvqa/train: video frame folder 'castle_s01e01_seg01_clip_00' "
        f"not found in {tmp_path / 'tvqa' / 'frames_hq'} nor in its sub-folders (3 levels) "
        "(example 2)",
    ]


def test_only_the_first_problems_are_listed_and_the_rest_counted(tmp_path, capsys):
    entry = write_karpathy(tmp_path)
    document = json.loads(Path(entry["train"]).read_text())
    template = document["images"][0]
    document["images"] = [{**template, "cocoid": n, "filename": f"missing_{n}.jpg"}
                          for n in range(8)]
    write_json(Path(entry["train"]), document)
    code, out, err = _check(_config(tmp_path, {"caption": {**entry, "test": None}}), capsys)
    assert code == 2 and out[-1] == "data check: 8 problem(s)"
    assert len(err) == 6 and err[-1] == "train-adapter: error: caption/train: ... and 3 more"
    assert all("'missing_" in line and "(example " in line for line in err[:5])


def test_answer_coverage_of_a_split_against_the_train_answers(tmp_path, capsys):
    entry = OFFICIAL["gqa"](tmp_path)
    val = {qid: {**record, "answer": answer} for (qid, record), answer
           in zip(GQA_QUESTIONS.items(), ["no", "plate", "man"], strict=True)}
    entry["val"] = str(write_json(tmp_path / "gqa" / "val_balanced_questions.json", val))
    code, out, _ = _check(_config(tmp_path, {"gqa": entry}), capsys)
    assert code == 0
    assert out[1] == ("gqa/val: 3 records (format gqa, detected); images: 2 found, 0 missing; "
                      "answers: 2 of 3 labelled questions (66.7%) have their best answer "
                      "among the 3 train answers")


def test_a_broken_record_names_file_line_field_and_format_in_one_line(tmp_path, capsys):
    entry = OFFICIAL["nlvr2"](tmp_path)
    lines = Path(entry["train"]).read_text().splitlines()
    lines[1] = lines[1].replace('"label": "False"', '"label": false')
    Path(entry["train"]).write_text("\n".join(lines) + "\n")
    code, out, err = _check(_config(tmp_path, {"nlvr2": entry}), capsys)
    assert code == 2 and out == ["nlvr2/train: not read (the problem is below)",
                             "data check: 1 problem(s)"]
    assert err == [
        f"train-adapter: error: nlvr2/train: {entry['train']}: line 2 "
        "(identifier=train-10171-0-1): field 'label': expected one of 'True', 'False', "
        "got false [read as nlvr2 format 'nlvr2': official NLVR2 JSON lines {identifier, "
        "sentence, label: 'True'|'False'}; detected from the file's structure]"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"visual": "nowhere"}, "vqa: visual: image folder {root}/nowhere does not exist"),
    ({"train": "absent.json"}, "vqa/train: {root}/absent.json: no such file"),
    ({"annotations": "{root}/none_{split}.json"}, "vqa/train: {root}/none_train.json: no such "
                                                  "file"),
    ({"format": "vl-t5"}, "set in the config, but the file's structure looks like format "
                          "'vqav2'"),
])
def test_unreadable_sources_are_problems(tmp_path, capsys, change, expected):
    entry = write_vqav2(tmp_path)
    entry.update({key: value.format(root=tmp_path, split="{split}") if key != "train"
                  else str(tmp_path / value) for key, value in change.items()})
    code, _, err = _check(_config(tmp_path, {"vqa": entry}), capsys)
    assert code == 2 and len(err) >= 1, err
    assert all(line.startswith("train-adapter: error: ") for line in err)
    assert expected.format(root=tmp_path) in "\n".join(err), err


def test_features_are_checked_in_a_feature_store(tmp_path, capsys):
    entry = write_vqav2(tmp_path)
    store = tmp_path / "features.safetensors"
    save_file({"COCO_train2014_000000000042": np.zeros((36, 8), np.float32)}, str(store))
    code, out, err = _check(_config(tmp_path, {"vqa": {**entry, "visual": str(store)}}),
                            capsys)
    assert code == 2 and "features: 1 found, 1 missing" in out[0]
    assert err == [f"train-adapter: error: vqa/train: features of "
                   f"'COCO_train2014_000000000073' not found in {store} (example 73000)"]
