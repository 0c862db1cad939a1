"""Video frames with a temporal signal: a small grid per frame and frame-order embeddings
(`BackboneConfig.frame_grid` / `frame_order`), and old backbones keeping the old layout."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from modeling.backbone import CONFIG_FILE, VLBackbone
from modeling.config import BackboneConfig, preset
from modeling.inputs import VisualTokens, make_batch
from modeling.tokenizer import build_word_tokenizer
from modeling.visual import video_tokens

TEMPORAL = replace(preset("tiny"), frame_grid=1, frame_order=True, n_images=8)


def _old_config_dict() -> dict:
    """A config as backbones saved before the video-layout fields existed wrote it."""
    data = preset("tiny").to_dict()
    assert "frame_grid" not in data and "frame_order" not in data
    return data


def test_an_old_config_rebuilds_one_vector_per_frame_and_writes_the_same_file():
    old = _old_config_dict()
    config = BackboneConfig.from_dict(old)
    assert config.frame_grid == 0 and config.frame_order is False
    assert config.to_dict() == old  # same JSON, so the same fingerprint
    model = VLBackbone.from_config(config, seed=0)
    tokens, valid = model.encode_frames(torch.randn(3, 3, 32, 32))
    assert tokens.shape == (config.max_frames, config.feat_dim) and int(valid.sum()) == 3
    assert model.visual.image_order.num_embeddings == 2


def test_a_saved_backbone_without_the_fields_loads_the_old_architecture(tmp_path):
    model = VLBackbone.from_config(preset("tiny"), seed=0)
    model.save_pretrained(tmp_path / "old")
    assert "frame_grid" not in json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    loaded = VLBackbone.from_pretrained(tmp_path / "old")
    assert loaded.config == model.config and loaded.fingerprint() == model.fingerprint()


def test_a_temporal_backbone_saves_and_loads_its_layout(tmp_path):
    model = VLBackbone.from_config(TEMPORAL, seed=0)
    model.save_pretrained(tmp_path / "new")
    loaded = VLBackbone.from_pretrained(tmp_path / "new")
    assert loaded.config.frame_grid == 1 and loaded.config.frame_order
    assert loaded.fingerprint() == model.fingerprint()
    assert loaded.fingerprint() != VLBackbone.from_config(
        replace(TEMPORAL, frame_order=False), seed=0).fingerprint()


def test_frame_grid_keeps_k_by_k_cells_per_frame_frame_major():
    # Two 4x4 frames whose values are their patch index (+100 in the second frame).
    first = torch.arange(16.0).unsqueeze(1).expand(16, 2)
    frames = [first, first + 100]
    tokens, valid = video_tokens(frames, max_frames=3, frame_grid=2)
    # Each 2x2 cell is the max of its quadrant: patches 5, 7, 13, 15.
    assert tokens[:, 0].tolist() == [5, 7, 13, 15, 105, 107, 113, 115] + [0] * 4
    assert valid.tolist() == [True] * 8 + [False] * 4
    pooled, valid = video_tokens(frames + [first + 200], max_frames=2, frame_grid=2)
    assert pooled[:4, 0].tolist() == [55, 57, 63, 65]  # frames 0 and 1, averaged per cell
    assert bool(valid.all())
    one_vector, _ = video_tokens([torch.ones(1, 2)], max_frames=1, frame_grid=2)
    assert one_vector.tolist() == [[1.0, 1.0]] * 4  # a frame sent as one vector fills cells


def test_the_backbone_keeps_a_grid_per_frame():
    config = replace(preset("tiny"), frame_grid=2)  # tiny's image grid is 2x2
    model = VLBackbone.from_config(config, seed=0)
    pixels = torch.randn(3, 3, 32, 32)
    tokens, valid = model.encode_frames(pixels)
    assert tokens.shape == (config.max_frames * 4, config.feat_dim)
    assert int(valid.sum()) == 12
    assert torch.equal(tokens[:12], model.encode_images(pixels).reshape(12, -1))


def test_frame_order_tags_video_tokens_and_tells_identical_frames_apart():
    words = ["a", "b"]
    tokenizer = build_word_tokenizer(words, "t5", 512)
    frames = torch.ones(3, TEMPORAL.feat_dim)  # three identical frames
    video = VisualTokens.video(frames, TEMPORAL)
    assert video.image_order.tolist() == [0, 1, 2]
    assert VisualTokens.video(frames, preset("tiny")).image_order.tolist() == [0, 0, 0]
    gridded = replace(TEMPORAL, frame_grid=2)
    assert VisualTokens.video(torch.ones(8, 64), gridded).image_order.tolist() == \
        [0] * 4 + [1] * 4
    model = VLBackbone.from_config(TEMPORAL, seed=0, tokenizer=tokenizer)
    torch.nn.init.normal_(model.visual.image_order.weight)
    batch = make_batch(tokenizer, ["a"], [video])
    with torch.no_grad():
        projected = model.visual(batch.visual, batch.image_order)[0]
    assert not torch.allclose(projected[0], projected[1])


def test_frame_order_needs_an_order_embedding_per_frame():
    with pytest.raises(ValueError, match="n_images >= max_frames"):
        replace(preset("tiny"), frame_order=True)
    with pytest.raises(ValueError, match="frame_grid"):
        replace(preset("tiny"), frame_grid=-1)


def test_cell_order_tells_the_cells_of_a_frame_apart():
    # Visual tokens carry no text positions: without cell_order a frame's cells are a set,
    # so a shape in the left cell and the same shape in the right cell look alike.
    celled = replace(TEMPORAL, frame_grid=2, cell_order=True, n_images=32)
    assert VisualTokens.video(torch.ones(8, 64), celled).image_order.tolist() == list(range(8))
    assert preset("small").cell_order
    with pytest.raises(ValueError, match="n_images >= max_frames \\* frame_grid"):
        replace(celled, n_images=8)
    with pytest.raises(ValueError, match="cell_order needs frame_order"):
        replace(preset("tiny"), cell_order=True)
    assert "cell_order" not in json.dumps(preset("tiny").to_dict())  # saved ones load as before
