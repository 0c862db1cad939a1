"""train-adapter pretrain: a backbone folder with tokenizer, reused on the next call."""

from __future__ import annotations

import json

import numpy as np
from pretrain_helpers import logged_settings

from benchmarks.florence2_sizes import sized_config
from modeling.families import florence2
from modeling.tasks import FAMILY_PROMPTS
from training.cli import build_parser, main, pretrain_settings
from training.data import Example
from training.pretrain import (
    MAX_CHOICES,
    MOTION_QUESTIONS,
    PretrainSettings,
    choice_questions,
    motion_accuracy,
    motion_by_shape_count,
    motion_questions,
    pretrain,
    sample_rows,
    world_examples,
)
from training.synthetic import generate, video_tasks
from training.synthetic.generate import SplitSizes
from training.synthetic.video_tasks import shape_motions
from training.synthetic.world import Clip, Mover


def test_pretrain_writes_a_reusable_backbone_with_an_attribute_report(tmp_path):
    settings = PretrainSettings(steps=2, batch_size=4, sizes=SplitSizes(6, 3, 3),
                                video_extra_train=3)
    backbone = pretrain(tmp_path / "backbone", tmp_path / "data", settings, show_progress=False)
    assert backbone.tokenizer is not None and not any(p.requires_grad
                                                      for p in backbone.parameters())
    # Every downstream word (answers, MC labels, prompts) has its own id.
    for word in ("true", "false", "a4", "nlvr", "yes", "circle"):
        assert backbone.tokenizer.convert_tokens_to_ids(word) != backbone.tokenizer.unk_token_id
    report = json.loads((tmp_path / "backbone" / "pretrain_report.json").read_text())
    assert {"vqa", "gqa", "tvc"} <= set(report) and "accuracy/colour" in report["vqa"]
    assert 0.0 <= report["tvc"]["motion"] <= 100.0
    val = world_examples(tmp_path / "data" / "pretrain-world", "val", ["tvc"])
    assert {key for key in report["tvc"] if key.endswith("-shape clips")} == {
        f"motion/{len(shape_motions(e.targets[0]))}-shape clips" for e in val}
    assert 0.0 <= report["tvc"]["motion/question"] <= 100.0
    assert all(0.0 <= report[task]["choice"] <= 100.0 for task in ("vqa", "gqa"))
    fingerprint = backbone.fingerprint()
    log = json.loads((tmp_path / "backbone" / "pretrain_log.json").read_text())
    assert log["fingerprint"] == fingerprint and len(log["loss"]) == 2
    assert logged_settings(log["settings"]) == settings
    again = pretrain(tmp_path / "backbone", tmp_path / "data", settings, show_progress=False)
    assert again.fingerprint() == fingerprint  # cached, not retrained


def test_the_pretraining_world_grows_its_video_train_split_only(tmp_path):
    settings = PretrainSettings(sizes=SplitSizes(6, 3, 3), video_extra_train=5)
    generate(tmp_path, seed=1, sizes=settings.pretrain_world_sizes())
    clips = {split: {e.visual_ids[0] for e in world_examples(tmp_path, split, ["tvc"])}
             for split in ("train", "val")}
    images = {e.visual_ids[0] for e in world_examples(tmp_path, "train", ["caption"])}
    assert (len(clips["train"]), len(clips["val"]), len(images)) == (11, 3, 6)


def test_pretrain_cli_prints_the_backbone_folder(tmp_path, capsys, monkeypatch):
    import training.pretrain as module

    monkeypatch.setattr(module, "PretrainSettings",
                        lambda **kw: PretrainSettings(**kw, batch_size=4,
                                                      sizes=SplitSizes(6, 3, 3),
                                                      video_extra_train=0))
    assert main(["pretrain", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "d"),
                 "--steps", "1", "--quiet"]) == 0
    assert f"backbone: {tmp_path / 'b'}" in capsys.readouterr().out
    log = json.loads((tmp_path / "b" / "pretrain_log.json").read_text())
    assert log["command"] == (f"train-adapter pretrain --out {tmp_path / 'b'} --data "
                              f"{tmp_path / 'd'} --steps 1 --batch-size 4 --lr 0.0005 --seed 0")


def test_pretrain_cli_and_demo_take_their_defaults_from_pretrain_settings(tmp_path,
                                                                         monkeypatch):
    import demo.run as demo_run

    args = build_parser().parse_args(["pretrain"])
    assert pretrain_settings(args) == PretrainSettings()
    given = build_parser().parse_args(["pretrain", "--steps", "7", "--batch-size", "3"])
    assert pretrain_settings(given) == PretrainSettings(steps=7, batch_size=3)
    seen = []
    monkeypatch.setattr(demo_run, "SHIPPED_BACKBONE", tmp_path / "absent")
    monkeypatch.setattr(demo_run, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(demo_run, "pretrain",
                        lambda out, data, settings: seen.append(settings))
    demo_run.benchmark_backbone(None)
    assert seen == [PretrainSettings()]


def test_motion_accuracy_gives_each_shape_its_own_motion_in_any_order_and_grammar():
    references = ["the red circle moves left and the blue square stays still",
                  "the green triangle moves up",
                  "the red square moves down and the yellow circle moves right",
                  "the blue circle moves left", "two shapes"]
    examples = [Example("tvc", str(i), ("v",), "tvc:", targets=(reference,))
                for i, reference in enumerate(references)]
    predictions = {
        "0": "a blue square stays still while a red circle moves left",  # 2 of 2: other order
        "1": "the green circle moves up",  # 0 of 1: the right motion of a shape not there
        "2": "the yellow circle moves right and the red square moves up",  # 1 of 2
        "3": "the blue circle moves left and the blue circle moves up"}  # 1: the first said
    # 4 of the 6 shapes; a reference naming no shape counts nothing.
    assert motion_accuracy(predictions, examples) == 400 / 6
    # One-shape clips 1 and 3: 1 of 2; two-shape clips 0 and 2: 3 of 4.
    assert motion_by_shape_count(predictions, examples) == {
        "motion/1-shape clips": 50.0, "motion/2-shape clips": 75.0}


def test_shape_motions_reads_both_tvc_grammars():
    clip = Clip((Mover("red", "circle", (10, 10), "left"),
                 Mover("blue", "square", (40, 40), "still")))
    for description in video_tasks.tvc_descriptions(clip):
        assert shape_motions(description) == [("red circle", "left"), ("blue square", "still")]


def _clip_caption(clip: str, *references: str) -> Example:
    return Example("tvc", f"{clip}#0", (clip,), "tvc: [Subs] look", targets=references)


def test_motion_questions_ask_how_each_shape_of_a_clip_moves():
    captions = [
        _clip_caption("v1", "the red circle moves left and the blue square stays still",
                      "a red circle moves left while a blue square stays still"),
        _clip_caption("v1", "a red circle moves left while a blue square stays still"),
        _clip_caption("v2", "the green triangle moves up")]
    asked = {(q.visual_ids, q.source_text): q.targets for q in motion_questions(captions)}
    assert asked == {
        (("v1",), "tvc: how does the red circle move ?"): ("left",),
        (("v1",), "tvc: how does the blue square move ?"): ("still",),
        (("v2",), "tvc: how does the green triangle move ?"): ("up",)}


def _tiny_florence2_family() -> str:
    """The family of a tiny random Florence-2 backbone (shapes only)."""
    return florence2.from_config(sized_config("tiny"), image_size=32).config.family


def test_pretraining_examples_carry_the_backbones_family_prompts(tmp_path):
    """Florence-2 reads its own task tags; a VL-T5 / VL-BART backbone keeps VL-Adapter's
    prompts, the text the shipped backbone was pre-trained on."""
    generate(tmp_path, seed=0, sizes=SplitSizes(3, 1, 1))
    family = _tiny_florence2_family()
    florence = {e.task: e for e in world_examples(tmp_path, "train", ("vqa", "caption"),
                                                  family)}
    plain = {e.task: e for e in world_examples(tmp_path, "train", ("vqa", "caption"))}
    assert florence["vqa"].source_text == f"<VQA>{florence['vqa'].text}"
    assert florence["caption"].source_text == "What does the image describe?"
    assert plain["vqa"].source_text == f"vqa: {plain['vqa'].text}"
    assert plain["caption"].source_text == "caption:"


def test_motion_questions_take_the_backbones_tvc_prompt(monkeypatch):
    family = _tiny_florence2_family()
    monkeypatch.setitem(FAMILY_PROMPTS, family, {**FAMILY_PROMPTS[family], "tvc": "<MOTION>"})
    captions = [_clip_caption("v1", "the red circle moves left")]
    assert [q.source_text for q in motion_questions(captions, family)] == [
        "<MOTION>how does the red circle move ?"]
    assert [q.source_text for q in motion_questions(captions)] == [
        "tvc: how does the red circle move ?"]


def _groups() -> dict[str, list[Example]]:
    return {name: [Example(name, f"{name}{i}", ("v",), name, targets=("x",))
                   for i in range(size)]
            for name, size in (("caption", 50), ("tvc", 50), (MOTION_QUESTIONS, 3))}


def test_a_batch_draws_rows_by_mix_weight_not_by_example_count():
    settings = PretrainSettings(batch_size=40, mix=(("caption", 0.0), ("tvc", 1.0),
                                                    (MOTION_QUESTIONS, 1.0)))
    rng = np.random.default_rng(0)
    batches = [sample_rows(_groups(), settings, rng) for _ in range(20)]
    assert all(len(rows) == 40 for rows in batches)
    drawn = [row.task for rows in batches for row in rows]
    # The 3 motion questions get half the rows, the 50 captions (weight 0) none.
    assert "caption" not in drawn and drawn.count(MOTION_QUESTIONS) > 300
    tvc_ids = [row.example_id for row in batches[0] if row.task == "tvc"]
    assert len(set(tvc_ids)) == len(tvc_ids)  # distinct where the group has enough



def _question(qid: str, text: str, answer: str, question_type: str) -> Example:
    return Example("vqa", qid, ("img",), f"vqa: {text}", targets=(answer,),
                   question_type=question_type, text=text)


def test_choice_questions_put_each_answer_among_answers_of_its_type_and_target_its_label():
    questions = [_question(f"c{i}", "what colour is the circle ?", colour, "colour")
                 for i, colour in enumerate(("red", "blue", "green", "yellow", "purple",
                                             "orange", "red"))]
    questions.append(_question("e0", "is there a square ?", "yes", "exist"))
    questions.append(_question("e1", "is there a circle ?", "no", "exist"))
    questions.append(_question("s0", "what shape is it ?", "circle", "shape"))  # alone
    posed = {q.example_id: q for q in choice_questions(questions, seed=0)}
    assert set(posed) == {f"c{i}/choice" for i in range(7)} | {"e0/choice", "e1/choice"}
    for question in questions[:-1]:
        choice = posed[f"{question.example_id}/choice"]
        assert choice.targets == (f"a{choice.label}",)
        assert choice.choices[choice.label] == question.targets[0]
        assert len(set(choice.choices)) == len(choice.choices)
        options = " ".join(f"a{i}: {o}" for i, o in enumerate(choice.choices))
        assert choice.source_text == f"vqa: [Q] {question.text} [Choices] {options}"
    colours = {"red", "blue", "green", "yellow", "purple", "orange"}
    assert all(len(posed[f"c{i}/choice"].choices) == MAX_CHOICES
               and set(posed[f"c{i}/choice"].choices) <= colours for i in range(7))
    assert set(posed["e0/choice"].choices) == {"yes", "no"}
    # The right option is not always first: the order is drawn.
    assert len({posed[f"c{i}/choice"].label for i in range(7)}) > 1
    assert choice_questions(questions, seed=0) == list(posed.values())  # seeded
