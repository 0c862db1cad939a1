"""Training text longer than a backbone's text positions (`BackboneConfig.max_text_tokens`)
is cut there, as every family's batches are cut at 512 tokens: a tiny BLIP (64 positions)
trains and evaluates on long questions instead of failing deep in its text encoder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from family_helpers import blip_model

from modeling.families import load_backbone
from modeling.tokenizer import build_word_tokenizer
from training.batches import training_batch
from training.cli import main
from training.config import load_task_split, parse_config
from training.text import corpus_words
from training.trainer import Trainer

PADDING = "please tell me " * 30  # 90 words: past the tiny BLIP's 64 text positions


def _long_questions(vqa: dict, out: Path) -> dict:
    """A copy of the world's VQA task whose every question starts with `PADDING`."""
    out.mkdir()
    task = dict(vqa)
    for split in ("train", "val", "test"):
        records = json.loads(Path(vqa[split]).read_text())
        for record in records:
            record["sent"] = PADDING + record["sent"]
        (out / f"{split}.json").write_text(json.dumps(records))
        task[split] = str(out / f"{split}.json")
    return task


def _blip_vqa_run(world: dict, tmp_path: Path) -> dict:
    """The raw config of a one-step VQA run on long questions over a tiny BLIP VQA folder
    whose word tokenizer covers them."""
    vqa = _long_questions(world["raw"]["tasks"]["vqa"], tmp_path / "vqa")
    raw = {**world["raw"], "backbone": str(tmp_path / "blip"), "steps": 1, "eval_every": 1,
           "tasks": {"vqa": vqa}, "methods": [{"method": "lora", "config": {"rank": 2}}]}
    examples = load_task_split("vqa", parse_config(raw).tasks["vqa"], "train")
    model = blip_model("vqa", "tiny", seed=0)
    model.save_pretrained(tmp_path / "blip")
    build_word_tokenizer(corpus_words(examples), "bert", model.config.text_config.vocab_size
                         ).save_pretrained(tmp_path / "blip")
    return raw


def test_blip_trains_and_evaluates_on_questions_longer_than_its_positions(world, tmp_path):
    raw = _blip_vqa_run(world, tmp_path)
    backbone = load_backbone(raw["backbone"])
    limit = backbone.config.max_text_tokens
    assert limit == 64
    example = load_task_split("vqa", parse_config(raw).tasks["vqa"], "train")[0]
    assert len(backbone.tokenizer(example.source_text)["input_ids"]) > limit
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    assert (tmp_path / "run" / "artifact" / "manifest.json").is_file()


def test_training_batches_are_cut_at_the_backbones_text_positions(world, tmp_path):
    raw = _blip_vqa_run(world, tmp_path)
    trainer = Trainer(parse_config(raw), tmp_path / "run", show_progress=False)
    rows = trainer.tasks["vqa"].train[:2]
    family, limit = trainer.backbone.config.family, trainer.backbone.config.max_text_tokens
    batch, _ = training_batch(trainer.backbone.tokenizer, rows, trainer.tasks["vqa"].features,
                              0, 0, family, limit)
    full = trainer.backbone.tokenizer([rows[0].source_text])["input_ids"][0]
    assert batch.input_ids.shape[1] == limit
    assert batch.input_ids[0, :limit - 1].tolist() == full[:limit - 1]  # the text's start
    loss, _ = trainer._loss("vqa", rows, step=0)  # the trainer's own batches: no index error
    assert loss.isfinite()
