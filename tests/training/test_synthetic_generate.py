"""The synthetic world: deterministic, in the real formats, read back by the real readers."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling.tasks import TASKS, VisualInput
from training.data import ImageFolder, VideoFrameFolder, load_split
from training.metrics import evaluate
from training.synthetic import SplitSizes, WorldConfig, generate, subtitles_path
from training.synthetic.__main__ import main
from training.synthetic.generate import vqa_annotations_path
from training.synthetic.image_tasks import vqa_questions
from training.synthetic.video_tasks import how2qa_question
from training.synthetic.world import (
    COLOUR_JITTER,
    COLOURS,
    Clip,
    Mover,
    render_scene,
    sample_scene,
)

SMALL = SplitSizes(train=12, val=4, test=4)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, generate(out, seed=3, sizes=SMALL)


def _load(task: str, split: str, out: Path, paths: dict) -> list:
    return load_split(
        task,
        paths[task][split],
        split=split if task == "caption" else None,
        vqa_annotations_path=vqa_annotations_path(out, split) if task == "vqa" else None,
        subtitles_path=subtitles_path(out)
        if TASKS[task].visual_input is VisualInput.VIDEO_FRAMES
        else None,
    )


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", seed=7, sizes=SMALL)
    generate(tmp_path / "b", seed=7, sizes=SMALL)
    generate(tmp_path / "c", seed=8, sizes=SMALL)
    first = _digest(tmp_path / "a")
    assert first == _digest(tmp_path / "b")
    third = _digest(tmp_path / "c")
    assert first.keys() == third.keys() and first != third


def test_every_file_round_trips_through_the_readers(small_world: tuple[Path, dict]) -> None:
    out, paths = small_world
    assert list(paths) == list(TASKS)
    images, videos = ImageFolder(out / "images"), VideoFrameFolder(out / "videos")
    for task, spec in TASKS.items():
        store = videos if spec.visual_input is VisualInput.VIDEO_FRAMES else images
        for split in ("train", "val", "test"):
            examples = _load(task, split, out, paths)
            assert examples, (task, split)
            for example in examples:
                assert example.task == task and example.targets
                assert example.source_text.startswith(spec.prompt.strip())
                assert len(example.visual_ids) == spec.n_visual_ids
                assert all(visual_id in store for visual_id in example.visual_ids)


def test_counts_follow_sizes(small_world: tuple[Path, dict]) -> None:
    out, paths = small_world
    assert len(_load("nlvr2", "val", out, paths)) == SMALL.val
    assert len(_load("tvqa", "train", out, paths)) == SMALL.train
    assert len(_load("caption", "test", out, paths)) == SMALL.test
    assert len(_load("caption", "train", out, paths)) == 5 * SMALL.train  # restval merged
    coco = json.loads(paths["caption"]["train"].read_text())
    assert "restval" in {image["split"] for image in coco["images"]}
    assert len(_load("vqa", "train", out, paths)) == 3 * SMALL.train


def test_vqa_has_ten_answers_and_question_types(small_world: tuple[Path, dict]) -> None:
    out, paths = small_world
    examples = _load("vqa", "train", out, paths)
    assert all(len(example.answers) == 10 for example in examples)
    assert {example.question_type for example in examples} == {"colour", "shape", "count", "exist"}
    assert {e.question_type for e in _load("gqa", "train", out, paths)} == {"relation"}


def test_video_questions_are_typed_by_the_asked_shapes_motion(
        small_world: tuple[Path, dict]) -> None:
    """TVQA's answer is the direction; How2QA's is the phrase of a moving shape's direction,
    asked by the shape's colour: both split their results per direction (`accuracy/left` ...)."""
    out, paths = small_world
    tvqa = _load("tvqa", "train", out, paths)
    assert all(e.question_type == e.choices[e.label] for e in tvqa)
    how2qa = _load("how2qa", "train", out, paths)
    assert how2qa
    for example in how2qa:
        assert example.choices[example.label] == f"moves {example.question_type}"
        assert sorted(example.choices) == ["moves down", "moves left", "moves right", "moves up"]
        assert re.fullmatch(r"how does the (red|green|blue|yellow) shape move \?", example.text)
    predictions = {e.example_id: e.choices[e.label] for e in tvqa}
    metrics = evaluate("tvqa", predictions, tvqa)
    assert {f"accuracy/{e.question_type}" for e in tvqa} <= set(metrics)


def test_images_and_frames_have_the_configured_geometry(small_world: tuple[Path, dict]) -> None:
    out, _ = small_world
    image = Image.open(next((out / "images").glob("*.png")))
    assert image.size == (64, 64) and image.mode == "RGB"
    frames = VideoFrameFolder(out / "videos").frame_paths("clip_train_00000")
    assert len(frames) == WorldConfig().n_frames


def test_shapes_are_drawn_big_in_their_colour() -> None:
    rng = np.random.default_rng(0)
    config = WorldConfig()
    for _ in range(20):
        scene = sample_scene(rng, config)
        pixels = np.asarray(render_scene(scene, rng, config), dtype=int)
        for placed in scene.objects:
            x, y = placed.centre
            patch = pixels[y - 3 : y + 4, x - 3 : x + 4]  # 7 x 7 around the centre
            distance = np.abs(patch - np.array(COLOURS[placed.colour])).max()
            assert distance <= COLOUR_JITTER, placed


def test_colour_and_shape_questions_name_a_shape_no_other_shape_could_be() -> None:
    """"what colour is the circle ?" asks only when one circle is there, and likewise for
    "what shape is the red object ?": the answer is never ambiguous."""
    rng = np.random.default_rng(0)
    asked = Counter()
    for _ in range(60):
        scene = sample_scene(rng, WorldConfig())
        for question in vqa_questions(scene, rng, count=4):
            if question.question_type not in ("colour", "shape"):
                continue
            by = "shape" if question.question_type == "colour" else "colour"
            named = [p for p in scene.objects if f" {getattr(p, by)} " in f" {question.text} "]
            assert len(named) == 1, (question.text, scene)
            assert getattr(named[0], question.question_type) == question.answer
            asked[question.question_type] += 1
    assert asked["colour"] > 0 and asked["shape"] > 0


def test_perfect_predictions_score_full_marks(small_world: tuple[Path, dict]) -> None:
    out, paths = small_world
    for task in ("gqa", "nlvr2", "tvqa", "how2qa"):
        examples = _load(task, "val", out, paths)
        perfect = {example.example_id: example.targets[0] for example in examples}
        assert evaluate(task, perfect, examples)["accuracy"] == 100.0
    vqa = _load("vqa", "val", out, paths)
    top = {example.example_id: example.targets[0] for example in vqa}
    assert evaluate("vqa", top, vqa)["accuracy"] > 80.0


def test_default_world_covers_answers_with_caption_words_and_balances_labels(
    tmp_path: Path,
) -> None:
    paths = generate(tmp_path)
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["answer_words_missing_from_captions"] == []
    assert {"yes", "no", "true", "false", "1", "2", "3"} <= set(world["caption_vocabulary"])
    assert len(world["caption_vocabulary"]) < 60
    nlvr2 = load_split("nlvr2", paths["nlvr2"]["train"])
    assert 0.4 < sum(example.label for example in nlvr2) / len(nlvr2) < 0.6
    answers = Counter(e.targets[0] for e in load_split("gqa", paths["gqa"]["train"]))
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6


def test_sizes_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        SplitSizes(train=-1, val=1, test=1)
    with pytest.raises(ValueError, match="unknown size keys"):
        generate(tmp_path, sizes={"pictures": SMALL})


def test_module_main_writes_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--seed", "1", "--train", "2", "--val", "1", "--test", "1"]) == 0
    assert (tmp_path / "world.json").is_file()
    assert "tvqa" in capsys.readouterr().out
    assert json.loads((tmp_path / "world.json").read_text())["sizes"]["videos"]["train"] == 2


VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")
NO_STILLS = {"images": SplitSizes(0, 0, 0), "nlvr2": SplitSizes(0, 0, 0)}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_extra_video_train_clips_keep_every_clip_and_row_of_the_world_without_them(
    tmp_path: Path,
) -> None:
    """A larger video train split (the benchmark's) keeps the standard world's val and test
    clips byte for byte, and its train clips as the first ones; ids stay unique."""
    standard = generate(tmp_path / "a", seed=3, sizes={**NO_STILLS, "videos": SplitSizes(5, 2, 2)})
    larger = generate(tmp_path / "b", seed=3,
                      sizes={**NO_STILLS, "videos": SplitSizes(5, 2, 2, extra_train=6)})
    for task in VIDEO_TASKS:
        for split in ("val", "test"):
            assert larger[task][split].read_bytes() == standard[task][split].read_bytes()
        train, first = _rows(larger[task]["train"]), _rows(standard[task]["train"])
        assert train[:len(first)] == first and len(train) <= 11
        assert len(train) == 11 or task == "how2qa"  # it skips a lone shape staying still
    assert _digest(tmp_path / "a" / "videos").items() <= _digest(tmp_path / "b" / "videos").items()
    assert len(list((tmp_path / "b" / "videos").iterdir())) == 15
    qids = [row["qid"] for split in ("train", "val", "test")
            for row in _rows(larger["tvqa"][split])]
    assert len(set(qids)) == len(qids) == 15
    subtitles = _rows(subtitles_path(tmp_path / "b"))
    assert _rows(subtitles_path(tmp_path / "a")) == subtitles[:9] and len(subtitles) == 15
    extra_clips = {row["vid_name"] for row in _rows(larger["tvqa"]["train"])[5:]}
    assert extra_clips == {f"clip_train_{index:05d}" for index in range(5, 11)}


def test_extra_train_is_refused_for_image_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sizes\['images'\].extra_train"):
        generate(tmp_path, sizes={"images": SplitSizes(2, 1, 1, extra_train=3)})
    with pytest.raises(ValueError, match=">= 0"):
        SplitSizes(train=1, val=1, test=1, extra_train=-1)


def test_module_main_adds_extra_video_train_clips(tmp_path: Path) -> None:
    args = ["--train", "2", "--val", "1", "--test", "1", "--extra-video-train", "3"]
    assert main([str(tmp_path), *args]) == 0
    assert len(_rows(tmp_path / "tvqa" / "train.jsonl")) == 5
    assert len(json.loads((tmp_path / "vqa" / "train.json").read_text())) == 3 * 2



def test_module_main_refuses_a_bad_size_in_one_line_with_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "bad"), "--extra-video-train", "-1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "extra" in error


def test_subtitles_name_each_shape_kind_but_not_its_colour(tmp_path: Path) -> None:
    """The questions refer to shapes by colour: the frames, not the text, tell which is which."""
    paths = generate(tmp_path, seed=5, sizes={**NO_STILLS, "videos": SplitSizes(30, 2, 2)})
    said = {row["vid_name"]: " ".join(line["text"] for line in row["sub"])
            for row in _rows(subtitles_path(tmp_path))}
    kinds = ("circle", "square", "triangle")
    assert not {word for text in said.values() for word in text.split()} & set(COLOURS)
    for row in _rows(paths["tvc"]["train"]):  # the same shapes as the clip's description
        described = [w for w in row["descs"][0]["desc"].split() if w in kinds]
        assert sorted(w for w in said[row["vid_name"]].split() if w in kinds) == sorted(described)


def test_captions_name_a_clips_shapes_in_colour_order(tmp_path: Path) -> None:
    """Drawing order is random; a caption in it left the first shape to a guess."""
    paths = generate(tmp_path, seed=5, sizes={**NO_STILLS, "videos": SplitSizes(40, 2, 2)})
    ranks = {colour: rank for rank, colour in enumerate(COLOURS)}
    named = [[ranks[w] for w in desc["desc"].split() if w in ranks]
             for row in _rows(paths["tvc"]["train"]) + _rows(paths["yc2c"]["train"])
             for desc in row["descs"]]
    assert sum(len(colours) == 2 for colours in named) >= 10
    assert all(colours == sorted(colours) for colours in named)


def test_how2qa_asks_a_moving_shape_and_skips_a_lone_still_one_drawing_alike() -> None:
    still = Mover("red", "circle", (20, 20), "still")
    left = Mover("blue", "square", (40, 40), "left")
    for movers, asked in (((still, left), "blue"), ((left,), "blue"), ((still,), None)):
        rng, twin = np.random.default_rng(1), np.random.default_rng(1)
        question = how2qa_question(Clip(movers), rng)
        how2qa_question(Clip((left,)), twin)
        assert rng.integers(1 << 30) == twin.integers(1 << 30)  # the same draws either way
        if asked is None:
            assert question is None
            continue
        text, options, right = question
        assert text == f"how does the {asked} shape move ?" and options[right] == "moves left"
