"""Tiny backbones of both LM families, built once per session.

`backbone` runs a test on `FAMILIES`; `modeling_helpers.on_every_family` also runs it on
the papers' encoder semantics (`PAPER_FAMILIES`): the oracles are marked with it.
"""

from __future__ import annotations

import pytest
from modeling_helpers import FAMILIES

from modeling.backbone import VLBackbone
from modeling.config import preset


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request) -> VLBackbone:
    return VLBackbone.from_config(preset(request.param), seed=0)
