"""The preprocessed formats (VL-T5, VALUE) on small files, the format registry and the VQA
target sampler; the official layouts are in test_data_formats.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modeling.tasks import TASKS
from training.data import (
    FORMATS,
    Example,
    load_split,
    load_subtitles,
    sample_vqa_target,
)

VQA_RECORDS = [
    {
        "img_id": "COCO_val2014_000000000042",
        "sent": "How many dogs are there?",
        "question_id": 42000,
        "label": {"2": 1.0, "3": 0.3},
        "answer_type": "number",
        "question_type": "how many",
    },
    {
        "img_id": "COCO_val2014_000000000043",
        "sent": "Is it sunny?",
        "question_id": 43000,
        "label": {},
        "answer_type": "yes/no",
        "question_type": "is it",
    },
]
VQA_ANNOTATIONS = {
    "annotations": [
        {"question_id": 42000, "answers": [{"answer": "2", "answer_id": i} for i in range(10)]}
    ]
}
GQA_RECORDS = [
    {
        "img_id": "2354786",
        "sent": "Is the sky dark?",
        "question_id": "02930152",
        "label": {"yes": 1.0},
    }
]
NLVR2_RECORDS = [
    {
        "identifier": "dev-850-0-0",
        "img0": "dev-850-0-img0",
        "img1": "dev-850-0-img1",
        "label": 0,
        "sent": "There are two dogs.",
        "uid": "nlvr2_dev_0",
    }
]
COCO = {
    "images": [
        {"filename": "COCO_train2014_1.jpg", "cocoid": 1, "split": "train",
         "sentences": [{"raw": "A dog. ", "tokens": ["a", "dog"]},
                       {"raw": "A brown dog.", "tokens": ["a", "brown", "dog"]}]},
        {"filename": "COCO_val2014_2.jpg", "cocoid": 2, "split": "restval",
         "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}]},
        {"filename": "COCO_val2014_3.jpg", "cocoid": 3, "split": "test",
         "sentences": [{"raw": "A bird.", "tokens": ["a", "bird"]},
                       {"raw": "A small bird.", "tokens": ["a", "small", "bird"]}]},
    ]
}  # fmt: skip
TVQA_ROWS = [
    {"vid_name": "s01e01_seg01_clip_00", "qid": 7, "q": "Where is Sheldon?", "a0": "home",
     "a1": "work", "a2": "car", "a3": "bar", "a4": "park", "answer_idx": 1, "ts": "1.50-9.00"},
]  # fmt: skip
HOW2QA_ROWS = [
    {"vid_name": "v1", "qid": "h1", "q": "What is cut?", "a0": "bread", "a1": "onion",
     "a2": "wood", "a3": "paper", "ts": [0, 4.5]},
]  # fmt: skip
CAPTION_ROWS = [
    {"vid_name": "v1", "clip_id": 11, "descs": [{"desc": "He cuts bread."}, {"desc": "Bread."}]},
]
SUBTITLES = [
    {"vid_name": "s01e01_seg01_clip_00", "sub": [{"text": "Hello."}, {"text": "Bye."}]},
    {"vid_name": "v1", "sub": [{"text": "Now cut it."}]},
]


def _json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_format_registry_covers_every_task() -> None:
    assert set(FORMATS) == set(TASKS)


def test_vqa_reader_orders_targets_and_attaches_raw_answers(tmp_path: Path) -> None:
    path = _json(tmp_path / "karpathy_val.json", VQA_RECORDS)
    annotations = _json(tmp_path / "annotations.json", VQA_ANNOTATIONS)
    first, second = load_split("vqa", path, vqa_annotations_path=annotations)
    assert first == Example(
        task="vqa",
        example_id="42000",
        visual_ids=("COCO_val2014_000000000042",),
        source_text="vqa: How many dogs are there?",
        targets=("2", "3"),
        target_weights=(1.0, 0.3),
        answers=("2",) * 10,
        question_type="how many",
    )
    assert second.targets == () and second.answers == ()


def test_gqa_reader(tmp_path: Path) -> None:
    (example,) = load_split("gqa", _json(tmp_path / "testdev.json", GQA_RECORDS))
    assert example.example_id == "02930152"
    assert example.source_text == "gqa: Is the sky dark?"
    assert example.targets == ("yes",) and example.target_weights == (1.0,)


def test_nlvr2_reader_keeps_image_order_and_maps_label(tmp_path: Path) -> None:
    (example,) = load_split("nlvr2", _json(tmp_path / "dev.json", NLVR2_RECORDS))
    assert example.visual_ids == ("dev-850-0-img0", "dev-850-0-img1")
    assert example.source_text == "nlvr: There are two dogs."
    assert example.targets == ("false",) and example.label == 0


def test_coco_train_merges_restval_one_example_per_caption(tmp_path: Path) -> None:
    path = _json(tmp_path / "dataset_coco.json", COCO)
    train = load_split("caption", path, split="train")
    assert [e.example_id for e in train] == ["1#0", "1#1", "2#0"]
    assert train[0].targets == ("A dog.",) and train[0].source_text == "caption:"
    assert train[2].visual_ids == ("COCO_val2014_2",)


def test_coco_eval_split_one_example_per_image(tmp_path: Path) -> None:
    path = _json(tmp_path / "dataset_coco.json", COCO)
    (test,) = load_split("caption", path, split="test")
    assert test.example_id == "3" and test.targets == ("A bird.", "A small bird.")
    assert load_split("caption", path, split="val") == []
    with pytest.raises(ValueError, match="split"):
        load_split("caption", path)


def test_video_qa_text_with_subtitles_and_choices(tmp_path: Path) -> None:
    subtitles = _jsonl(tmp_path / "subs.jsonl", SUBTITLES)
    path = _jsonl(tmp_path / "tvqa_val.jsonl", TVQA_ROWS)
    (example,) = load_split("tvqa", path, subtitles_path=subtitles)
    assert example.source_text == (
        "tvqa: [Subs] Hello. Bye. [Q] Where is Sheldon? "
        "[Choices] a0: home a1: work a2: car a3: bar a4: park"
    )
    assert example.targets == ("a1",) and example.label == 1
    assert example.choices == ("home", "work", "car", "bar", "park")
    assert example.time_span == (1.5, 9.0)


def test_how2qa_four_choices_without_answer_or_subtitles(tmp_path: Path) -> None:
    (example,) = load_split("how2qa", _jsonl(tmp_path / "how2qa_test.jsonl", HOW2QA_ROWS))
    assert example.source_text.startswith("how2qa: [Q] What is cut? [Choices] a0: bread")
    assert len(example.choices) == 4 and example.label is None and example.targets == ()
    assert example.time_span == (0.0, 4.5)


@pytest.mark.parametrize("task", ["tvc", "yc2c"])
def test_video_captions(tmp_path: Path, task: str) -> None:
    path = _jsonl(tmp_path / "captions.jsonl", CAPTION_ROWS)
    subtitles = _jsonl(tmp_path / "subs.jsonl", SUBTITLES)
    (clip,) = load_split(task, path, subtitles_path=subtitles)
    assert clip.example_id == "11" and clip.targets == ("He cuts bread.", "Bread.")
    assert clip.source_text == f"{TASKS[task].prompt}[Subs] Now cut it."
    expanded = load_split(task, path, one_per_caption=True)
    assert [e.example_id for e in expanded] == ["11#0", "11#1"]
    assert expanded[0].source_text == TASKS[task].prompt.strip()


def test_subtitles_joined_per_video(tmp_path: Path) -> None:
    subtitles = load_subtitles(_jsonl(tmp_path / "subs.jsonl", SUBTITLES))
    assert subtitles == {"s01e01_seg01_clip_00": "Hello. Bye.", "v1": "Now cut it."}


def test_sample_vqa_target_follows_scores_and_weights_loss() -> None:
    example = Example("vqa", "1", ("i",), "vqa: q", targets=("2", "3"), target_weights=(0.9, 0.3))
    rng = np.random.default_rng(0)
    draws = [sample_vqa_target(example, rng) for _ in range(4000)]
    share_of_2 = sum(text == "2" for text, _ in draws) / len(draws)
    assert share_of_2 == pytest.approx(0.75, abs=0.03)
    assert {weight for text, weight in draws if text == "3"} == {0.3}


def test_sample_vqa_target_zero_scores_and_unlabelled() -> None:
    zero = Example("vqa", "1", ("i",), "vqa: q", targets=("a",), target_weights=(0.0,))
    assert sample_vqa_target(zero, np.random.default_rng(0)) == ("", 0.0)
    with pytest.raises(ValueError, match="no targets"):
        sample_vqa_target(Example("vqa", "2", ("i",), "vqa: q"), np.random.default_rng(0))


def test_unknown_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'okvqa'"):
        load_split("okvqa", tmp_path / "x.json")


def test_unknown_format_is_refused_naming_the_task_formats(tmp_path: Path) -> None:
    path = _json(tmp_path / "karpathy_val.json", VQA_RECORDS)
    with pytest.raises(ValueError, match="vqa: unknown format 'coco'; expected one of vqav2, "
                                         "vl-t5"):
        load_split("vqa", path, data_format="coco")
    assert len(load_split("vqa", path, data_format="vl-t5")) == 2
