"""Our own family, VL-T5 / VL-BART: a CLIP or SigLIP tower (or precomputed features), the
visual projection, and a T5 / FLAN-T5 / BART language model.

A folder of this family is what `VLBackbone.save_pretrained` writes (`vladapter_backbone.json`
and the parts); `build` assembles one from users' Hugging Face folders of the parts.
"""

from __future__ import annotations

from pathlib import Path

from modeling.backbone import CONFIG_FILE, VLBackbone
from modeling.families.folders import first_line

# Hugging Face model_type of the parts `build` takes.
VISION_TYPES = {"clip": "clip", "clip_vision_model": "clip",
                "siglip": "siglip", "siglip_vision_model": "siglip"}
LM_TYPES = ("t5", "bart")
PART_TYPES = frozenset(VISION_TYPES) | frozenset(LM_TYPES)


def detect(folder: Path) -> bool:
    """A folder of ours: it holds `vladapter_backbone.json`."""
    return (Path(folder) / CONFIG_FILE).is_file()


def load(folder: Path) -> VLBackbone:
    """The backbone saved in `folder`; a part missing or unreadable is one ValueError line."""
    try:
        return VLBackbone.from_pretrained(folder)
    except OSError as err:
        raise ValueError(f"{folder}: incomplete backbone folder: {first_line(err)}") from None


__all__ = ["CONFIG_FILE", "LM_TYPES", "PART_TYPES", "VISION_TYPES", "detect", "load"]
