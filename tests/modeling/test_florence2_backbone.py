"""A Florence-2 folder as a backbone: frozen tower and projector, every recipe on its BART,
the family in the config and fingerprint, unusable folders refused by name."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from florence2_helpers import IMAGE_SIZE, pixel_batch, tiny_folder
from modeling_helpers import randomize

from benchmarks.florence2_sizes import sized_config
from modeling.backbone import VLBackbone
from modeling.config import BackboneConfig, preset
from modeling.families import florence2, load_backbone
from modeling.families.info import describe, info_lines
from modeling.methods.base import BackboneFacts
from modeling.presets import METHOD_PRESETS
from modeling.recipe import AdapterModel, MethodEntry
from training.adapter_step import adapter_logits, sequence_loss

TASKS = ["vqa", "caption"]
SMALL = {"lora": {"rank": 4}, "prompt_tuning": {"length": 3, "hidden_dim": 16},
         "hyperformer": {"task_embedding_dim": 8, "layer_embedding_dim": 8, "width": 4}}
TEXTS = [[0, 5, 6, 2], [0, 7, 2]]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> florence2.Florence2Backbone:
    return florence2.load(tiny_folder(tmp_path_factory.mktemp("florence2")))


def _labelled(backbone):
    batch, _ = pixel_batch(backbone, TEXTS, seed=1)
    batch.labels = torch.tensor([[9, 10, 2], [11, 2, -100]])
    return batch


@pytest.mark.parametrize("recipe", sorted(METHOD_PRESETS))
def test_every_recipe_builds_and_trains_a_step_with_tower_and_projector_frozen(backbone,
                                                                               recipe):
    entries = [MethodEntry(e.method, {**e.config, **SMALL.get(e.method, {})}, e.sharing, e.id)
               for e in METHOD_PRESETS[recipe]]
    model = AdapterModel(entries, BackboneFacts.of(backbone), TASKS, backbone=backbone)
    randomize(model, seed=2)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    batch = _labelled(backbone)
    if recipe == "full_finetuning":
        copy = model.methods["full_finetuning"].model
        assert not any(p.requires_grad for p in copy.vision.parameters())
        logits = copy(batch)
    else:
        logits = adapter_logits(backbone, model, batch, ["vqa", "caption"])
    sequence_loss(logits, batch.labels).backward()
    torch.optim.AdamW(trained, lr=1e-2).step()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items())
    assert all(p.grad is None for p in backbone.vision.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, trained, strict=True))


def test_encode_images_gives_the_encoder_its_visual_tokens_before_the_text(backbone):
    """The cached features are the encoder's inputs themselves (identity projection), and
    they come first: [image tokens | text]."""
    batch, pixels = pixel_batch(backbone, TEXTS, seed=3)
    features = backbone.encode_images(pixels)
    tokens = features.shape[1]
    embeds, mask, _ = backbone.encoder_inputs(batch, None, None)
    torch.testing.assert_close(embeds[:, :tokens], features, rtol=0, atol=0)
    text = backbone.lm.get_input_embeddings()(batch.input_ids[1, :3])
    torch.testing.assert_close(embeds[1, tokens:tokens + 3], text, rtol=0, atol=0)
    assert mask.sum(1).tolist() == [tokens + 4, tokens + 3]
    assert all(not p.requires_grad for p in backbone.parameters())


def test_the_config_names_the_family_and_round_trips(backbone):
    config = backbone.config
    assert (config.visual, config.visual_position) == ("identity", "before_text")
    assert config.vision.tower == "florence2" and config.vision.image_size == IMAGE_SIZE
    assert config.feat_dim == config.d_model == 32
    assert BackboneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_presets_keep_the_config_they_were_saved_with():
    """The switches are absent at their defaults: earlier backbones keep their fingerprint."""
    saved = preset("tiny").to_dict()
    assert not {"visual", "visual_position"} & saved.keys()
    assert not {"tower", "settings"} & saved["vision"].keys()


def test_fingerprint_covers_the_family_switches(backbone):
    """Same weights, visual tokens after the text: another backbone, another fingerprint."""
    other = florence2.Florence2Backbone(
        dataclasses.replace(backbone.config, visual_position="after_text"),
        lm=backbone.lm, vision=backbone.vision, tokenizer=backbone.tokenizer)
    assert other.fingerprint() != backbone.fingerprint()
    bart = VLBackbone.from_config(preset("tiny-bart"))
    assert bart.fingerprint() != backbone.fingerprint()


def test_load_backbone_takes_a_florence2_folder_with_its_tokenizer(tmp_path, backbone):
    folder = tiny_folder(tmp_path)
    loaded = load_backbone(folder)
    assert isinstance(loaded, florence2.Florence2Backbone)
    assert loaded.fingerprint() == backbone.fingerprint()  # same seed, same folder bytes
    assert loaded.tokenizer("red circle")["input_ids"][-1] == loaded.eos_token_id


def test_backbone_info_describes_the_davit_tower_and_its_token_count(tmp_path, backbone):
    info = describe(tiny_folder(tmp_path))
    assert info["family"] == "florence2"
    assert backbone.tokens_per_image == 65 == backbone.encode_images(
        torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).shape[1]
    assert info_lines(info)[1] == ("vision       florence2 DaViT, depths [1], widths [16] + "
                                   "projector to 32, 32px images; feat_dim 32, 65 tokens "
                                   "per image")
    base = florence2.from_config(sized_config("base"), device="meta", image_size=768)
    assert base.tokens_per_image == 577  # Florence-2's processor: image_seq_length 577


def test_a_folder_that_is_not_florence2_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart"}))
    assert not florence2.detect(tmp_path)
    with pytest.raises(ValueError, match="not a Florence-2 folder"):
        florence2.load(tmp_path)


def test_a_florence2_folder_missing_weights_is_refused_by_name(tmp_path):
    folder = tiny_folder(tmp_path)
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights["model.multi_modal_projector.image_projection.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="image_projection"):
        florence2.load(folder)


def test_a_florence2_folder_without_safetensors_weights_is_refused_in_one_line(tmp_path):
    sized_config("tiny").save_pretrained(tmp_path)  # config.json, no weights
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickled")  # never unpickled
    with pytest.raises(ValueError, match="has no model.safetensors or model.safetensors"
                                         ".index.json: .* safetensors only"):
        florence2.load(tmp_path)
