"""Vision towers: CLIP (a CLS token, CLIP's preprocessing) and SigLIP (patches only, its
own preprocessing); `VisionConfig.tower` records which, and configs saved before it
existed stay CLIP with unchanged fingerprints."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from PIL import Image
from transformers import CLIPVisionModel, SiglipVisionModel

from modeling.backbone import VLBackbone
from modeling.config import BackboneConfig, VisionConfig, preset
from modeling.inputs import image_processor, images_to_pixels


def test_config_saved_without_tower_is_clip_and_saves_as_it_was():
    saved = json.loads(json.dumps(preset("tiny").to_dict()))
    assert "tower" not in saved["vision"]
    config = BackboneConfig.from_dict(saved)
    assert config.vision.tower == "clip" and config.vision.has_cls
    assert config.to_dict() == saved


def test_siglip_tower_round_trips_through_save_and_load(tmp_path):
    config = replace(preset("tiny"), vision=VisionConfig(tower="siglip"), preset=None)
    saved = BackboneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert saved.vision.tower == "siglip" and not saved.vision.has_cls
    backbone = VLBackbone.from_config(config, seed=1)
    assert isinstance(backbone.vision, SiglipVisionModel)
    backbone.save_pretrained(tmp_path)
    loaded = VLBackbone.from_pretrained(tmp_path)
    assert isinstance(loaded.vision, SiglipVisionModel)
    assert loaded.fingerprint() == backbone.fingerprint()
    assert isinstance(VLBackbone.from_config(preset("tiny")).vision, CLIPVisionModel)


def test_siglip_tower_pools_every_patch_and_clip_drops_its_cls():
    for tower, drop in (("siglip", 0), ("clip", 1)):
        config = replace(preset("tiny"), vision=VisionConfig(tower=tower), image_grid=4)
        backbone = VLBackbone.from_config(config, seed=2)
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        hidden = backbone.vision(pixel_values=pixels).last_hidden_state  # [1, (1 +) 16, 64]
        # grid 4 over a 4x4 patch grid: the pooled tokens are the patches themselves.
        assert torch.equal(backbone.encode_images(pixels), hidden[:, drop:])


def test_each_tower_gets_its_own_image_preprocessing():
    white = Image.new("RGB", (48, 32), (255, 255, 255))
    siglip = images_to_pixels([white], image_processor(32, "siglip"))
    clip = images_to_pixels([white], image_processor(32, "clip"))
    assert siglip.shape == clip.shape == (1, 3, 32, 32)
    assert torch.allclose(siglip, torch.ones_like(siglip))  # (1 - 0.5) / 0.5
    red_mean, red_std = 0.48145466, 0.26862954  # CLIP's red channel
    assert torch.allclose(clip[0, 0], torch.full((32, 32), (1 - red_mean) / red_std))
