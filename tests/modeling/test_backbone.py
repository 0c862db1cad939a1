"""The frozen backbone: plain Hugging Face behaviour when idle, save/load, visual inputs."""

from __future__ import annotations

import torch
from modeling_helpers import random_batch
from transformers import BartForConditionalGeneration, T5ForConditionalGeneration

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.visual import fit_frames


def test_idle_hooks_leave_the_lm_identical_to_plain_hugging_face(backbone):
    cls = T5ForConditionalGeneration if backbone.config.lm_type == "t5" else \
        BartForConditionalGeneration
    plain = cls(backbone.lm.config)
    plain.load_state_dict(backbone.lm.state_dict())
    plain.eval()
    ids = torch.randint(4, 500, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    dec = torch.randint(4, 500, (2, 3))
    with torch.no_grad():
        ours = backbone.lm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        theirs = plain(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_save_and_load_keep_weights_and_fingerprint(tmp_path):
    model = VLBackbone.from_config(preset("tiny"), seed=3)
    model.save_pretrained(tmp_path)
    loaded = VLBackbone.from_pretrained(tmp_path)
    assert loaded.fingerprint() == model.fingerprint()
    batch = random_batch(model, [4, 2])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert all(not p.requires_grad for p in loaded.parameters())


def test_fingerprint_changes_when_one_weight_changes():
    model = VLBackbone.from_config(preset("tiny"), seed=3)
    before = model.fingerprint()
    with torch.no_grad():
        model.visual.feat_linear.bias[0] += 1
    assert model.fingerprint() != before


def test_images_become_pooled_grid_tokens_and_frames_are_padded():
    model = VLBackbone.from_config(preset("tiny"), seed=0)
    pixels = torch.randn(3, 3, 32, 32)
    assert model.encode_images(pixels).shape == (3, 4, model.config.feat_dim)
    tokens, valid = model.encode_frames(pixels)
    assert tokens.shape == (model.config.max_frames, model.config.feat_dim)
    assert valid.tolist() == [True] * 3 + [False] * (model.config.max_frames - 3)
    pooled, valid = fit_frames(torch.randn(100, 5), 8)
    assert pooled.shape == (8, 5) and bool(valid.all())
