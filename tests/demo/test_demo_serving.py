"""The demo's last act: a trained artifact served over real gRPC answers all eight tasks."""

from __future__ import annotations

from demo.run import DEMO_PRESET
from demo.serve import serve_and_ask
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.tasks import TASKS
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
