"""The bundled Table 1 splits the video multiple-choice columns per question type."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import synthetic_table1
from benchmarks.florence2_sizes import sized_config
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import florence2
from modeling.tasks import TASKS
from training.config import TaskData
from training.data.example import Example
from training.synthetic import generate
from training.synthetic.generate import SplitSizes
from training.synthetic_run import synthetic_config


def _mc(task: str, i: int, label: int, kind: str) -> Example:
    return Example(task, f"{task}{i}", ("v",), "q", choices=("a", "b"), label=label,
                   question_type=kind)


def test_majority_and_methods_are_split_per_question_type():
    train = {t: [_mc(t, i, 0, "left") for i in range(3)] for t in ("tvqa", "how2qa")}
    test = {t: [_mc(t, 0, 0, "left"), _mc(t, 1, 1, "up"), _mc(t, 2, 0, "up")]
            for t in ("tvqa", "how2qa")}
    majority = synthetic_table1.majority_by_type(train, test)
    assert majority == {"tvqa left": 100.0, "tvqa up": 50.0,
                        "how2qa left": 100.0, "how2qa up": 50.0}
    lines = synthetic_table1.typed_table({"majority answer": majority,
                                          "full_finetuning": {**majority, "tvqa up": 75.0}})
    assert lines[0] == "| method | tvqa left | tvqa up | how2qa left | how2qa up |"
    assert lines[3] == "| full_finetuning | 100.0 | 75.0 | 100.0 | 50.0 |"


def test_empty_presets_run_the_random_backbone_control_alone():
    control = synthetic_table1.CONTROL
    assert synthetic_table1.planned_runs("", control=True) == [control]
    assert synthetic_table1.planned_runs("single_adapter,full_finetuning", control=True) == [
        "single_adapter", "full_finetuning", control]
    assert synthetic_table1.planned_runs("single_adapter", control=False) == ["single_adapter"]


def test_unknown_preset_or_nothing_to_run_is_refused_before_training():
    with pytest.raises(ValueError, match="singel_adapter"):
        synthetic_table1.planned_runs("full_finetuning,singel_adapter", control=True)
    with pytest.raises(ValueError, match="nothing to run"):
        synthetic_table1.planned_runs("", control=False)


def test_cli_refuses_an_unknown_preset_with_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["synthetic_table1.py", "--presets", "lora_xl"])
    with pytest.raises(SystemExit) as exit_info:
        synthetic_table1.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lora_xl" in err[0]


def test_frozen_motion_counts_the_named_direction_per_true_direction(monkeypatch):
    captions = [Example("tvc", "c1", ("clip1",), "tvc: x",
                        targets=("the red circle moves left and the blue square stays still",)),
                Example("tvc", "c2", ("clip2",), "tvc: y",
                        targets=("the green triangle moves left",))]
    said = {"clip1/red circle": "left", "clip1/blue square": "it moves up",
            "clip2/green triangle": "right"}
    asked = []

    def fake_predict(backbone, adapters, task, questions, features):
        asked.extend(q.source_text for q in questions)
        return said

    monkeypatch.setattr(synthetic_table1, "load_task_split",
                        lambda task, data, split, family: captions)
    monkeypatch.setattr(synthetic_table1, "features_for", lambda *args: None)
    monkeypatch.setattr(synthetic_table1, "predict", fake_predict)
    backbone = SimpleNamespace(fingerprint=lambda: "sha256:0",
                               config=SimpleNamespace(family="vl"))
    tvc = TaskData(train="tvc/train.jsonl", visual="videos")
    motion = synthetic_table1.frozen_motion(backbone, tvc, None)
    assert motion == {"left": 50.0, "still": 0.0, "all": 100.0 / 3}
    assert "tvc: how does the blue square move ?" in asked


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table1-world")
    generate(root, seed=0, sizes=SplitSizes(3, 1, 2))
    return root


def _scored_sources(world: Path, backbone, monkeypatch) -> dict[str, str]:
    """The encoder text of each task's first test example that `test_scores` evaluates on
    `backbone` (evaluation itself stubbed: only the examples it is handed matter here)."""
    handed: dict[str, str] = {}

    def evaluate(model, adapters, task, examples, *args):
        handed[task] = examples[0].source_text
        return {TASKS[task].metric: 0.0}

    monkeypatch.setattr(synthetic_table1, "features_for", lambda *args: None)
    monkeypatch.setattr(synthetic_table1, "evaluate_task", evaluate)
    config = synthetic_config(world, "tiny", "single_adapter", 1, java_metrics=False)
    trainer = SimpleNamespace(full=None, backbone=backbone, model=None, config=config,
                              fingerprint="", feature_cache=world / "cache")
    synthetic_table1.test_scores(trainer)
    return handed


def test_table1_scores_a_florence2_backbone_on_its_own_task_prompts(world, monkeypatch):
    backbone = florence2.from_config(sized_config("tiny"), image_size=32)
    sources = _scored_sources(world, backbone, monkeypatch)
    assert sources["vqa"].startswith("<VQA>") and sources["gqa"].startswith("<GQA>")
    assert sources["caption"] == "What does the image describe?"


def test_table1_scores_vl_t5_on_vl_adapters_prompts_as_before(world, monkeypatch):
    backbone = VLBackbone.from_config(preset("tiny"), device="meta")
    sources = _scored_sources(world, backbone, monkeypatch)
    assert sources["vqa"].startswith("vqa: ") and sources["nlvr2"].startswith("nlvr: ")
    assert sources["caption"] == "caption:"
    split = synthetic_table1.task_splits(synthetic_config(world, "tiny", "single_adapter", 1),
                                         "test", backbone.config.family)
    assert split["vqa"][0].source_text == sources["vqa"]  # main's splits: the same text


def test_video_task_set_trains_the_four_video_tasks_together(world, tmp_path):
    assert synthetic_table1.TASK_SETS["video"] == ["tvqa", "how2qa", "tvc", "yc2c"]
    assert synthetic_table1.TASK_SETS["image"] == ["vqa", "gqa", "nlvr2", "caption"]
    config = synthetic_table1.base_config(world, "tiny", 5, synthetic_table1.TASK_SETS["video"],
                                          tmp_path)
    assert list(config.tasks) == ["tvqa", "how2qa", "tvc", "yc2c"] and config.steps == 5
    # Every row encodes into one cache: the clips are encoded once for the whole table.
    assert config.feature_cache == str(tmp_path / "feature-cache")
    assert config.choice_answer == "label"  # VL-Adapter's form unless asked otherwise
    cloze = synthetic_table1.base_config(world, "tiny", 5, ["tvqa"], tmp_path, "text")
    assert cloze.choice_answer == "text"
    assert synthetic_table1.parse_args(["--choice-answer", "text"]).choice_answer == "text"


def test_video_rows_show_only_the_video_columns_and_average_their_accuracy():
    video = synthetic_table1.TASK_SETS["video"]
    scores = {"tvqa": 40.0, "how2qa": 60.0, "tvc": 300.0, "yc2c": 100.0}
    line = synthetic_table1.row("single_adapter", 3.39, scores, 12.4, video)
    assert line == "| single_adapter | 3.39 | 40.0 | 60.0 | 300.0 | 100.0 | 50.0 | 12 |"


@pytest.mark.parametrize(("args", "named"), [
    (["--tasks", "audio"], "--tasks"),
    (["--tasks", "image", "--video-train", "5000"], "--video-train"),
    (["--tasks", "video", "--video-train", "100"], "--video-train"),
])
def test_cli_refuses_a_bad_task_set_or_video_train_with_one_line_and_exit_2(
        monkeypatch, capsys, args, named):
    with pytest.raises(SystemExit) as exit_info:
        synthetic_table1.parse_args(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]


def test_video_train_world_is_the_standard_world_with_more_video_train_clips(
        tmp_path, monkeypatch):
    standard = SimpleNamespace(seed=0, sizes=SplitSizes(3, 1, 2))
    monkeypatch.setattr(synthetic_table1, "PretrainSettings", lambda: standard)
    monkeypatch.setattr(synthetic_table1, "DEFAULT_SIZES", {
        source: standard.sizes for source in ("images", "nlvr2", "videos")})
    generate(tmp_path / "world", seed=0, sizes=standard.sizes)
    grown = synthetic_table1.video_world(tmp_path / "world", 7)
    assert grown == tmp_path / "world-video-train-7"
    for task in synthetic_table1.TASK_SETS["video"]:
        assert len((grown / task / "train.jsonl").read_text().splitlines()) == 7
        for split in ("val", "test"):
            assert (grown / task / f"{split}.jsonl").read_bytes() == \
                (tmp_path / "world" / task / f"{split}.jsonl").read_bytes()
    assert synthetic_table1.video_world(tmp_path / "world", None) == tmp_path / "world"
