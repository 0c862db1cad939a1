"""BLIP with no adapter computes what transformers' BLIP computes: greedy decode token for
token against `BlipForQuestionAnswering.generate` / `BlipForConditionalGeneration.generate`,
teacher-forced logits within 1e-5 against the library's own modules."""

from __future__ import annotations

import pytest
import torch
from blip_helpers import blip_batch, blip_folder
from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

from modeling.families import blip
from modeling.generation import beam_search, greedy

HF_CLASS = {"vqa": BlipForQuestionAnswering, "caption": BlipForConditionalGeneration}
# Every setting that changes greedy decoding, set explicitly (a model's generation config
# may carry others).
GREEDY = dict(num_beams=1, do_sample=False, max_new_tokens=8, min_new_tokens=0,
              repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0)


@pytest.fixture(scope="module", params=["vqa", "caption"])
def pair(request, tmp_path_factory):
    folder = blip_folder(tmp_path_factory.mktemp("blip"), request.param, seed=5)
    return request.param, blip.load(folder), HF_CLASS[request.param].from_pretrained(
        folder).eval()


def _inputs(backbone, rows: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = backbone.config.vision.image_size
    pixels = torch.randn(rows, 3, size, size, generator=gen)
    ids = torch.randint(4, backbone.lm.config.vocab_size, (rows, 6), generator=gen)
    ids[:, -1] = backbone.eos_token_id  # a question ends with [SEP], as tokenised
    return pixels, ids


def _library_tokens(out: torch.Tensor, eos: int) -> list[list[int]]:
    """generate's rows -> the tokens after the start token, up to eos (excluded)."""
    rows = []
    for row in out[:, 1:].tolist():
        rows.append(row[:row.index(eos)] if eos in row else row)
    return rows


def test_blip_greedy_decode_equals_library_generate(pair):
    mode, backbone, hf = pair
    pixels, ids = _inputs(backbone)
    with torch.no_grad():
        if mode == "vqa":
            out = hf.generate(input_ids=ids, pixel_values=pixels, **GREEDY)
        else:
            out = hf.generate(pixel_values=pixels, **GREEDY)
    expected = _library_tokens(out, backbone.eos_token_id)
    ours = greedy(backbone, blip_batch(backbone, pixels, ids), max_new_tokens=8)
    assert ours == expected
    assert max(len(row) for row in ours) >= 2  # the comparison saw real decoding
    assert len({tuple(row) for row in ours}) > 1  # and outputs that depend on the input


def test_blip_teacher_forced_logits_match_library(pair):
    mode, backbone, hf = pair
    pixels, ids = _inputs(backbone, seed=1)
    labels = torch.randint(4, backbone.lm.config.vocab_size, (3, 5),
                           generator=torch.Generator().manual_seed(2))
    decoder_ids = torch.cat([torch.full((3, 1), backbone.decoder_start_token_id),
                             labels[:, :-1]], 1)
    with torch.no_grad():
        ours = backbone(blip_batch(backbone, pixels, ids, labels))
        image = hf.vision_model(pixel_values=pixels).last_hidden_state
        if mode == "vqa":
            states = hf.text_encoder(input_ids=ids, encoder_hidden_states=image).last_hidden_state
            expected = hf.text_decoder(input_ids=decoder_ids,
                                       encoder_hidden_states=states).logits
        else:
            expected = hf(pixel_values=pixels, input_ids=decoder_ids).logits
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_blip_caption_continues_its_decoder_prompt_as_library_generate(tmp_path, num_beams):
    """BlipForConditionalGeneration.generate(pixel_values, input_ids=prefix) reads
    [DEC] + prefix and continues it; ours, given the prefix as the batch's decoder prompt,
    returns that continuation (the prefix left out), token for token."""
    folder = blip_folder(tmp_path, "caption", seed=5)
    backbone, hf = blip.load(folder), BlipForConditionalGeneration.from_pretrained(folder).eval()
    pixels, _ = _inputs(backbone)
    prompt = [7, 11, 5]  # "a picture of" in some vocabulary
    ids = torch.tensor([[backbone.decoder_start_token_id, *prompt, backbone.eos_token_id]] * 3)
    settings = {**GREEDY, "num_beams": num_beams, "early_stopping": True}
    with torch.no_grad():
        out = hf.generate(pixel_values=pixels, input_ids=ids, **settings)
    assert out[:, 1:1 + len(prompt)].tolist() == [prompt] * 3  # the library continues it
    expected = _library_tokens(out[:, len(prompt):], backbone.eos_token_id)
    batch = blip_batch(backbone, pixels, ids)
    batch.decoder_prompt = torch.tensor([prompt] * 3)
    ours = beam_search(backbone, batch, max_new_tokens=8, num_beams=num_beams)
    assert ours == expected
    assert len({tuple(row) for row in ours}) > 1  # outputs depend on the image
    without = beam_search(backbone, blip_batch(backbone, pixels, ids), max_new_tokens=8,
                          num_beams=num_beams)
    assert without != ours  # the prompt changed what follows
