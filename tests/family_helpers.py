"""Random BLIP models by size (tiny for tests, BLIP-base's dimensions for the parameter
report), as `BlipForQuestionAnswering` / `BlipForConditionalGeneration` build them; shared by
every test folder (pytest puts tests/ on the path)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering

from modeling.families import blip

# Model sizes for random weights (tests and the README's parameter report). "base" is
# BLIP-base: BERT-base text encoder and decoder, ViT-B/16 at 384 px. Special ids: pad 0, [SEP] 1
# (ends every text; decoding stops there), [DEC] 3 (the decoder's start), as the word
# tokenizer of `modeling.tokenizer` places them; BLIP-base keeps BERT's ids.
BLIP_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "text": dict(vocab_size=512, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                     encoder_hidden_size=32, pad_token_id=0, sep_token_id=1, eos_token_id=1,
                     bos_token_id=3),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=32, patch_size=8),
    },
    "base": {
        "text": dict(vocab_size=30524, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, encoder_hidden_size=768,
                     pad_token_id=0, sep_token_id=102, bos_token_id=30522),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, image_size=384, patch_size=16),
    },
}


def blip_model(mode: str, size: str = "tiny", seed: int = 0, device: str = "cpu"
                 ) -> BlipForQuestionAnswering | BlipForConditionalGeneration:
    """A BLIP model of `BLIP_SIZES[size]` with seeded random weights; mode "vqa" or "caption"
    (device "meta" builds without memory, for parameter counts)."""
    models = {m: cls for cls, m in blip.ARCHITECTURES.values()}
    if mode not in models or size not in BLIP_SIZES:
        raise ValueError(f"BLIP mode must be one of {sorted(models)} and size one of "
                         f"{sorted(BLIP_SIZES)}, got {mode!r} / {size!r}")
    sizes = BLIP_SIZES[size]
    config = BlipConfig(text_config=sizes["text"], vision_config=sizes["vision"])
    with torch.device(device):
        if device != "meta":
            torch.manual_seed(seed)
        return models[mode](config).eval()
