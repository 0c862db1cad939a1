"""BLIP folders as backbones: found by `load_backbone`, refused in one line when they are
no vision-language generator, saved and rebuilt without changing a weight."""

from __future__ import annotations

import json

import pytest
import torch
from blip_helpers import blip_folder
from family_helpers import BLIP_SIZES, blip_model
from transformers import BlipConfig, BlipForImageTextRetrieval

from modeling.families import from_config, load_backbone
from modeling.families.blip import BlipBackbone
from modeling.params import report
from modeling.recipe import MethodEntry


@pytest.mark.parametrize("mode", ["vqa", "caption"])
def test_load_backbone_finds_a_blip_folder_and_save_pretrained_round_trips(mode, tmp_path):
    backbone = load_backbone(blip_folder(tmp_path, mode))
    assert isinstance(backbone, BlipBackbone) and backbone.mode == mode
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.save_pretrained(tmp_path / "again")
    again = load_backbone(tmp_path / "again")
    assert again.fingerprint() == backbone.fingerprint()
    rebuilt = from_config(backbone.config, device="meta")
    assert isinstance(rebuilt, BlipBackbone) and rebuilt.mode == mode
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in backbone.state_dict().items()}


def test_a_blip_retrieval_folder_is_refused_in_one_line(tmp_path):
    config = BlipConfig(text_config=BLIP_SIZES["tiny"]["text"],
                        vision_config=BLIP_SIZES["tiny"]["vision"])
    BlipForImageTextRetrieval(config).save_pretrained(tmp_path / "itm")
    with pytest.raises(ValueError, match="BlipForImageTextRetrieval") as err:
        load_backbone(tmp_path / "itm")
    assert "\n" not in str(err.value)


def test_a_blip_folder_with_missing_weights_is_refused_in_one_line(tmp_path):
    folder = blip_folder(tmp_path, "vqa")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match="BLIP weights do not load") as err:
        load_backbone(folder)
    assert "\n" not in str(err.value)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "blip"


def test_parameter_report_counts_blip_without_its_vit(tmp_path):
    """percent = trainable / (text encoder + decoder + trainable); the frozen ViT is not
    counted (as CLIP is not when VL-Adapter's features are precomputed)."""
    backbone = load_backbone(blip_folder(tmp_path, "vqa"))
    text = sum(p.numel() for n, p in backbone.named_parameters() if n.startswith("lm."))
    lora = [MethodEntry("lora", {"rank": 2, "targets": ["q", "v"]})]
    counted = report(backbone.config, lora, ["vqa"])
    # q and v in self- and cross-attention of 2 encoder + 2 decoder layers: 16 Linears,
    # each 2 * (32 + 32) LoRA weights at rank 2 (cross-attention keys read the ViT, width 32).
    assert counted.trainable == 16 * 2 * (32 + 32)
    assert counted.total == text + counted.trainable
    with torch.device("meta"):
        assert report(backbone.config, [MethodEntry("full_finetuning")], ["vqa"]).percent == 100


def test_backbone_info_reads_blips_sizes_from_its_site_table(tmp_path):
    from modeling.families.info import describe

    lm = describe(blip_folder(tmp_path, "caption"))["lm"]
    assert (lm["type"], lm["encoder_layers"], lm["decoder_layers"], lm["heads"]) == \
        ("bert", 0, 2, 4)  # captioning: no text encoder


def test_readme_table_is_the_parameter_report_of_blip_base_sizes():
    """The README's BLIP-base rows are what `report` prints for those sizes (meta device)."""
    from pathlib import Path

    from modeling.presets import method_preset

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = [line.split("|")[1:-1] for line in readme.splitlines()
            if line.startswith(("| VQA |", "| captioning |"))]
    assert len(rows) == 12
    configs = {mode: BlipBackbone(blip_model(mode, "base", device="meta")).config
               for mode in ("vqa", "caption")}
    for model, preset, trainable, total, percent in rows:
        mode = "vqa" if model.strip() == "VQA" else "caption"
        counted = report(configs[mode], method_preset(preset.split("`")[1]), [mode])
        assert (f"{counted.trainable:,}", f"{counted.total:,}", f"{counted.percent:.2f}%") == \
            (trainable.strip(), total.strip(), percent.strip()), preset


def test_tokens_per_image_is_what_blips_tower_outputs(tmp_path):
    """Every BLIP ViT state is a feature (the KServe vision model's FEATURES shape and the
    benchmarks' batches say so): the config and the backbone give the same count."""
    backbone = load_backbone(blip_folder(tmp_path, "vqa"))
    size = backbone.config.vision.image_size
    with torch.no_grad():
        tokens = backbone.encode_images(torch.zeros(1, 3, size, size)).shape[1]
    assert backbone.config.tokens_per_image == backbone.tokens_per_image == tokens == \
        (32 // 8) ** 2 + 1
