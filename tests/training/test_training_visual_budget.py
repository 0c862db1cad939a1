"""Training on a backbone whose image tokens share the encoder's positions with the text
(Florence-2): a task that cannot fit is refused in one CLI line before any feature is
computed, with the arithmetic (prompt-tuning vectors counted too), and each example's text
is cut at what its own visual tokens and the recipe's prompt vectors leave
(`BackboneConfig.text_budget`), so NLVR2's two images train on long statements."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import yaml

from benchmarks.florence2_sizes import sized_config, write_random
from training.batches import training_batch
from training.cli import main
from training.config import load_task_split, parse_config
from training.synthetic_run import synthetic_tasks
from training.text import corpus_tokenizer
from training.trainer import Trainer

PADDING = "there is " * 130  # 260 words: past the 256 positions, let alone what two tiny
# Florence-2 images (2 x 65) and 3 prompt vectors leave: 123
PROMPT = {"method": "prompt_tuning", "config": {"length": 3, "hidden_dim": 8},
          "sharing": "multiple"}


def _run(world: dict, tmp_path: Path, tasks: list[str], image_size: int,
         methods: list[dict]) -> dict:
    """The raw config of a 1-step run of `tasks` on a tiny random Florence-2 folder at
    `image_size` px (32: 65 tokens per image; 48: 145) with 256 encoder positions."""
    raw = {**world["raw"], "tasks": synthetic_tasks(world["root"] / "data", tasks, batch_size=4),
           "steps": 1, "eval_every": 1, "backbone": str(tmp_path / "florence2"),
           "methods": methods}
    examples = [e for task, data in parse_config({**raw, "backbone": "tiny"}).tasks.items()
                for e in load_task_split(task, data, "train") + load_task_split(task, data, "val")]
    config = sized_config("tiny")
    config.text_config.vocab_size = 1024  # the synthetic world's words
    config.vision_config.max_position_embeddings = 12  # the tower's 2-D table at 48 px
    write_random(tmp_path / "florence2", config, image_size,
                 corpus_tokenizer(examples, "bart", 1024))
    return raw


def _train(raw: dict, tmp_path: Path) -> int:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    return main(["train", "--config", str(tmp_path / "run.yaml"), "--out",
                 str(tmp_path / "run"), "--quiet"])


def test_a_task_whose_images_fill_the_positions_is_refused_before_features(
        world, tmp_path, capsys):
    raw = _run(world, tmp_path, ["vqa", "nlvr2"], 48, [{"method": "lora"}])
    capsys.readouterr()  # writing the folder's progress
    assert _train(raw, tmp_path) == 2
    err = capsys.readouterr().err
    assert err == ("train-adapter: error: tasks: task 'nlvr2' cannot run on this backbone: "
                   "2 image(s) x 145 = 290 visual tokens leave 0 of its 256 encoder "
                   "positions for text (a text needs 2)\n")
    assert not (tmp_path / "run" / "feature-cache").exists()


def test_prompt_vectors_that_fill_what_the_image_leaves_are_refused(world, tmp_path, capsys):
    prompt = {**PROMPT, "config": {"length": 110, "hidden_dim": 8}}  # 145 + 110 of 256
    raw = _run(world, tmp_path, ["vqa"], 48, [prompt])
    capsys.readouterr()
    assert _train(raw, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task 'vqa' cannot run on this backbone: 1 image(s) x " \
        "145 = 145 visual tokens + 110 prompt vectors leave 1 of its 256" in err


def _long_statements(task: dict, out: Path) -> dict:
    """A copy of the world's NLVR2 task whose every statement starts with `PADDING`."""
    out.mkdir()
    for split in ("train", "val", "test"):
        records = json.loads(Path(task[split]).read_text())
        for record in records:
            record["sent"] = PADDING + record["sent"]
        (out / f"{split}.json").write_text(json.dumps(records))
    return {**task, **{split: str(out / f"{split}.json") for split in ("train", "val", "test")}}


def test_nlvr2_trains_with_text_cut_at_what_two_images_and_the_prompt_leave(world, tmp_path):
    raw = _run(world, tmp_path, ["nlvr2"], 32, [{"method": "lora"}, PROMPT])
    raw["tasks"]["nlvr2"] = _long_statements(raw["tasks"]["nlvr2"], tmp_path / "nlvr2")
    trainer = Trainer(parse_config(raw), tmp_path / "run", show_progress=False)
    rows = trainer.tasks["nlvr2"].train[:2]
    assert len(trainer.backbone.tokenizer(rows[0].source_text)["input_ids"]) > 256
    batch, _ = training_batch(trainer.backbone.tokenizer, rows, trainer.tasks["nlvr2"].features,
                              0, 0, "florence2", partial(trainer.backbone.config.text_budget,
                                                         prompt_vectors=3))
    assert batch.input_ids.shape[1] == 256 - 130 - 3
    loss, _ = trainer._loss("nlvr2", rows, step=0)  # was an index error past 256 positions
    assert loss.isfinite()
    assert trainer.prompt_vectors == {"nlvr2": 3}
    assert _train(raw, tmp_path) == 0  # steps, then evaluation over the same budget


def test_data_check_names_a_task_the_backbone_cannot_run(world, tmp_path, capsys):
    raw = _run(world, tmp_path, ["vqa", "nlvr2"], 48, [{"method": "lora"}])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["data", "check", "--config", str(tmp_path / "run.yaml")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["train-adapter: error: nlvr2: task 'nlvr2' cannot run on this backbone: "
                     "2 image(s) x 145 = 290 visual tokens leave 0 of its 256 encoder "
                     "positions for text (a text needs 2)"]
