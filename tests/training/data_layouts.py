"""Tiny files in the eight datasets' official layouts, as their releases ship them.

Each ``write_<layout>(root)`` writes three records (with the fields the releases carry,
also those the readers ignore), the images or frame folders they name in the release's
folder structure, and returns the task's run-config entry. ``RECORDS`` keeps the written
records so tests can compare what the readers produced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image


def tiny_image(path: Path) -> Path:
    """A 4x4 image file (PNG or JPEG by its suffix), with its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _answers(*answers: str) -> list[dict]:
    return [{"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
            for index, answer in enumerate(answers)]


VQA_QUESTIONS = [
    {"image_id": 42, "question": "How many dogs are there?", "question_id": 42000},
    {"image_id": 42, "question": "Is it sunny?", "question_id": 42001},
    {"image_id": 73, "question": "What colour is the bus?", "question_id": 73000},
]
VQA_ANNOTATIONS = [
    {"question_id": 42000, "image_id": 42, "question_type": "how many", "answer_type": "number",
     "multiple_choice_answer": "2", "answers": _answers(*["2"] * 7, "two", "3", "3")},
    {"question_id": 42001, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
     "multiple_choice_answer": "yes", "answers": _answers(*["yes"] * 10)},
    {"question_id": 73000, "image_id": 73, "question_type": "what color is the",
     "answer_type": "other", "multiple_choice_answer": "red",
     "answers": _answers(*["red"] * 9, "Red.")},
]  # fmt: skip


def write_vqav2(root: Path) -> dict[str, Any]:
    """``v2_OpenEnded_mscoco_train2014_questions.json`` + annotations; COCO's
    ``train2014/``."""
    questions = write_json(root / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json", {
        "info": {"version": "2.0"}, "task_type": "Open-Ended", "data_type": "mscoco",
        "license": {}, "data_subtype": "train2014", "questions": VQA_QUESTIONS})
    write_json(root / "vqa" / "v2_mscoco_train2014_annotations.json", {
        "info": {}, "license": {}, "data_subtype": "train2014", "annotations": VQA_ANNOTATIONS})
    for image_id in (42, 73):
        tiny_image(root / "coco" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    return {"train": str(questions), "visual": str(root / "coco"),
            "annotations": str(root / "vqa" / "v2_mscoco_{split}2014_annotations.json")}


GQA_QUESTIONS = {
    "20968379": {"semantic": [{"operation": "select", "dependencies": [], "argument": "sky"}],
                 "entailed": [], "equivalent": ["20968379"], "question": "Is the sky dark?",
                 "imageId": "n161313", "isBalanced": True,
                 "groups": {"global": None, "local": "06-sky_dark"}, "answer": "no",
                 "semanticStr": "select: sky ->verify color: dark",
                 "annotations": {"answer": {}, "question": {"2": "n161313.sky"},
                                 "fullAnswer": {}},
                 "types": {"structural": "verify", "semantic": "attr",
                           "detailed": "verifyAttr"},
                 "fullAnswer": "No, the sky is bright."},
    "20968380": {"question": "What is on the table?", "imageId": "n161313", "answer": "cup",
                 "fullAnswer": "The cup is on the table.", "isBalanced": True,
                 "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    "20968381": {"question": "Who is wearing a hat?", "imageId": "2354786", "answer": "man",
                 "fullAnswer": "The man is wearing a hat.", "isBalanced": True,
                 "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
}  # fmt: skip


def write_gqa(root: Path) -> dict[str, Any]:
    """``testdev_balanced_questions.json`` and the flat ``images/`` folder."""
    path = write_json(root / "gqa" / "questions1.2" / "testdev_balanced_questions.json",
                      GQA_QUESTIONS)
    for image_id in ("n161313", "2354786"):
        tiny_image(root / "gqa" / "images" / f"{image_id}.jpg")
    return {"train": str(path), "visual": str(root / "gqa" / "images")}


def _nlvr2_line(identifier: str, sentence: str, label: str, directory: int) -> dict:
    return {"validation": {"a1": label.lower()}, "sentence": sentence,
            "left_url": "https://example.org/l.jpg", "writer": "w1", "label": label,
            "right_url": "https://example.org/r.jpg", "synset": "n02110341",
            "query": "dalmatian", "identifier": identifier, "extra_validations": {},
            "directory": directory}


NLVR2_LINES = [
    _nlvr2_line("train-10171-0-0", "One image shows exactly two dogs.", "True", 41),
    _nlvr2_line("train-10171-0-1", "There are no dogs.", "False", 41),
    _nlvr2_line("train-2-1-3", "A dog is lying on grass.", "False", 7),
]


def write_nlvr2(root: Path) -> dict[str, Any]:
    """``data/train.json`` (JSON lines) and ``images/train/<n>/<pair>-img0/1.png``."""
    path = write_jsonl(root / "nlvr2" / "data" / "train.json", NLVR2_LINES)
    for pair, directory in (("train-10171-0", 41), ("train-2-1", 7)):
        for side in (0, 1):
            tiny_image(root / "nlvr2" / "images" / "train" / str(directory)
                       / f"{pair}-img{side}.png")
    return {"train": str(path), "visual": str(root / "nlvr2" / "images")}


def _coco_image(filepath: str, coco_id: int, split: str, captions: list[str]) -> dict:
    return {"filepath": filepath, "sentids": list(range(len(captions))),
            "filename": f"COCO_{filepath}_{coco_id:012d}.jpg", "imgid": coco_id % 100,
            "split": split, "cocoid": coco_id,
            "sentences": [{"tokens": caption.lower().strip(".").split(), "raw": caption,
                           "imgid": coco_id % 100, "sentid": index}
                          for index, caption in enumerate(captions)]}


COCO_IMAGES = [
    _coco_image("train2014", 9, "train", ["A plate of food.", "Food on a plate."]),
    _coco_image("val2014", 391895, "restval", ["A man riding a bike."]),
    _coco_image("val2014", 522418, "test", ["A woman cutting a cake.", "A cake."]),
]


def write_karpathy(root: Path) -> dict[str, Any]:
    """``dataset_coco.json`` and COCO's ``train2014/`` and ``val2014/`` folders."""
    path = write_json(root / "coco" / "dataset_coco.json",
                      {"images": COCO_IMAGES, "dataset": "coco"})
    for image in COCO_IMAGES:
        tiny_image(root / "coco" / image["filepath"] / image["filename"])
    return {"train": str(path), "test": str(path), "visual": str(root / "coco")}


def _tvqa_line(qid: int, vid_name: str, show: str, answer: int) -> dict:
    line = {f"a{index}": f"option {index} of {qid}" for index in range(5)}
    return {**line, "answer_idx": answer, "q": f"What happens in question {qid}?", "qid": qid,
            "ts": "60.49-66.28", "vid_name": vid_name, "show_name": show}


TVQA_LINES = [
    _tvqa_line(0, "s01e01_seg02_clip_17", "The Big Bang Theory", 1),
    _tvqa_line(1, "s01e01_seg02_clip_17", "The Big Bang Theory", 4),
    _tvqa_line(2, "castle_s01e01_seg01_clip_00", "Castle", 0),
]
TVQA_FRAMES = {"s01e01_seg02_clip_17": "bbt_frames", "castle_s01e01_seg01_clip_00":
               "castle_frames"}
SRT = ("1\n00:00:00,115 --> 00:00:02,655\n(Sheldon:) Are you sure?\n\n"
       "2\n00:00:03,000 --> 00:00:05,100\n(Leonard:) Yes.\nLet's go.\n")


def write_tvqa_frames(root: Path) -> Path:
    """``frames_hq/<show>_frames/<clip>/00001.jpg ...`` for the TVQA / TVC clips."""
    for clip, show in TVQA_FRAMES.items():
        for frame in (1, 2):
            tiny_image(root / "tvqa" / "frames_hq" / show / clip / f"{frame:05d}.jpg")
    return root / "tvqa" / "frames_hq"


def write_tvqa(root: Path) -> dict[str, Any]:
    """``tvqa_train.jsonl``, ``tvqa_subtitles/<clip>.srt`` and the ``frames_hq`` tree."""
    path = write_jsonl(root / "tvqa" / "tvqa_qa_release" / "tvqa_train.jsonl", TVQA_LINES)
    subtitles = root / "tvqa" / "tvqa_subtitles"
    subtitles.mkdir(parents=True)
    (subtitles / "s01e01_seg02_clip_17.srt").write_text(SRT)
    return {"train": str(path), "visual": str(write_tvqa_frames(root)),
            "subtitles": str(subtitles)}


HOW2QA_LINES = [
    {"vid_name": "-0BZvlfRf1M_52_112", "qid": "h0", "q": "What does he cut?", "a0": "bread",
     "a1": "onion", "a2": "wood", "a3": "paper", "answer_idx": 1, "ts": [3.0, 10.5]},
    {"vid_name": "-0BZvlfRf1M_52_112", "qid": "h1", "q": "Where is he?", "a0": "kitchen",
     "a1": "garden", "a2": "car", "a3": "shop", "answer_idx": 0, "ts": [0, 4.5]},
    {"vid_name": "zzH3AvVxM2s_0_60", "qid": "h2", "q": "What is tuned?", "a0": "a guitar",
     "a1": "a piano", "a2": "a drum", "a3": "a violin", "answer_idx": 0, "ts": [1, 2]},
]  # fmt: skip


def write_how2qa(root: Path) -> dict[str, Any]:
    """VALUE's ``how2qa_train.jsonl`` + subtitles JSON lines; one frame folder per clip."""
    path = write_jsonl(root / "how2qa" / "how2qa_train.jsonl", HOW2QA_LINES)
    subtitles = write_jsonl(root / "how2qa" / "how2qa_subtitles.jsonl", [
        {"vid_name": "-0BZvlfRf1M_52_112", "duration": 60.0,
         "sub": [{"text": "now cut the onion", "start": 0.0, "end": 2.0}]}])
    for clip in ("-0BZvlfRf1M_52_112", "zzH3AvVxM2s_0_60"):
        tiny_image(root / "how2qa" / "frames" / clip / "0001.jpg")
    return {"train": str(path), "visual": str(root / "how2qa" / "frames"),
            "subtitles": str(subtitles)}


TVC_LINES = [
    {"vid_name": "s01e01_seg02_clip_17", "duration": 61.98, "ts": [16.48, 33.87],
     "clip_id": 86603, "descs": [{"desc_id": 109179, "desc": "Sheldon sits on the couch.",
                                  "type": "v", "from_retrieval": False}]},
    {"vid_name": "s01e01_seg02_clip_17", "duration": 61.98, "ts": [40.0, 50.0],
     "clip_id": 86604, "descs": [{"desc_id": 109180, "desc": "Leonard opens the door.",
                                  "type": "v"}, {"desc_id": 109181, "desc": "A door opens.",
                                                 "type": "vs"}]},
    {"vid_name": "castle_s01e01_seg01_clip_00", "duration": 90.0, "ts": [0.0, 9.5],
     "clip_id": 90001, "descs": [{"desc_id": 1, "desc": "Castle walks in.", "type": "v"}]},
]  # fmt: skip


def write_tvc(root: Path) -> dict[str, Any]:
    """``tvc_train_release.jsonl`` over TVQA's frames and ``.srt`` subtitles."""
    path = write_jsonl(root / "tvc" / "tvc_train_release.jsonl", TVC_LINES)
    subtitles = root / "tvc" / "tvqa_subtitles"
    subtitles.mkdir(parents=True)
    (subtitles / "castle_s01e01_seg01_clip_00.srt").write_text(SRT)
    return {"train": str(path), "visual": str(write_tvqa_frames(root)),
            "subtitles": str(subtitles)}


YOUCOOK2 = {"database": {
    "GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                    "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                    "annotations": [
                        {"segment": [90, 102], "id": 0,
                         "sentence": "spread margarine on two slices of white bread"},
                        {"segment": [114, 127], "id": 1,
                         "sentence": "place a slice of cheese on the bread"}]},
    "xHr8X2Wpmno": {"duration": 300.0, "subset": "validation", "recipe_type": "201",
                    "video_url": "https://www.youtube.com/watch?v=xHr8X2Wpmno",
                    "annotations": [{"segment": [5, 20], "id": 0,
                                     "sentence": "boil the noodles"}]},
}}  # fmt: skip


def write_youcook2(root: Path) -> dict[str, Any]:
    """``youcookii_annotations_trainval.json``; frames ``<subset>/<recipe>/<video>/``."""
    path = write_json(root / "yc2c" / "annotations" / "youcookii_annotations_trainval.json",
                      YOUCOOK2)
    for video, entry in YOUCOOK2["database"].items():
        tiny_image(root / "yc2c" / "frames" / entry["subset"] / entry["recipe_type"] / video
                   / "0001.jpg")
    return {"train": str(path), "val": str(path), "visual": str(root / "yc2c" / "frames")}


# task -> the writer of its official layout
OFFICIAL = {"vqa": write_vqav2, "gqa": write_gqa, "nlvr2": write_nlvr2,
            "caption": write_karpathy, "tvqa": write_tvqa, "how2qa": write_how2qa,
            "tvc": write_tvc, "yc2c": write_youcook2}
