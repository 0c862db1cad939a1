"""A small synthetic world and a tiny backbone folder shared by the trainer tests."""

from __future__ import annotations

import pytest
from training_helpers import TASKS

from modeling.backbone import VLBackbone
from modeling.config import preset
from training.config import load_task_split, parse_config
from training.synthetic import generate
from training.synthetic.generate import SplitSizes
from training.synthetic_run import synthetic_tasks
from training.text import corpus_tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A small synthetic world, a tiny backbone folder with its tokenizer, a base config."""
    root = tmp_path_factory.mktemp("world")
    generate(root / "data", seed=0, sizes=SplitSizes(12, 4, 4))
    tasks = synthetic_tasks(root / "data", list(TASKS), batch_size=4)
    raw = {"backbone": str(root / "backbone"), "tasks": tasks, "steps": 6, "lr": 1e-2,
           "methods": [{"method": "lora", "config": {"rank": 4, "dropout": 0.3}},
                       {"method": "adapter", "config": {"width": 8}, "sharing": "multiple"}],
           "eval_examples": 3, "java_metrics": False, "log_every": 2}
    examples = [e for t, d in parse_config({**raw, "backbone": "tiny"}).tasks.items()
                for e in load_task_split(t, d, "train")]
    backbone = VLBackbone.from_config(preset("tiny"),
                                      tokenizer=corpus_tokenizer(examples, "t5", 512))
    backbone.save_pretrained(root / "backbone")
    return {"root": root, "raw": raw}
