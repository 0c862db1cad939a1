"""Tiny backbones of both LM families, built once per session; `family_backbone` adds
every other backbone family (BLIP VQA and captioning) for the oracles that hold on all."""

from __future__ import annotations

import pytest
from blip_helpers import blip_folder

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import blip

FAMILIES = ("tiny", "tiny-bart")
EVERY_FAMILY = (*FAMILIES, "blip-vqa", "blip-caption")


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request) -> VLBackbone:
    return VLBackbone.from_config(preset(request.param), seed=0)


@pytest.fixture(scope="session", params=EVERY_FAMILY)
def family_backbone(request, tmp_path_factory) -> VLBackbone:
    if request.param.startswith("blip-"):
        mode = request.param.removeprefix("blip-")
        return blip.load(blip_folder(tmp_path_factory.mktemp("blip"), mode))
    return VLBackbone.from_config(preset(request.param), seed=0)
