"""The demo's last act: a trained artifact served over real gRPC answers all eight tasks."""

from __future__ import annotations

from demo.run import DEMO_PRESET
from demo.serve import exact, serve_and_ask
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.tasks import TASKS
from training.data.example import Example
from training.synthetic import generate
from training.synthetic.generate import SplitSizes
from training.synthetic_run import synthetic_config
from training.text import corpus_tokenizer
from training.trainer import Trainer, load_task_split


def test_trained_artifact_is_served_for_every_task(tmp_path, capsys):
    generate(tmp_path / "world", seed=0, sizes=SplitSizes(4, 2, 2))
    base = synthetic_config(tmp_path / "world", tmp_path / "backbone", DEMO_PRESET, 2,
                            java_metrics=False, eval_examples=1)
    examples = [e for t, d in base.tasks.items() for e in load_task_split(t, d, "train")]
    VLBackbone.from_config(preset("tiny"), tokenizer=corpus_tokenizer(examples, "t5", 512)
                           ).save_pretrained(tmp_path / "backbone")
    trainer = Trainer(base, tmp_path / "run", show_progress=False)
    trainer.run()
    serve_and_ask(tmp_path / "run" / "artifact", tmp_path / "backbone", tmp_path / "world")
    out = capsys.readouterr().out
    for task in TASKS:
        assert f"[{task}]" in out
    assert "exact answers:" in out
    for task in ("tvqa", "how2qa"):  # multiple choice is shown and judged by the option's text
        example = load_task_split(task, base.tasks[task], "test")[0]
        assert f"truth: {example.choices[example.label]!r}" in out
        assert any(f"answer: {choice!r}" in out for choice in example.choices)


def test_demo_trains_and_serves_a_given_backbone_folder_instead_of_pretraining(monkeypatch,
                                                                              tmp_path):
    from types import SimpleNamespace

    from demo import run

    calls: dict[str, object] = {}
    monkeypatch.setattr(run, "RUNS", tmp_path)
    # the checkout may ship a backbone; this test is about the one pre-trained in RUNS
    monkeypatch.setattr(run, "SHIPPED_BACKBONE", tmp_path / "absent")
    monkeypatch.setattr(run, "pretrain", lambda *args, **kw: calls.setdefault("pretrain", args))
    monkeypatch.setattr(run, "generate", lambda out, **kw: calls.setdefault("generate", out))

    def train(steps, backbone, choice_answer):
        calls["train"], calls["choice_answer"] = backbone, choice_answer
        return SimpleNamespace(out=tmp_path / "run")

    monkeypatch.setattr(run, "train_adapter", train)
    monkeypatch.setattr(run, "serve_and_ask",
                        lambda artifact, backbone, world: calls.setdefault("serve", backbone))
    run.main(["--backbone", str(tmp_path / "mine"), "--steps", "1"])
    assert "pretrain" not in calls
    assert calls["generate"] == tmp_path / "data" / "world"
    assert calls["train"] == calls["serve"] == tmp_path / "mine"
    assert calls["choice_answer"] == "text"  # the cloze form, which the demo's steps learn
    run.main(["--steps", "1", "--choice-answer", "label"])
    assert calls["pretrain"][0] == tmp_path / "backbone-small"
    assert calls["choice_answer"] == "label"


def test_the_demo_counts_only_a_best_scored_answer_the_right_option_or_a_reference():
    vqa = Example("vqa", "q", ("i",), "vqa: what colour ?", targets=("red", "green"),
                  target_weights=(1.0, 0.3))
    caption = Example("caption", "c", ("i",), "caption:", targets=("a red square", "one shape"))
    tvqa = Example("tvqa", "t", ("v",), "tvqa:", targets=("a1",), choices=("left", "up"),
                   label=1)
    assert exact("red", vqa) and not exact("green", vqa)  # another annotator's 0.3 is not
    assert exact("a red square", caption) and exact("one shape", caption)
    assert not exact("a square", caption)
    assert exact("up", tvqa) and not exact("left", tvqa)
