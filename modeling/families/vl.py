"""Our own family, VL-T5 / VL-BART: a CLIP or SigLIP tower (or precomputed features), the
visual projection, and a T5 / FLAN-T5 / BART language model.

A folder of this family is what `VLBackbone.save_pretrained` writes (`vladapter_backbone.json`
and the parts); `build` assembles one from users' Hugging Face folders of the parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    BartForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from modeling.backbone import CONFIG_FILE, VISION_TOWERS, VLBackbone
from modeling.config import BackboneConfig, VisionConfig
from modeling.families.folders import first_line, load_tokenizer, model_type

# Hugging Face model_type of the parts `build` takes -> our name for the part. A CLIPModel
# or SiglipModel folder gives its vision tower (the text tower is left out).
VISION_TYPES = {"clip": "clip", "clip_vision_model": "clip",
                "siglip": "siglip", "siglip_vision_model": "siglip"}
LM_TYPES = {"t5": T5ForConditionalGeneration, "bart": BartForConditionalGeneration}
PART_TYPES = frozenset(VISION_TYPES) | frozenset(LM_TYPES)
# VL-Adapter max-pools CLIP's grid to 6x6 = 36 tokens per image; 64 tokens per video.
DEFAULT_IMAGE_GRID = 6
DEFAULT_MAX_FRAMES = 64
# Keys of a Hugging Face config that say where and how it was saved, not what it builds.
_NOT_ARCHITECTURE = ("architectures", "transformers_version", "_name_or_path", "torch_dtype",
                     "dtype", "model_type", "task_specific_params", "id2label", "label2id",
                     "_commit_hash", "_attn_implementation_autoset")


def detect(folder: Path) -> bool:
    """A folder of ours: it holds `vladapter_backbone.json`."""
    return (Path(folder) / CONFIG_FILE).is_file()


def load(folder: Path) -> VLBackbone:
    """The backbone saved in `folder`; a part missing or unreadable is one ValueError line."""
    try:
        return VLBackbone.from_pretrained(folder)
    except OSError as err:
        raise ValueError(f"{folder}: incomplete backbone folder: {first_line(err)}") from None


def _part_type(folder: Path, role: str, accepted: dict) -> str:
    """The model_type of the Hugging Face folder given for `role` (--vision / --lm),
    refused in one line when it is missing or not a kind `accepted` holds."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (given as {role})")
    kind = model_type(folder)
    if kind is None:
        raise ValueError(f"{folder}: no config.json: not a Hugging Face model folder "
                         f"(given as {role})")
    if kind not in accepted:
        other = "--lm" if role == "--vision" else "--vision"
        hint = f"; a {kind!r} folder goes to {other}" if kind in PART_TYPES else ""
        raise ValueError(f"{folder}: config.json model_type {kind!r} is not a "
                         f"{'vision tower' if role == '--vision' else 'language model'} we "
                         f"take as {role} ({', '.join(accepted)}){hint}")
    return kind


def _load_weights(model_cls: type[PreTrainedModel], folder: Path, part: str
                  ) -> PreTrainedModel:
    """`model_cls.from_pretrained(folder)` in float32, refused when a tensor of the part has
    no weights in the folder (Hugging Face would leave it random and only warn)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a CLIPModel folder's text tower is unused, not news
    try:
        model, info = model_cls.from_pretrained(folder, dtype=torch.float32,
                                                local_files_only=True,
                                                output_loading_info=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: the {part} does not load: {first_line(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ValueError(f"{folder}: no weights for {len(missing)} tensor(s) of the {part} "
                         f"(first: {missing[0]})")
    return model.eval()


def load_vision_tower(folder: Path) -> tuple[PreTrainedModel, VisionConfig]:
    """The ViT tower of a CLIPModel / CLIPVisionModel / SiglipModel / SiglipVisionModel
    folder, and its VisionConfig."""
    tower = VISION_TYPES[_part_type(folder, "--vision", VISION_TYPES)]
    model = _load_weights(VISION_TOWERS[tower][1], folder, f"{tower} vision tower")
    hf = model.config
    return model, VisionConfig(
        hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
        image_size=hf.image_size, patch_size=hf.patch_size, num_channels=hf.num_channels,
        tower=tower)


def lm_kwargs(config: PretrainedConfig) -> dict[str, Any]:
    """The keyword arguments of `T5Config` / `BartConfig` that rebuild `config`'s model."""
    kwargs = {k: v for k, v in config.to_diff_dict().items() if k not in _NOT_ARCHITECTURE}
    return {**kwargs, "d_model": config.d_model, "vocab_size": config.vocab_size}


def load_language_model(folder: Path) -> tuple[PreTrainedModel, str]:
    """The T5 / FLAN-T5 / BART seq2seq model of a folder, and its lm_type."""
    kind = _part_type(folder, "--lm", LM_TYPES)
    return _load_weights(LM_TYPES[kind], folder, f"{kind} language model"), kind


def _image_grid(vision: VisionConfig | None, image_grid: int | None) -> int:
    """The pooled grid side: `image_grid`, or VL-Adapter's 6 (at most the patch grid)."""
    if vision is None:
        return image_grid or DEFAULT_IMAGE_GRID
    side = vision.image_size // vision.patch_size
    if image_grid is not None and image_grid > side:
        raise ValueError(f"--image-grid {image_grid} is larger than the tower's {side}x{side} "
                         "patch grid")
    return image_grid or min(DEFAULT_IMAGE_GRID, side)


def build(lm: Path, vision: Path | None = None, features: int | None = None,
          tokenizer: Path | None = None, seed: int = 0, image_grid: int | None = None,
          max_frames: int = DEFAULT_MAX_FRAMES) -> VLBackbone:
    """A backbone of users' Hugging Face parts: the vision tower of `vision` (or
    precomputed `features`-wide features), the LM of `lm` and the tokenizer of `tokenizer`
    (default: the `lm` folder). Only the visual projection is new: random from `seed`."""
    if (vision is None) == (features is None):
        raise ValueError("give the vision side as exactly one of --vision DIR and "
                         "--features DIM")
    if features is not None and features < 1:
        raise ValueError(f"--features must be a positive width, got {features}")
    language_model, lm_type = load_language_model(Path(lm))
    words: PreTrainedTokenizerBase = load_tokenizer(Path(tokenizer or lm),
                                                    language_model.config.vocab_size)
    tower, vision_config = (None, None) if vision is None else load_vision_tower(Path(vision))
    config = BackboneConfig(
        lm_type=lm_type, lm=lm_kwargs(language_model.config),
        feat_dim=features or vision_config.hidden_size, vision=vision_config,
        image_grid=_image_grid(vision_config, image_grid), max_frames=max_frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the projection is the only part built here
        return VLBackbone(config, lm=language_model, vision=tower, tokenizer=words)


__all__ = ["CONFIG_FILE", "LM_TYPES", "PART_TYPES", "VISION_TYPES", "build", "detect",
           "load", "load_language_model", "load_vision_tower"]
