"""BLIP captioning trains on the continuation of its decoder prompt ("a picture of"):
the decoder reads the prompt teacher-forced, and the loss covers the caption alone."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from family_helpers import blip_model

from modeling.tokenizer import build_word_tokenizer
from training.adapter_step import adapter_logits
from training.batches import training_batch
from training.config import load_task_split, parse_config
from training.text import corpus_words
from training.trainer import Trainer


def _caption_trainer(world: dict, tmp_path) -> Trainer:
    """A one-step LoRA captioning run over a tiny BLIP captioning folder whose word
    tokenizer covers the world's captions and the decoder prompt."""
    raw = {**world["raw"], "backbone": str(tmp_path / "blip"), "steps": 1,
           "tasks": {"caption": world["raw"]["tasks"]["caption"]},
           "methods": [{"method": "lora", "config": {"rank": 4}}]}
    examples = load_task_split("caption", parse_config(raw).tasks["caption"], "train")
    model = blip_model("caption", "tiny", seed=0)
    model.save_pretrained(tmp_path / "blip")
    build_word_tokenizer(corpus_words(examples) | {"a", "picture", "of"}, "bert",
                         model.config.text_config.vocab_size).save_pretrained(tmp_path / "blip")
    return Trainer(parse_config(raw), tmp_path / "run", show_progress=False)


def test_blip_caption_loss_is_taken_on_the_continuation_of_the_prompt_only(world, tmp_path):
    trainer = _caption_trainer(world, tmp_path)
    tokenizer = trainer.backbone.tokenizer
    trainer.model.eval()
    rows = trainer.tasks["caption"].train[:3]

    loss, _ = trainer._loss("caption", rows, step=0)

    batch, _ = training_batch(tokenizer, rows, trainer.tasks["caption"].features,
                              trainer.config.seed, 0, family="blip")
    prompt = tokenizer("a picture of", add_special_tokens=False)["input_ids"]
    assert len(prompt) == 3 and tokenizer.unk_token_id not in prompt
    assert batch.labels[:, :3].tolist() == [prompt] * 3  # the decoder reads the prompt
    with torch.no_grad():
        logits = adapter_logits(trainer.backbone, trainer.model, batch, ["caption"] * 3)
    caption_logits, captions = logits[:, 3:], batch.labels[:, 3:]
    per_row = [F.cross_entropy(caption_logits[r][captions[r] != -100],
                               captions[r][captions[r] != -100]) for r in range(3)]
    torch.testing.assert_close(loss.detach(), torch.stack(per_row).mean())
    with_prompt = F.cross_entropy(logits.transpose(1, 2), batch.labels, ignore_index=-100,
                                  reduction="none")
    assert not torch.allclose(loss.detach(), (with_prompt.sum(1) / (batch.labels != -100)
                                              .sum(1)).mean())  # the prompt is not scored


def test_a_caption_longer_than_the_decoders_positions_is_cut_after_the_prompt(world, tmp_path):
    """The decoder prompt ("a picture of", 3 tokens) and the caption share the decoder's
    positions (`max_decoder_tokens`, 64 on the tiny BLIP): a 90-word caption is cut to
    the 61 tokens left, where it failed with an index error in BLIP's text decoder."""
    trainer = _caption_trainer(world, tmp_path)
    config = trainer.backbone.config
    assert config.max_decoder_tokens == blip_model("caption", "tiny", device="meta"
                                                   ).config.text_config.max_position_embeddings
    assert config.max_decoder_tokens == 64
    rows = [replace(row, targets=("a picture of " * 30,)) for row in
            trainer.tasks["caption"].train[:2]]

    loss, _ = trainer._loss("caption", rows, step=0)

    assert loss.isfinite()
    batch, _ = training_batch(trainer.backbone.tokenizer, rows, trainer.tasks["caption"].features,
                              0, 0, config.family, config.max_text_tokens,
                              config.max_decoder_tokens)
    assert batch.labels.shape[1] == config.max_decoder_tokens
