"""Tiny backbones of both LM families, built once per session."""

from __future__ import annotations

import pytest

from modeling.backbone import VLBackbone
from modeling.config import preset

FAMILIES = ("tiny", "tiny-bart")


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request) -> VLBackbone:
    return VLBackbone.from_config(preset(request.param), seed=0)
