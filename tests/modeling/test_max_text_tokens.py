"""`BackboneConfig.text_budget` of one image is exactly the text a backbone can read beside
it: on a tiny BLIP (64 text positions) and a tiny Florence-2 (256 BART positions, 65 of
them taken by the image tokens) a text of that many tokens runs and one token more indexes
past the position table; VL-T5 / VL-BART keep the 512 every batch was always cut at
(`tests/modeling/test_encoder_budget.py`: other visual-token counts)."""

from __future__ import annotations

import pytest
import torch
from blip_helpers import blip_batch, blip_folder
from florence2_helpers import pixel_batch

from benchmarks.florence2_sizes import sized_config
from modeling.config import MAX_TEXT_TOKENS, preset
from modeling.families import blip, florence2


def _blip(tmp_path):
    return blip.load(blip_folder(tmp_path, "vqa"))


def _florence2(tmp_path):
    return florence2.from_config(sized_config("tiny"), device="cpu", image_size=32)


def _blip_forward(backbone, tokens: int) -> None:
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.full((1, tokens), 7)
    backbone(blip_batch(backbone, pixels, ids, labels=torch.tensor([[5, 6]])))


def _florence2_forward(backbone, tokens: int) -> None:
    batch, _ = pixel_batch(backbone, [[5] * tokens])
    batch.labels = torch.tensor([[5, 6]])
    backbone(batch)


@pytest.mark.parametrize(("build", "forward", "expected"), [
    (_blip, _blip_forward, 64), (_florence2, _florence2_forward, 256 - 65)])
@torch.no_grad()
def test_a_text_of_one_images_budget_runs_and_one_more_does_not(tmp_path, build, forward,
                                                                expected):
    backbone = build(tmp_path)
    limit = backbone.config.text_budget(backbone.tokens_per_image)
    assert limit == expected
    forward(backbone, limit)
    with pytest.raises((IndexError, RuntimeError)):
        forward(backbone, limit + 1)


@pytest.mark.parametrize("name", ["tiny", "tiny-vl-bart", "vl-t5-base", "vl-bart-base"])
def test_vl_t5_and_vl_bart_read_the_512_tokens_batches_were_always_cut_at(name):
    assert preset(name).max_text_tokens == MAX_TEXT_TOKENS == 512
