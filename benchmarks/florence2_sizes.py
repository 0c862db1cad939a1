"""Florence-2 models by size with random weights: what `benchmarks.florence2_base` writes
(and the tests build their tiny Florence-2 folders from).

No weights can be downloaded here; speed depends on the shapes, not the values.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    BartConfig,
    Florence2Config,
    Florence2VisionConfig,
    PreTrainedTokenizerBase,
)

from modeling.families import florence2


def sized_config(size: str) -> Florence2Config:
    """A Florence-2 config by size: "base" (Florence-2-base's real dimensions: DaViT
    128-1024 wide, depths 1/1/9/1, BART-base 6+6 layers of 768, 51289 tokens) or "tiny"
    (one DaViT stage of 16 channels, BART 32 wide, 64 tokens: tests)."""
    if size == "base":
        vision = Florence2VisionConfig(projection_dim=768)
        text = BartConfig(vocab_size=51289, d_model=768, encoder_layers=6, decoder_layers=6,
                          encoder_attention_heads=12, decoder_attention_heads=12,
                          encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                          max_position_embeddings=1024)
        return Florence2Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_token_id=51288)
    if size != "tiny":
        raise ValueError(f"unknown Florence-2 size {size!r}; expected 'base' or 'tiny'")
    vision = Florence2VisionConfig(
        depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3],
        patch_prenorm=[False], embed_dim=[16], num_heads=[2], num_groups=[2], window_size=2,
        projection_dim=32, max_position_embeddings=8, max_temporal_embeddings=4,
        drop_path_rate=0.0)
    text = BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                      decoder_ffn_dim=64, max_position_embeddings=256, scale_embedding=True)
    return Florence2Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                           image_token_id=63)


def write_random(folder: Path, config: Florence2Config, image_size: int,
                 tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0) -> Path:
    """A Hugging Face Florence-2 folder with random weights (seeded), as a fine-tuned
    checkpoint is laid out: config.json, model.safetensors, generation_config.json,
    preprocessor_config.json (the image side) and the tokenizer files
    (`Florence2Backbone.save_pretrained`, the inverse of `florence2.load`)."""
    backbone = florence2.from_config(config, device="cpu", image_size=image_size, seed=seed)
    backbone.tokenizer = tokenizer
    backbone.save_pretrained(folder)
    return Path(folder)
