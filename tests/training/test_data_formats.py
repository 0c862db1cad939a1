"""The eight datasets in their official layouts, read through the run config's task loader
(format detected, or named by `format:`), with their images and frames found in the
releases' folder structures."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_layouts import (
    GQA_QUESTIONS,
    OFFICIAL,
    SRT,
    tiny_image,
    write_gqa,
    write_how2qa,
    write_karpathy,
    write_nlvr2,
    write_tvc,
    write_tvqa,
    write_vqav2,
    write_youcook2,
)

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.tasks import TASKS, VisualInput
from training.config import ConfigError, TaskData, parse_config, read_task_split
from training.data import (
    Example,
    ImageFolder,
    VideoFrameFolder,
    format_names,
    load_subtitles,
    open_visual_source,
    read_srt,
)
from training.features import features_for


def _read(task: str, entry: dict, split: str = "train") -> list[Example]:
    data = parse_config({"backbone": "tiny", "methods": "single_adapter",
                         "tasks": {task: entry}}).tasks[task]
    return read_task_split(task, data, split).examples


def _found(task: str, entry: dict, examples: list[Example]) -> bool:
    """Whether the task's visual source finds every visual id of ``examples``."""
    source = open_visual_source(Path(entry["visual"]),
                                video=TASKS[task].visual_input is VisualInput.VIDEO_FRAMES)
    return all(visual_id in source for e in examples for visual_id in e.visual_ids)


def test_vqav2_questions_labelled_from_annotations_images_in_train2014(tmp_path: Path) -> None:
    entry = write_vqav2(tmp_path)
    first, sunny, bus = _read("vqa", entry)
    assert first == Example(
        task="vqa", example_id="42000", visual_ids=("COCO_train2014_000000000042",),
        source_text="vqa: How many dogs are there?", targets=("2", "3"),
        target_weights=(1.0, 0.6), answers=(*["2"] * 7, "two", "3", "3"),
        question_type="how many")  # "two" normalises to "2": 8 of 10 -> 1.0
    assert sunny.targets == ("yes",) and sunny.target_weights == (1.0,)
    assert bus.targets == ("red",) and bus.visual_ids == ("COCO_train2014_000000000073",)
    assert _found("vqa", entry, [first, bus])


def test_vqav2_without_annotations_is_unlabelled_and_test_dev_uses_test2015(
        tmp_path: Path) -> None:
    entry = write_vqav2(tmp_path)
    path = Path(entry["train"])
    path.write_text(path.read_text().replace('"train2014"', '"test-dev2015"'))
    examples = _read("vqa", {"train": str(path), "visual": entry["visual"]})
    assert [e.targets for e in examples] == [(), (), ()]
    assert examples[0].visual_ids == ("COCO_test2015_000000000042",)


def test_gqa_balanced_questions_dict(tmp_path: Path) -> None:
    entry = write_gqa(tmp_path)
    examples = _read("gqa", entry)
    assert [e.example_id for e in examples] == list(GQA_QUESTIONS)
    assert examples[0] == Example(
        task="gqa", example_id="20968379", visual_ids=("n161313",),
        source_text="gqa: Is the sky dark?", targets=("no",), target_weights=(1.0,),
        question_type="verify")
    assert _found("gqa", entry, examples)


def test_nlvr2_json_lines_with_images_in_numbered_sub_folders(tmp_path: Path) -> None:
    entry = write_nlvr2(tmp_path)
    true, false, other = _read("nlvr2", entry)
    assert true.visual_ids == ("train-10171-0-img0", "train-10171-0-img1")
    assert (true.targets, true.label, false.targets, false.label) == (("true",), 1,
                                                                       ("false",), 0)
    assert true.source_text == "nlvr: One image shows exactly two dogs."
    assert other.visual_ids == ("train-2-1-img0", "train-2-1-img1")
    folder = ImageFolder(Path(entry["visual"]))
    assert folder.image_path("train-2-1-img1") == (
        tmp_path / "nlvr2" / "images" / "train" / "7" / "train-2-1-img1.png")


def test_karpathy_coco_images_found_through_their_filepath_folders(tmp_path: Path) -> None:
    entry = write_karpathy(tmp_path)
    train = _read("caption", entry, "train")
    (test,) = _read("caption", entry, "test")
    assert [e.example_id for e in train] == ["9#0", "9#1", "391895#0"]
    assert test.visual_ids == ("COCO_val2014_000000522418",)
    assert test.targets == ("A woman cutting a cake.", "A cake.")
    assert _found("caption", entry, [*train, test])


def test_tvqa_jsonl_srt_subtitles_and_frames_under_show_folders(tmp_path: Path) -> None:
    entry = write_tvqa(tmp_path)
    first, second, castle = _read("tvqa", entry)
    assert first.source_text == (
        "tvqa: [Subs] (Sheldon:) Are you sure? (Leonard:) Yes. Let's go. "
        "[Q] What happens in question 0? [Choices] a0: option 0 of 0 a1: option 1 of 0 "
        "a2: option 2 of 0 a3: option 3 of 0 a4: option 4 of 0")
    assert (first.targets, second.targets, first.time_span) == (("a1",), ("a4",),
                                                                 (60.49, 66.28))
    assert castle.subtitles == "" and castle.source_text.startswith("tvqa: [Q] ")
    frames = VideoFrameFolder(Path(entry["visual"]))
    assert frames.frame_paths("castle_s01e01_seg01_clip_00") == [
        Path(entry["visual"]) / "castle_frames" / "castle_s01e01_seg01_clip_00" / name
        for name in ("00001.jpg", "00002.jpg")]
    assert _found("tvqa", entry, [first, castle])


def test_one_srt_file_is_the_subtitles_of_the_clip_it_is_named_after(tmp_path: Path) -> None:
    entry = write_tvqa(tmp_path)
    single = Path(entry["subtitles"]) / "s01e01_seg02_clip_17.srt"
    first, _, castle = _read("tvqa", {**entry, "subtitles": str(single)})
    assert first.subtitles == "(Sheldon:) Are you sure? (Leonard:) Yes. Let's go."
    assert castle.subtitles == ""


def test_srt_without_cue_numbers_and_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "clip.srt"
    path.write_text("\ufeff00:00:01.000 --> 00:00:02.000\nHi.\n\n\n00:00:03,5 --> "
                    "00:00:04,0 X1:0 X2:9\nBye.\n")
    assert read_srt(path) == "Hi. Bye."
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "clip_a.srt").write_text(SRT)
    assert dict(load_subtitles(folder)) == {"clip_a": read_srt(folder / "clip_a.srt")}


def test_how2qa_value_jsonl(tmp_path: Path) -> None:
    entry = write_how2qa(tmp_path)
    first, _, last = _read("how2qa", entry)
    assert first.source_text == ("how2qa: [Subs] now cut the onion [Q] What does he cut? "
                                 "[Choices] a0: bread a1: onion a2: wood a3: paper")
    assert first.targets == ("a1",) and last.time_span == (1.0, 2.0)
    assert _found("how2qa", entry, [first, last])


def test_tvc_release_jsonl_over_tvqa_frames(tmp_path: Path) -> None:
    entry = write_tvc(tmp_path)
    clips = _read("tvc", entry)
    assert [c.example_id for c in clips] == ["86603", "86604", "90001"]
    assert clips[1].targets == ("Leonard opens the door.", "A door opens.")
    assert clips[2].source_text == "tvc: [Subs] (Sheldon:) Are you sure? (Leonard:) Yes. " \
                                   "Let's go."
    assert clips[0].time_span == (16.48, 33.87) and _found("tvc", entry, clips)


def test_youcook2_annotations_split_by_subset_one_clip_per_segment(tmp_path: Path) -> None:
    entry = write_youcook2(tmp_path)
    train = _read("yc2c", entry, "train")
    (val,) = _read("yc2c", entry, "val")
    assert [c.example_id for c in train] == ["GLd3aX16zBg_0", "GLd3aX16zBg_1"]
    assert train[1] == Example(
        task="yc2c", example_id="GLd3aX16zBg_1", visual_ids=("GLd3aX16zBg",),
        source_text="yc2c:", targets=("place a slice of cheese on the bread",),
        time_span=(114.0, 127.0))
    assert val.example_id == "xHr8X2Wpmno_0" and val.targets == ("boil the noodles",)
    assert _found("yc2c", entry, [*train, val])


@pytest.mark.parametrize("task", list(OFFICIAL))
def test_official_layout_detected_and_named_format_reads_the_same(tmp_path: Path,
                                                                 task: str) -> None:
    entry = OFFICIAL[task](tmp_path)
    data = parse_config({"backbone": "tiny", "methods": "single_adapter",
                         "tasks": {task: entry}}).tasks[task]
    detected = read_task_split(task, data, "train")
    assert detected.configured is False and detected.how == "detected"
    assert detected.data_format == format_names(task)[0]
    named = read_task_split(task, TaskData(**{**data.__dict__,
                                              "format": detected.data_format}), "train")
    assert named.examples == detected.examples and named.how == "configured"


@pytest.mark.parametrize(("task", "names"), [
    ("vqa", ["vqav2", "vl-t5"]), ("gqa", ["gqa", "vl-t5"]), ("nlvr2", ["nlvr2", "vl-t5"]),
    ("caption", ["karpathy"]), ("tvqa", ["tvqa"]), ("how2qa", ["value"]), ("tvc", ["value"]),
    ("yc2c", ["youcook2", "value"]),
])
def test_format_key_takes_the_task_formats_only(task: str, names: list[str]) -> None:
    assert list(format_names(task)) == names
    entry = {"train": "t.json", "visual": "v"}
    with pytest.raises(ConfigError, match=rf"tasks.{task}.format: expected one of "
                                          rf"\[{', '.join(repr(n) for n in names)}\]"):
        parse_config({"backbone": "tiny", "methods": "single_adapter",
                      "tasks": {task: {**entry, "format": "coco"}}})


def test_trainer_features_encode_images_and_frames_of_the_release_layouts(
        tmp_path: Path) -> None:
    backbone = VLBackbone.from_config(preset("tiny"))
    for task, write in (("caption", write_karpathy), ("tvqa", write_tvqa)):
        entry = write(tmp_path)
        examples = _read(task, entry)
        features = features_for(backbone, task, entry["visual"], examples, None, None)
        assert set(features.table) == {v for e in examples for v in e.visual_ids}
        assert all(tokens.shape[-1] == backbone.config.feat_dim
                   for tokens in features.table.values())


def test_an_id_in_two_sub_folders_is_refused_naming_both(tmp_path: Path) -> None:
    for folder in ("train2014", "val2014"):
        tiny_image(tmp_path / "coco" / folder / "COCO_1.jpg")
    tiny_image(tmp_path / "coco" / "a" / "b" / "c" / "d" / "too_deep.jpg")
    images = ImageFolder(tmp_path / "coco")
    with pytest.raises(ValueError, match=rf"image 'COCO_1' is in more than one sub-folder of "
                                         rf"{tmp_path / 'coco'}: .*train2014.* and .*val2014"):
        images.image_path("COCO_1")
    assert "too_deep" not in images  # three levels below the folder, no more
    tiny_image(tmp_path / "coco" / "a" / "b" / "c" / "shallow.jpg")
    assert "shallow" in ImageFolder(tmp_path / "coco")
