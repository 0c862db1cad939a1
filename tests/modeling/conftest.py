"""Tiny backbones of every family (T5, BART, Florence-2), built once per session."""

from __future__ import annotations

import pytest

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import florence2

FAMILIES = ("tiny", "tiny-bart", "tiny-florence2")


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request) -> VLBackbone:
    if request.param == "tiny-florence2":
        return florence2.from_config(florence2.sized_config("tiny"), device="cpu",
                                     image_size=32, seed=0)
    return VLBackbone.from_config(preset(request.param), seed=0)
