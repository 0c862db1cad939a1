"""The encoder's position budget per family (`BackboneConfig.text_budget`): exactly the text
an example with its visual tokens can be read with. Florence-2 and plain BART give every
encoder token a learned position (image tokens are rows of the same sequence), so visual
tokens take from the text's room; VL-BART adds positions to text tokens only, BLIP's text
encoder cross-attends the image, and T5's positions are relative: there only text counts.
A task whose largest input leaves no room for text is refused with its arithmetic
(`check_task_fits`; Florence-2-base NLVR2: 2 x 577 image tokens against 1,024 positions)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from family_helpers import blip_model
from modeling_helpers import random_batch

from benchmarks.florence2_sizes import sized_config
from modeling.backbone import VLBackbone
from modeling.config import MAX_TEXT_TOKENS, TaskDoesNotFit, preset
from modeling.families import blip, florence2
from modeling.inputs import VisualTokens, make_batch
from modeling.tasks import TASKS, VisualInput
from modeling.tokenizer import build_word_tokenizer

POSITIONS = 24  # the short BART position tables below


def _short_bart(name: str) -> VLBackbone:
    """Preset `name` (a BART) with a POSITIONS-long position table."""
    config = preset(name)
    return VLBackbone.from_config(
        replace(config, lm={**config.lm, "max_position_embeddings": POSITIONS}), seed=0)


def _runs(backbone: VLBackbone, text: int, visual: int) -> None:
    with torch.no_grad():
        backbone(random_batch(backbone, [text], visual_tokens=visual))


@pytest.mark.parametrize(("name", "visual", "budget"), [
    ("tiny-bart", 10, POSITIONS - 10),  # one sequence: visual tokens take positions
    ("tiny-vl-bart", 3 * POSITIONS, POSITIONS),  # VL-BART: positions on text tokens only
])
def test_a_text_of_the_budget_runs_beside_its_visual_tokens_and_one_more_does_not(
        name, visual, budget):
    backbone = _short_bart(name)
    assert backbone.config.text_budget(visual) == budget
    _runs(backbone, budget, visual)
    with pytest.raises((IndexError, RuntimeError)):
        _runs(backbone, budget + 1, visual)


def test_florence2_image_tokens_take_positions_from_the_text():
    """Tiny Florence-2: 256 positions, 65 tokens per image; two images leave 126."""
    backbone = florence2.from_config(sized_config("tiny"), device="cpu", image_size=32)
    pair = 2 * backbone.tokens_per_image
    assert backbone.config.text_budget(pair) == 256 - 130
    _runs(backbone, 256 - 130, pair)
    with pytest.raises((IndexError, RuntimeError)):
        _runs(backbone, 256 - 130 + 1, pair)


def test_blip_and_t5_budgets_do_not_count_visual_tokens():
    blip_config = blip.backbone_config(blip_model("vqa", "tiny", device="meta").config,
                                       "BlipForQuestionAnswering")
    assert blip_config.text_budget(10_000) == blip_config.text_budget() == 64
    assert blip_config.text_budget(10_000, prompt_vectors=8) == 64 - 8  # before the question
    for name in ("tiny", "tiny-vl-t5", "vl-t5-base"):
        assert preset(name).text_budget(10_000, prompt_vectors=100) == MAX_TEXT_TOKENS


def test_prompt_vectors_take_positions_where_visual_tokens_do():
    assert preset("tiny-bart").text_budget(4, prompt_vectors=6) == 512  # 1024 - 10 > 512
    short = _short_bart("tiny-bart").config
    assert short.text_budget(4, prompt_vectors=6) == POSITIONS - 10
    assert _short_bart("tiny-vl-bart").config.text_budget(4, prompt_vectors=6) == POSITIONS


def test_florence2_base_cannot_run_nlvr2_and_says_why():
    config = florence2.backbone_config(sized_config("base"), florence2.DEFAULT_IMAGE_SIZE)
    assert config.task_visual_tokens(TASKS["nlvr2"]) == 2 * 577
    with pytest.raises(TaskDoesNotFit) as excinfo:
        config.check_task_fits(TASKS["nlvr2"])
    message = str(excinfo.value)
    assert "task 'nlvr2'" in message and "2 image(s) x 577 = 1154 visual tokens" in message
    assert "1024 encoder positions" in message
    for name, task in TASKS.items():
        if name != "nlvr2":
            config.check_task_fits(task)  # one image (577) or 64 one-token frames fit
    assert config.text_budget(577) == 1024 - 577


@pytest.mark.parametrize("name", ["tiny", "tiny-vl-t5", "tiny-vl-bart", "vl-t5-base",
                                  "vl-bart-base"])
def test_vl_t5_and_vl_bart_run_every_task(name):
    config = preset(name)
    for task in TASKS.values():
        config.check_task_fits(task)


def test_prompt_vectors_can_make_a_task_unfit():
    config = _short_bart("tiny-bart").config  # 24 positions, 4 tokens per image
    config.check_task_fits(TASKS["nlvr2"], prompt_vectors=14)  # 8 + 14 leave 2
    with pytest.raises(TaskDoesNotFit, match=r"8 visual tokens \+ 15 prompt vectors leave 1"):
        config.check_task_fits(TASKS["nlvr2"], prompt_vectors=15)


def test_video_tokens_are_the_pooled_frames_cells():
    config = preset("small")  # frame_grid 2 (4 cells a frame), max_frames 8
    assert config.visual_tokens(VisualInput.VIDEO_FRAMES, [16] * 3) == 3 * 4
    assert config.visual_tokens(VisualInput.VIDEO_FRAMES, [16] * 30) == 8 * 4
    assert config.visual_tokens(VisualInput.TWO_IMAGES, [16, 5]) == 21
    assert config.task_visual_tokens(TASKS["tvc"]) == 8 * 4
    assert config.task_visual_tokens(TASKS["nlvr2"]) == 2 * config.tokens_per_image


def test_make_batch_cuts_each_text_at_what_its_own_visual_tokens_leave():
    backbone = _short_bart("tiny-bart")
    tokenizer = build_word_tokenizer(["w"], "bart", backbone.lm.config.vocab_size)
    visuals = [VisualTokens.concat([torch.randn(count, backbone.config.feat_dim)])
               for count in (4, 10)]
    batch = make_batch(tokenizer, ["w " * 50] * 2, visuals, targets=["w", "w"],
                       text_budget=backbone.config.text_budget)
    assert batch.text_mask.sum(1).tolist() == [POSITIONS - 4, POSITIONS - 10]
    assert batch.input_ids[1, POSITIONS - 11].item() == tokenizer.eos_token_id  # cut, ended
    with torch.no_grad():
        assert backbone(batch).isfinite().all()


def test_make_batch_refuses_a_row_with_no_room_for_text():
    backbone = _short_bart("tiny-bart")
    tokenizer = build_word_tokenizer(["w"], "bart", backbone.lm.config.vocab_size)
    visuals = [VisualTokens.concat([torch.randn(POSITIONS - 1, backbone.config.feat_dim)])]
    with pytest.raises(ValueError, match="leave 1 text tokens"):
        make_batch(tokenizer, ["w"], visuals, text_budget=backbone.config.text_budget)
