"""A tiny random Florence-2 folder in Hugging Face format, and batches for it."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.florence2_sizes import sized_config, write_random
from modeling.backbone import VLBatch
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer

IMAGE_SIZE = 32  # 8 x 8 DaViT cells + 1 temporal token = 65 image tokens
WORDS = ["what", "is", "the", "color", "shape", "red", "blue", "circle", "true", "false",
         "[", "]", ":", "subs", "q", "choices", "left", "right", "a", "man", "cooks",
         *[f"a{i}" for i in range(8)],
         *[w.strip(": ") for w in (s.prompt for s in TASKS.values())]]


def tiny_folder(root: Path, seed: int = 0, init_std: float = 0.02) -> Path:
    """Write a tiny random `Florence2ForConditionalGeneration` with a BART word tokenizer.

    init_std: the BART weights' std (0.3: a random model decodes varied tokens).
    """
    config = sized_config("tiny")
    config.text_config.init_std = init_std
    tokenizer = build_word_tokenizer(WORDS, "bart", config.text_config.vocab_size)
    return write_random(root, config, IMAGE_SIZE, tokenizer, seed=seed)


def pixel_batch(backbone, texts: list[list[int]], seed: int = 0
                ) -> tuple[VLBatch, torch.Tensor]:
    """(batch over the images' tokens, pixels [b, 3, S, S]) for token-id texts of varied
    length (right-padded with BART's pad id 1)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(texts), 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    visual = backbone.encode_images(pixels)
    longest = max(map(len, texts))
    input_ids = torch.ones(len(texts), longest, dtype=torch.long)
    for row, ids in enumerate(texts):
        input_ids[row, :len(ids)] = torch.tensor(ids)
    text_mask = torch.arange(longest)[None, :] < torch.tensor([len(t) for t in texts])[:, None]
    tokens = visual.shape[1]
    return VLBatch(input_ids=input_ids, text_mask=text_mask, visual=visual,
                   visual_mask=torch.ones(len(texts), tokens, dtype=torch.bool),
                   image_order=torch.zeros(len(texts), tokens, dtype=torch.long)), pixels
