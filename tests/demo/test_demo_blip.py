"""`python -m demo --backbone FOLDER` on a BLIP folder: a VQA model trains and serves all
eight tasks; a captioning model (it reads no text) runs the captioning tasks and names the
others in one line."""

from __future__ import annotations

import pytest
import torch
from family_helpers import BLIP_SIZES
from transformers import BlipConfig

from demo import run
from modeling.families import blip
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer
from training.synthetic import generate
from training.synthetic.generate import SplitSizes
from training.synthetic_run import synthetic_config
from training.text import corpus_words
from training.trainer import load_task_split


def _blip_folder(root, mode: str, world) -> str:
    """A tiny random BLIP `mode` model (64 wide: the demo's prompt MLP fits its bounds;
    256 text positions: video questions fit) with a word tokenizer over the world."""
    base = synthetic_config(world, root / "unused", run.DEMO_PRESET, 1)
    words = corpus_words(e for t, d in base.tasks.items() for e in load_task_split(t, d, "train"))
    tiny = BLIP_SIZES["tiny"]
    config = BlipConfig(text_config={**tiny["text"], "hidden_size": 64,
                                     "encoder_hidden_size": 64, "max_position_embeddings": 256},
                        vision_config={**tiny["vision"], "hidden_size": 64})
    torch.manual_seed(0)
    model_cls = {"vqa": blip.BlipForQuestionAnswering,
                 "caption": blip.BlipForConditionalGeneration}[mode]
    model_cls(config).save_pretrained(root / mode)
    build_word_tokenizer(words | {"a", "picture", "of"}, "bert",
                         config.text_config.vocab_size).save_pretrained(root / mode)
    return str(root / mode)


@pytest.mark.parametrize("mode", ["vqa", "caption"])
def test_demo_trains_and_serves_a_blip_folder(tmp_path, monkeypatch, capsys, mode):
    world = tmp_path / "data" / "world"
    generate(world, seed=0, sizes=SplitSizes(4, 2, 2))
    folder = _blip_folder(tmp_path, mode, world)
    monkeypatch.setattr(run, "RUNS", tmp_path)
    monkeypatch.setattr(run, "generate", lambda out, **kw: None)  # written above, smaller
    run.main(["--backbone", folder, "--steps", "2"])
    out = capsys.readouterr().out
    asked = [task for task in TASKS if f"  [{task}]" in out]
    if mode == "vqa":
        assert asked == list(TASKS)
        assert "exact answers:" in out and f"/{len(TASKS)}" in out
        return
    captioning = [task for task, spec in TASKS.items() if spec.is_captioning]
    assert asked == captioning
    [line] = [line for line in out.splitlines() if "reads no text" in line]
    assert all(task in line for task in TASKS)  # names what it left out and what it runs
    assert "exact answers:" in out and f"/{len(captioning)}" in out
