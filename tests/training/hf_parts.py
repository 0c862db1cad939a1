"""Tiny Hugging Face folders of a backbone's parts, saved as a user's checkpoints are:
vision towers (CLIPModel, CLIPVisionModel, SiglipModel, SiglipVisionModel) and language models (T5,
FLAN-T5-style gated T5, BART) with a word tokenizer. Random weights from the configs;
the loading code is the same as for a downloaded checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5ForConditionalGeneration,
)

from modeling.tokenizer import build_word_tokenizer

VOCAB = 512
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             image_size=32, patch_size=8)


def _t5(gated: bool) -> T5ForConditionalGeneration:
    extra = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if gated else {}
    return T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        **extra))


def _bart() -> BartForConditionalGeneration:
    return BartForConditionalGeneration(BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2))


LMS = {"t5": lambda: _t5(False), "flan-t5": lambda: _t5(True), "bart": _bart}
LM_TYPE = {"t5": "t5", "flan-t5": "t5", "bart": "bart"}
TOWERS = {
    "clip": lambda: CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=99),
        vision_config=TOWER, projection_dim=16)),
    "clip_vision": lambda: CLIPVisionModel(CLIPVisionConfig(**TOWER)),
    "siglip_vision": lambda: SiglipVisionModel(SiglipVisionConfig(**TOWER)),
    "siglip": lambda: SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=99), vision_config=TOWER)),
}


def save_lm(folder: Path, kind: str, words: Iterable[str], seed: int = 0) -> Path:
    """A `kind` language model with a word tokenizer over `words`, saved in `folder`."""
    torch.manual_seed(seed)
    LMS[kind]().save_pretrained(folder)
    build_word_tokenizer(words, LM_TYPE[kind], VOCAB).save_pretrained(folder)
    return folder


def save_tower(folder: Path, kind: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    TOWERS[kind]().save_pretrained(folder)
    return folder


def vision_model(folder: Path, kind: str):
    """The Hugging Face model's own ViT of a saved tower folder (a CLIPModel's
    `vision_model`; a vision model is its ViT)."""
    loader = {"clip": CLIPModel, "clip_vision": CLIPVisionModel,
              "siglip_vision": SiglipVisionModel, "siglip": SiglipModel}[kind]
    model = loader.from_pretrained(folder)
    return getattr(model, "vision_model", model).eval()


def lm_model(folder: Path, kind: str):
    loader = BartForConditionalGeneration if kind == "bart" else T5ForConditionalGeneration
    return loader.from_pretrained(folder).eval()
