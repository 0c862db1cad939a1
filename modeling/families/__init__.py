"""Backbone families: one `load_backbone` for presets, built folders and family folders.

What a user gives as `--backbone` / `backbone:` is resolved here and nowhere else:

1. a preset name (`modeling.config.PRESETS`): random weights from `seed`;
2. a folder our own family recognises (`vl`: `vladapter_backbone.json`, written by
   `VLBackbone.save_pretrained` and `train-adapter backbone build`);
3. a Hugging Face folder whose `config.json` model_type names a family in `FAMILIES`.

Each family module exposes `detect(folder) -> bool` and `load(folder) -> VLBackbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from modeling.backbone import VLBackbone
from modeling.config import PRESETS, BackboneConfig, preset
from modeling.families import vl
from modeling.families.folders import model_type

# Hugging Face config.json model_type -> the family module that loads such a folder, one
# line per model_type (such as "florence2" -> "modeling.families.florence2"). Imported on
# first use, so a family's extra dependencies cost nothing to the others.
FAMILIES: dict[str, str] = {
    "florence2": "modeling.families.florence2",
    "blip": "modeling.families.blip",
}

# BackboneConfig.lm_type -> the family module whose backbone class builds from such a
# config (`VLBackbone` for T5 / BART).
CONFIG_FAMILIES: dict[str, str] = {"bert": "modeling.families.blip"}

PresetTokenizer = Callable[[BackboneConfig], PreTrainedTokenizerBase]


def from_config(config: BackboneConfig, seed: int = 0, device: str = "cpu",
                tokenizer: PreTrainedTokenizerBase | None = None) -> VLBackbone:
    """Random weights from any family's config (seeded); device "meta" builds without
    memory (the parameter report counts on it)."""
    cls = VLBackbone
    if config.lm_type in CONFIG_FAMILIES:
        cls = import_module(CONFIG_FAMILIES[config.lm_type]).BACKBONE_CLASS
    return cls.from_config(config, seed=seed, device=device, tokenizer=tokenizer)


def family_of(folder: Path):
    """The family module that loads `folder` (ours first, then by config.json model_type);
    a ValueError of one line naming what is missing otherwise."""
    if vl.detect(folder):
        return vl
    kind = model_type(folder)
    if kind is not None and kind in FAMILIES:
        family = import_module(FAMILIES[kind])
        if family.detect(folder):
            return family
        name = FAMILIES[kind].rsplit(".", 1)[-1]
        raise ValueError(f"{folder}: not a backbone folder: config.json model_type {kind!r} "
                         f"is the {name} family's, but the folder lacks that family's files")
    known = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in FAMILIES.values()})) \
        or "none registered"
    if kind is None:
        found = "no config.json"
    elif kind in vl.PART_TYPES:
        raise ValueError(f"{folder}: not a backbone folder: a {kind!r} folder is one part of "
                         f"a backbone; build one with `train-adapter backbone build --vision "
                         f"DIR --lm DIR --out DIR`")
    else:
        found = f"config.json model_type {kind!r} is not a known family ({known})"
    raise ValueError(f"{folder}: not a backbone folder: no {vl.CONFIG_FILE} and {found}")


def load_backbone(spec: str | Path, seed: int = 0,
                  preset_tokenizer: PresetTokenizer | None = None) -> VLBackbone:
    """A preset (random weights from `seed`, the tokenizer `preset_tokenizer(config)`
    gives, if any) or a backbone folder of any family (its own weights and tokenizer)."""
    name = str(spec)
    if name in PRESETS:
        config = preset(name)
        tokenizer = None if preset_tokenizer is None else preset_tokenizer(config)
        return VLBackbone.from_config(config, seed=seed, tokenizer=tokenizer)
    folder = Path(spec)
    if not folder.is_dir():
        raise ValueError(f"unknown backbone preset {name!r} and no such folder; expected a "
                         f"backbone folder or one of: {', '.join(sorted(PRESETS))}")
    return family_of(folder).load(folder)


def backbone_config(spec: str | Path) -> BackboneConfig:
    """The architecture of `spec`: a preset's without building it; a family folder's from
    its config files alone when the family reads them (`config(folder)`, Florence-2: a
    folder holding only config.json is enough), otherwise as loaded."""
    name = str(spec)
    if name in PRESETS:
        return preset(name)
    folder = Path(spec)
    family = family_of(folder) if folder.is_dir() else None
    if family is not None and hasattr(family, "config"):
        return family.config(folder)
    return load_backbone(spec).config


__all__ = ["FAMILIES", "backbone_config", "family_of", "from_config", "load_backbone"]
