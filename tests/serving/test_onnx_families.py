"""The ONNX export of every family's vision tower: onnxruntime's output equals the torch
tower's (`encode_images`, the oracle) for Florence-2 (DaViT + projector) and BLIP (ViT,
every state), with a dynamic batch; `adapter-serve export-onnx` writes it from a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_helpers import blip_model
from transformers import Florence2VisionConfig

from benchmarks.florence2_sizes import sized_config
from modeling.families import blip, florence2
from serving import onnx_export
from serving.vision_backends import OnnxVisionEncoder, export_vision_onnx, make_vision_encoder


def _two_stage_florence2() -> florence2.Florence2Backbone:
    """Two DaViT stages (a strided conv between them, pre-norm), windows of 3 over an 8 x 8
    map (padded windows): more of DaViT's code paths than the one-stage test size."""
    config = sized_config("tiny")
    config.vision_config = Florence2VisionConfig(
        depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
        patch_prenorm=[False, True], embed_dim=[16, 24], num_heads=[2, 3], num_groups=[2, 3],
        window_size=3, projection_dim=32, max_position_embeddings=8,
        max_temporal_embeddings=4, drop_path_rate=0.0)
    return florence2.from_config(config, device="cpu", image_size=32, seed=5)


# name -> a tiny backbone of that family with seeded random weights (Florence-2's
# one-stage test size runs a subset of the two-stage tower's code).
BACKBONES = {
    "florence2-two-stages": _two_stage_florence2,
    "blip-vqa": lambda: blip.BlipBackbone(blip_model("vqa", "tiny", seed=6)),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def exported(request, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    backbone = BACKBONES[request.param]()
    return backbone, export_vision_onnx(backbone, tmp_path_factory.mktemp("onnx") / "v.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_equals_the_torch_tower_of_every_family(exported, batch):
    backbone, path = exported
    size = backbone.config.vision.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    expected = backbone.encode_images(pixels)
    got = make_vision_encoder("onnxruntime", backbone, onnx_path=path).encode(pixels)
    assert got.shape == expected.shape == (batch, backbone.tokens_per_image,
                                           backbone.config.feat_dim)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_export_onnx_writes_a_blip_folders_tower(tmp_path, capsys):
    folder = tmp_path / "blip"
    blip_model("caption", "tiny", seed=7).save_pretrained(folder)
    out = tmp_path / "blip_vision.onnx"
    assert onnx_export.main(["--backbone", str(folder), "--out", str(out)]) == 0
    assert "PIXELS [batch, 3, 32, 32] -> FEATURES [batch, 17, 32]" in capsys.readouterr().out
    assert OnnxVisionEncoder(out).encode(torch.zeros(2, 3, 32, 32)).shape == (2, 17, 32)
