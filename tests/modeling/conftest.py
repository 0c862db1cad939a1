"""Tiny backbones of every family (T5, BART, Florence-2), built once per session.

`backbone` runs a test on `FAMILIES`; `modeling_helpers.on_every_family` also runs it on
the papers' encoder semantics (`PAPER_FAMILIES`): the oracles are marked with it.
"""

from __future__ import annotations

import pytest
from modeling_helpers import FAMILIES

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import florence2


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request) -> VLBackbone:
    if request.param == "tiny-florence2":
        return florence2.from_config(florence2.sized_config("tiny"), device="cpu",
                                     image_size=32, seed=0)
    return VLBackbone.from_config(preset(request.param), seed=0)
