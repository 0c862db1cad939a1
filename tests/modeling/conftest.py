"""Tiny backbones of every family, built once per session.

`backbone` runs a test on `FAMILIES` (T5, BART, Florence-2); `modeling_helpers.on_every_family`
also runs it on the papers' encoder semantics (`PAPER_FAMILIES`); `family_backbone` adds
BLIP (VQA and captioning) for the oracles that hold on every family.
"""

from __future__ import annotations

import pytest
from blip_helpers import blip_folder
from modeling_helpers import BLIP_FAMILIES, FAMILIES

from benchmarks.florence2_sizes import sized_config
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import blip, florence2

EVERY_FAMILY = (*FAMILIES, *BLIP_FAMILIES)


def _tiny(name: str, tmp_path_factory) -> VLBackbone:
    if name == "tiny-florence2":
        return florence2.from_config(sized_config("tiny"), device="cpu",
                                     image_size=32, seed=0)
    if name.startswith("blip-"):
        mode = name.removeprefix("blip-")
        return blip.load(blip_folder(tmp_path_factory.mktemp("blip"), mode))
    return VLBackbone.from_config(preset(name), seed=0)


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request, tmp_path_factory) -> VLBackbone:
    return _tiny(request.param, tmp_path_factory)


@pytest.fixture(scope="session", params=EVERY_FAMILY)
def family_backbone(request, tmp_path_factory) -> VLBackbone:
    return _tiny(request.param, tmp_path_factory)
