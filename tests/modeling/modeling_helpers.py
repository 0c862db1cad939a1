"""Tiny batches and helpers shared by the modeling tests."""

from __future__ import annotations

import pytest
import torch

from modeling.backbone import VLBackbone, VLBatch

FAMILIES = ("tiny", "tiny-bart", "tiny-florence2")
# The same sizes with the papers' encoder semantics (visual_semantics "vlt5").
PAPER_FAMILIES = ("tiny-vl-t5", "tiny-vl-bart")
# Other model classes (`modeling.families.blip`): VQA and captioning.
BLIP_FAMILIES = ("blip-vqa", "blip-caption")
# Runs a test using the `backbone` fixture on all of them (the oracles: cheap enough).
on_every_family = pytest.mark.parametrize("backbone", FAMILIES + PAPER_FAMILIES + BLIP_FAMILIES,
                                          indirect=True)
# The same without BLIP: tests of the T5 / BART reference equations (`paper_reference`).
on_t5_and_bart = pytest.mark.parametrize("backbone", FAMILIES + PAPER_FAMILIES, indirect=True)


def random_batch(backbone: VLBackbone, text_lengths: list[int], visual_tokens: int = 4,
                 seed: int = 0, with_labels: bool = True) -> VLBatch:
    """A right-padded batch with the given text lengths and two-image order ids."""
    gen = torch.Generator().manual_seed(seed)
    rows, longest = len(text_lengths), max(text_lengths)
    vocab = backbone.lm.config.vocab_size
    input_ids = torch.randint(4, vocab, (rows, longest), generator=gen)
    text_mask = torch.arange(longest)[None, :] < torch.tensor(text_lengths)[:, None]
    input_ids[~text_mask] = backbone.lm.config.pad_token_id
    order = (torch.arange(visual_tokens) >= visual_tokens // 2).long().expand(rows, -1)
    labels = torch.randint(4, vocab, (rows, 3), generator=gen) if with_labels else None
    return VLBatch(input_ids=input_ids, text_mask=text_mask,
                   visual=torch.randn(rows, visual_tokens, backbone.config.feat_dim,
                                      generator=gen),
                   visual_mask=torch.ones(rows, visual_tokens, dtype=torch.bool),
                   image_order=order.clone(), labels=labels)


def alone(batch: VLBatch, row: int) -> VLBatch:
    """Row `row` by itself, its text padding removed (what a single request looks like)."""
    length = int(batch.text_mask[row].sum())
    one = batch.select([row])
    one.input_ids, one.text_mask = one.input_ids[:, :length], one.text_mask[:, :length]
    return one


def randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Give every trainable tensor random values (zero-initialised ups would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * std)

