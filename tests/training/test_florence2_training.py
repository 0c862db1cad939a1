"""`train-adapter train` on a Florence-2 folder: every task kind takes training steps and
is evaluated (generation and candidate scoring through the Florence-2 backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from training_helpers import check_tuned_backbone_written
from transformers import Florence2ForConditionalGeneration

from benchmarks.florence2_sizes import sized_config, write_random
from modeling.families import load_backbone
from modeling.tasks import TASKS, TaskKind
from training.cli import main
from training.config import load_task_split, parse_config
from training.synthetic_run import synthetic_tasks
from training.text import corpus_tokenizer
from training.trainer import Trainer

# One task of each kind: open QA, binary, captioning, multiple choice, video captioning.
KINDS = ("vqa", "nlvr2", "caption", "tvqa", "tvc")


def _florence2_folder(raw: dict, folder: Path) -> Path:
    """A tiny random Florence-2 folder with a word tokenizer over the run's words."""
    examples = [e for task, data in parse_config({**raw, "backbone": "tiny"}).tasks.items()
                for e in load_task_split(task, data, "train") + load_task_split(task, data, "val")]
    config = sized_config("tiny")
    config.text_config.vocab_size = 1024  # the synthetic world's words
    tokenizer = corpus_tokenizer(examples, "bart", 1024)
    return write_random(folder, config, 32, tokenizer)


def test_every_task_kind_trains_and_evaluates_on_a_florence2_folder(world, tmp_path):
    assert {TASKS[t].kind for t in KINDS} == set(TaskKind)
    tasks = synthetic_tasks(world["root"] / "data", list(KINDS), batch_size=4)
    raw = {**world["raw"], "tasks": tasks, "steps": len(KINDS) * 2,
           "backbone": str(tmp_path / "florence2"),
           "methods": [{"method": "lora", "config": {"rank": 4}},
                       {"method": "prompt_tuning", "config": {"length": 2, "hidden_dim": 8},
                        "sharing": "multiple"}]}
    _florence2_folder(raw, tmp_path / "florence2")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "run" / "artifact" / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"] == \
        load_backbone(tmp_path / "florence2").fingerprint()
    assert set(manifest["tasks"]) == set(KINDS)
    assert set(manifest["metrics"]) == set(KINDS)  # each evaluated after training


def test_full_finetuning_on_a_florence2_folder_writes_the_tuned_model(world, tmp_path):
    raw = {**world["raw"], "steps": 1, "backbone": str(tmp_path / "florence2"),
           "methods": [{"method": "full_finetuning"}],
           "tasks": synthetic_tasks(world["root"] / "data", ["vqa"], batch_size=4)}
    _florence2_folder(raw, tmp_path / "florence2")
    trainer = Trainer(parse_config(raw), tmp_path / "run", show_progress=False)
    trainer.run()
    check_tuned_backbone_written(tmp_path / "run", trainer.full.model, trainer.backbone)


def test_params_reports_florence2_base_from_its_config_json_alone(tmp_path, capsys):
    """Florence-2-base's real dimensions, counted on the meta device (no weights exist):
    one shared adapter (d/8) after every sublayer plus the LayerNorms, over its BART."""
    base = sized_config("base")
    base.save_pretrained(tmp_path)  # config.json only
    assert main(["params", "--backbone", str(tmp_path), "--preset", "single_adapter",
                 "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        library = Florence2ForConditionalGeneration(base)
    lm = sum(p.numel() for p in library.model.language_model.parameters())  # head tied
    d, width, layers = 768, 768 // 8, 6
    adapters = (6 * 2 + 6 * 3) * (2 * d * width + width + d)  # enc 2, dec 3 per layer
    norms = (layers * 2 + layers * 3 + 2) * 2 * d  # + each stack's layernorm_embedding
    assert counted["trainable"] == adapters + norms
    assert counted["total"] == lm + adapters  # the norms' copies replace the originals
    assert (layers, d) == (base.text_config.encoder_layers, base.text_config.d_model)
