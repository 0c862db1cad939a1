"""Tiny BLIP folders for the tests: random weights spread wide enough that outputs depend
on the inputs (BLIP's own init gives near-constant logits at this size)."""

from __future__ import annotations

from pathlib import Path

import torch
from family_helpers import blip_model

from modeling.backbone import VLBatch


def spread_weights(model: torch.nn.Module, seed: int) -> None:
    """LayerNorms near identity, matrices ~ N(0, 1/fan_in) (embeddings 3x), vectors 0.1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "layernorm" in name.lower() or "layer_norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * noise)
            elif param.dim() >= 2:
                scale = 3.0 if "embedding" in name else 1.0
                param.copy_(noise * scale / param[0].numel() ** 0.5)
            else:
                param.copy_(noise * 0.1)


def blip_folder(root: Path, mode: str, seed: int = 0) -> Path:
    """A tiny BLIP `mode` ("vqa" / "caption") model saved as Hugging Face saves it."""
    model = blip_model(mode, "tiny", seed)
    spread_weights(model, seed)
    folder = root / f"blip-{mode}-{seed}"
    model.save_pretrained(folder)
    return folder


def blip_batch(backbone, pixel_values: torch.Tensor, input_ids: torch.Tensor,
               labels: torch.Tensor | None = None) -> VLBatch:
    """Our batch of these images (through the frozen ViT) and unpadded questions."""
    visual = backbone.encode_images(pixel_values)
    rows, tokens = visual.shape[:2]
    return VLBatch(input_ids=input_ids, text_mask=torch.ones_like(input_ids, dtype=torch.bool),
                   visual=visual, visual_mask=torch.ones(rows, tokens, dtype=torch.bool),
                   image_order=torch.zeros(rows, tokens, dtype=torch.long), labels=labels)
