"""Decoder prompts (`TaskSpec.decoder_prompt_for`, `make_batch(decoder_prompts=...)`):
BLIP captioning reads "a picture of" after its start token; the labels carry the prompt
for teacher forcing and `answer_labels` keeps it out of the loss."""

from __future__ import annotations

import torch

from modeling.inputs import VisualTokens, make_batch
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer

WORDS = ["a", "picture", "of", "red", "cube", "what", "vqa", "caption"]


def _visual() -> VisualTokens:
    return VisualTokens.concat([torch.ones(2, 4)])


def test_blip_captioning_alone_has_a_decoder_prompt():
    assert TASKS["caption"].decoder_prompt_for("blip") == "a picture of"
    others = [(name, family) for name in TASKS for family in ("vl", "florence2", "blip")
              if (name, family) != ("caption", "blip")]
    assert all(TASKS[name].decoder_prompt_for(family) == "" for name, family in others)


def test_labels_start_with_the_decoder_prompt_and_the_loss_skips_it():
    tokenizer = build_word_tokenizer(WORDS, "bert")
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    eos = tokenizer.eos_token_id
    batch = make_batch(tokenizer, ["caption:", "vqa: what"], [_visual(), _visual()],
                       targets=["red cube", "red"], decoder_prompts=["a picture of", ""])
    prompt = [ids["a"], ids["picture"], ids["of"]]
    assert batch.decoder_prompts() == [prompt, []]
    assert batch.labels.tolist() == [prompt + [ids["red"], ids["cube"], eos],
                                     [ids["red"], eos, -100, -100, -100, -100]]
    assert batch.answer_labels.tolist() == [[-100] * 3 + [ids["red"], ids["cube"], eos],
                                            [ids["red"], eos, -100, -100, -100, -100]]


def test_a_batch_without_decoder_prompts_is_as_before():
    tokenizer = build_word_tokenizer(WORDS, "bert")
    batch = make_batch(tokenizer, ["vqa: what"], [_visual()], targets=["red cube"],
                       decoder_prompts=[""])
    assert batch.decoder_prompt is None and batch.decoder_prompts() == [[]]
    assert torch.equal(batch.answer_labels, batch.labels)
    assert batch.labels.tolist() == [tokenizer("red cube")["input_ids"]]
