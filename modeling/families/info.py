"""What `train-adapter backbone info` reports about a backbone: family, parts and their
sizes, tokenizer, parameter counts per part, and the fingerprint adapters are bound to."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from modeling.backbone import VLBackbone
from modeling.config import PRESETS, preset
from modeling.families import family_of, load_backbone
from modeling.sites import ATTENTION_SHAPE, block_positions

# Parameter-name prefix of each part of a VLBackbone.
PARTS = {"vision": "vision.", "visual_projection": "visual.", "lm": "lm."}


def _vision(backbone: VLBackbone) -> dict[str, Any]:
    vision = backbone.config.vision
    if vision is None:
        return {"type": "features", "feat_dim": backbone.config.feat_dim}
    if vision.settings is not None:  # Florence-2: DaViT stages + projector
        return {"type": vision.tower, "stages": vision.settings["depths"],
                "widths": vision.settings["embed_dim"], "hidden_size": vision.hidden_size,
                "image_size": vision.image_size, "tokens": backbone.tokens_per_image}
    return {"type": vision.tower, "hidden_size": vision.hidden_size,
            "layers": vision.num_hidden_layers, "heads": vision.num_attention_heads,
            "image_size": vision.image_size, "patch_size": vision.patch_size}


def _lm(backbone: VLBackbone) -> dict[str, Any]:
    """The LM's sizes, read from the family's site tables (`modeling.sites`): layers per
    stack (BLIP captioning has no encoder: 0), attention heads."""
    config, lm_type = backbone.lm.config, backbone.config.lm_type
    layers = Counter(name.split(".")[0] for name in block_positions(lm_type, backbone.lm)
                     if name.endswith(".self_attn"))
    return {"type": lm_type, "d_model": backbone.config.d_model,
            "encoder_layers": layers["encoder"], "decoder_layers": layers["decoder"],
            "heads": ATTENTION_SHAPE[lm_type](config)[0],
            "vocab_size": int(config.vocab_size)}


def parameter_counts(backbone: VLBackbone) -> dict[str, int]:
    """Frozen parameters per part and in total (tied tensors counted once)."""
    counts = {part: 0 for part in PARTS}
    for name, param in backbone.named_parameters():
        part = next(p for p, prefix in PARTS.items() if name.startswith(prefix))
        counts[part] += param.numel()
    return {"total": sum(counts.values()), **counts}


def describe(spec: str | Path) -> dict[str, Any]:
    """The report of a preset (built on the meta device: sizes only, no fingerprint, as
    its weights and tokenizer are made where it is used) or of a backbone folder."""
    name = str(spec)
    if name in PRESETS:
        backbone, family = VLBackbone.from_config(preset(name), device="meta"), "vl"
    else:
        family = family_of(Path(spec)).__name__.rsplit(".", 1)[-1]
        backbone = load_backbone(spec)
    tokenizer = backbone.tokenizer
    vision = backbone.config.vision
    return {
        "backbone": name, "family": family, "preset": backbone.config.preset,
        "vision": _vision(backbone), "lm": _lm(backbone),
        "tokenizer": None if tokenizer is None else
        {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer)},
        "parameters": parameter_counts(backbone),
        "image_size": None if vision is None else vision.image_size,
        "image_grid": backbone.config.image_grid, "feat_dim": backbone.config.feat_dim,
        "fingerprint": None if name in PRESETS else backbone.fingerprint(),
    }


def info_lines(info: dict[str, Any]) -> list[str]:
    """`describe`'s report as the lines `backbone info` prints."""
    vision, lm, tokenizer = info["vision"], info["lm"], info["tokenizer"]
    counts = info["parameters"]
    tokens = f"{info['image_grid']}x{info['image_grid']}"
    if vision["type"] == "features":
        seen = "features"
    elif "stages" in vision:
        seen = (f"{vision['type']} DaViT, depths {vision['stages']}, widths "
                f"{vision['widths']} + projector to {vision['hidden_size']}, "
                f"{vision['image_size']}px images")
        tokens = str(vision["tokens"])
    else:
        seen = (f"{vision['type']} ViT {vision['layers']} layers x {vision['hidden_size']}, "
                f"{vision['heads']} heads, {vision['image_size']}px images, patch "
                f"{vision['patch_size']}")
    return [
        f"backbone     {info['backbone']} (family {info['family']}"
        + (f", preset {info['preset']})" if info["preset"] else ")"),
        f"vision       {seen}; feat_dim {info['feat_dim']}, {tokens} tokens per image",
        f"lm           {lm['type']} d_model {lm['d_model']}, {lm['encoder_layers']}+"
        f"{lm['decoder_layers']} layers, {lm['heads']} heads, vocabulary {lm['vocab_size']}",
        "tokenizer    " + ("none" if tokenizer is None else
                           f"{tokenizer['class']}, {tokenizer['vocab_size']} tokens"),
        f"parameters   {counts['total']:,} frozen: vision {counts['vision']:,}, visual "
        f"projection {counts['visual_projection']:,}, lm {counts['lm']:,}",
        "fingerprint  " + (info["fingerprint"] or
                           "none (a preset's weights and tokenizer are made where it is used)"),
    ]
