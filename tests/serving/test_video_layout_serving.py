"""Serving a backbone whose frames keep a grid and a frame order (`BackboneConfig.frame_grid`
/ `frame_order`): the same tokens and order ids as training, bad frame features refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.inputs import VisualTokens
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer
from serving.limits import ImageInput, InvalidInput, Limits, RequestChecker
from serving.protos import inference_pb2
from serving.vision_cache import VisionCache, visual_tokens

TEMPORAL = replace(preset("tiny"), frame_grid=2, frame_order=True, n_images=8)


def test_frames_through_the_cache_keep_their_grid_and_frame_index():
    backbone = VLBackbone.from_config(TEMPORAL, seed=0)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grids = backbone.encode_images(pixels)
    frames = [ImageInput("fresh", pixels=pixels[0]), ImageInput("other", pixels=pixels[1]),
              ImageInput(None, features=grids[2])]
    [tokens] = visual_tokens(backbone, VisionCache(8), [(frames, True)],
                             torch.device("cpu"), torch.float32)
    expected, valid = backbone.encode_frames(pixels)
    assert torch.allclose(tokens.features, expected[valid], atol=1e-6)
    assert tokens.image_order.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(tokens.image_order,
                       VisualTokens.video(expected[valid], TEMPORAL).image_order)


def _frame_features(tokens: int, feat_dim: int) -> inference_pb2.Image:
    data = np.ones((tokens, feat_dim), dtype="<f4").tobytes()
    return inference_pb2.Image(features=inference_pb2.Features(data=data, tokens=tokens,
                                                               feat_dim=feat_dim))


def test_frame_features_that_are_no_square_grid_are_refused_naming_the_frame():
    tokenizer = build_word_tokenizer(["a"], "t5", 512)
    features = TEMPORAL.with_features(TEMPORAL.feat_dim)  # frames come as features
    checker = RequestChecker(Limits(), tokenizer, None, features)
    video = inference_pb2.Video(frames=[_frame_features(4, 64), _frame_features(3, 64)])
    with pytest.raises(InvalidInput, match="frame 1 has 3 feature tokens.*2x2 grid"):
        checker.visual(TASKS["tvqa"], [], video)
    video = inference_pb2.Video(frames=[_frame_features(4, 64), _frame_features(1, 64)])
    assert len(checker.visual(TASKS["tvqa"], [], video)) == 2
    averaged = RequestChecker(Limits(), tokenizer, None,
                              replace(features, frame_grid=0, frame_order=False))
    video = inference_pb2.Video(frames=[_frame_features(3, 64)])
    assert len(averaged.visual(TASKS["tvqa"], [], video)) == 1  # frames averaged: any count
