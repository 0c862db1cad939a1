"""Artifacts end to end: train forms -> files -> registry -> the same adapters back.

Crosses packages on purpose: training writes, adapters_registry stores and verifies,
modeling rebuilds; a PEFT-saved LoRA imported by the registry gives PEFT's logits.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from artifact_helpers import load_adapter_model
from transformers import T5ForConditionalGeneration

from adapters_registry import FingerprintMismatch, Registry, import_peft
from adapters_registry.errors import InvalidArtifact
from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.config import preset
from modeling.kernels import RowIndex
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel, MethodEntry
from training.artifact import write_artifact

TASKS = ["vqa", "caption"]
RECIPE = [MethodEntry("adapter", {"reduction_factor": 8}, "half_shared"),
          MethodEntry("prompt_tuning", {"length": 2, "hidden_dim": 8}, "multiple"),
          MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")]


@pytest.fixture(scope="module")
def backbone() -> VLBackbone:
    return VLBackbone.from_config(preset("tiny"), seed=0)


def _trained(backbone: VLBackbone) -> AdapterModel:
    model = AdapterModel(RECIPE, BackboneFacts.of(backbone), TASKS)
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(i)))
    return model


def test_artifact_round_trips_through_the_registry(tmp_path, backbone):
    model = _trained(backbone)
    manifest = write_artifact(tmp_path / "run", model, backbone,
                              {"trainable": model.trainable_count()})
    sizes = sum(f["size"] for f in manifest["files"].values())
    headers = sum(8 + int.from_bytes((tmp_path / "run" / name).read_bytes()[:8], "little")
                  for name in manifest["files"])
    assert sizes == model.trainable_count() * 4 + headers  # fp32 trainable tensors only
    registry = Registry(str(tmp_path / "registry"))
    version = registry.publish(tmp_path / "run", "demo")
    registry.pull(f"demo:{version}", tmp_path / "pulled",
                  expected_fingerprint=backbone.fingerprint())
    loaded = load_adapter_model(tmp_path / "pulled", backbone)
    for task in TASKS:
        for a, b in zip(model.materialize(task).tensors(), loaded.materialize(task).tensors(),
                        strict=True):
            assert torch.equal(a, b)


def test_artifact_from_another_backbone_is_refused_naming_both(tmp_path, backbone):
    write_artifact(tmp_path / "run", _trained(backbone), backbone, {})
    other = VLBackbone.from_config(preset("tiny"), seed=1)
    with pytest.raises(FingerprintMismatch, match=f"trained on backbone {backbone.fingerprint()}"):
        load_adapter_model(tmp_path / "run", other)


@pytest.mark.parametrize("damage", ["tensor_bytes", "duplicate_manifest_key"])
def test_an_altered_artifact_is_refused_before_any_tensor_is_built(tmp_path, backbone, damage):
    write_artifact(tmp_path / "run", _trained(backbone), backbone, {})
    if damage == "tensor_bytes":
        path = tmp_path / "run" / "shared.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF  # same size, other content: only the sha256 can tell
        path.write_bytes(bytes(data))
        expected = "sha256"
    else:
        path = tmp_path / "run" / "manifest.json"
        path.write_text(path.read_text().replace("{", '{"tasks": {}, ', 1))
        expected = "duplicate"
    with pytest.raises(InvalidArtifact, match=expected):
        load_adapter_model(tmp_path / "run", backbone, fingerprint=backbone.fingerprint())


def test_hyperformer_manifest_states_its_layout_and_one_without_it_is_refused(tmp_path,
                                                                           backbone):
    """The manifest names the hypernetwork layout; an artifact written before the layout
    field existed (its config lacks it) holds the earlier layout and is refused in one line
    before its tensors are read, while the current layout loads back exactly."""
    model = AdapterModel([MethodEntry("hyperformer", {"width": 4, "task_embedding_dim": 8,
                                                      "layer_embedding_dim": 8})],
                         BackboneFacts.of(backbone), TASKS)
    manifest = write_artifact(tmp_path / "run", model, backbone, {})
    assert manifest["methods"][0]["config"]["layout"] == "vl-adapter"
    loaded = load_adapter_model(tmp_path / "run", backbone)
    for a, b in zip(model.materialize("vqa").tensors(), loaded.materialize("vqa").tensors(),
                    strict=True):
        assert torch.equal(a, b)
    del manifest["methods"][0]["config"]["layout"]
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="hyperformer layout 'per-position.*retrain") as err:
        load_adapter_model(tmp_path / "run", backbone)
    assert "\n" not in str(err.value)


def test_lora_biases_artifact_from_before_layer_norm_biases_loads_as_trained(tmp_path):
    """An artifact trained when `biases` was LoRA's whole bias set (Linear biases only) lacks
    `layer_norm_biases`: on BART, which has LayerNorm biases, it loads with the tensors it
    holds and no LayerNorm bias is asked for."""
    bart = VLBackbone.from_config(preset("tiny-bart"), seed=0)
    recipe = [MethodEntry("lora", {"rank": 2}),
              MethodEntry("trainable_tensors", {"biases": True}, "single", "tensors")]
    model = AdapterModel(recipe, BackboneFacts.of(bart), TASKS)
    manifest = write_artifact(tmp_path / "run", model, bart, {})
    del manifest["methods"][1]["config"]["layer_norm_biases"]
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_adapter_model(tmp_path / "run", bart)
    names = {name for name, _ in loaded.named_parameters()}
    assert names == {name for name, _ in model.named_parameters()}
    assert not any("layer_norm__bias" in name for name in names)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_peft_lora_imported_by_the_registry_gives_peft_logits(tmp_path, backbone):
    peft = pytest.importorskip("peft")
    plain = T5ForConditionalGeneration(backbone.lm.config)
    plain.load_state_dict(backbone.lm.state_dict())
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"],
                           init_lora_weights=False)
    peft_model = peft.get_peft_model(plain, lora).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "artifact", backbone.fingerprint(), tasks=("vqa",))
    assert os.path.exists(tmp_path / "artifact" / "manifest.json")
    model = load_adapter_model(tmp_path / "artifact", backbone)
    bank = build_bank([model.materialize("vqa")], backbone.frozen_tensors(),
                            backbone.config.d_model, torch.zeros(()))
    ids = torch.randint(4, 500, (2, 6))
    dec = torch.randint(4, 500, (2, 3))
    with torch.no_grad():
        expected = peft_model(input_ids=ids, decoder_input_ids=dec).logits
        with backbone.adapter_context.use(bank, RowIndex.of(torch.zeros(2, dtype=torch.long)),
                                          rows=2):
            ours = backbone.lm(input_ids=ids, decoder_input_ids=dec).logits
    assert (ours - expected).abs().max() <= 1e-5
