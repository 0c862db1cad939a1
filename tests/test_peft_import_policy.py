"""One PEFT import policy, two entry points: every case against both.

`modeling.peft_format.import_peft` (folder -> serve weights) and the registry's
`import_peft` (folder -> artifact, which the server loads through `AdapterStore`) accept
the same folders and refuse the others with the same message. What both accept gives
PEFT's own logits: LoRA with rsLoRA, rank / alpha patterns and on some layers only
(`layers_to_transform`, a regex `target_modules`), and seq2seq prompt tuning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from peft_helpers import plain_lm
from safetensors.torch import load_file, save_file

from adapters_registry import InvalidArtifact, Registry
from adapters_registry import import_peft as registry_import
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import build_bank
from modeling.config import preset
from modeling.kernels import RowIndex
from modeling.methods.base import BackboneFacts
from modeling.peft_format import import_peft as modeling_import
from modeling.serve_forms import AdapterSet
from serving.adapter_store import AdapterRejected, AdapterStore

TOL = 1e-5


@pytest.fixture(scope="module")
def backbone() -> VLBackbone:
    return VLBackbone.from_config(preset("tiny"), seed=0)


def lora(**options) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, task_type="SEQ_2_SEQ_LM", **options)


# Folders both entry points import; each names the LoRA layers it must cover.
ACCEPTED = {
    "plain": (lambda: lora(target_modules=["q", "v"]), 12),
    "rslora": (lambda: lora(target_modules=["q", "v"], use_rslora=True), 12),
    "rank and alpha patterns": (lambda: lora(target_modules=["q", "v"],
                                             rank_pattern={"decoder.*v": 2},
                                             alpha_pattern={"encoder.*q": 3}), 12),
    "layers_to_transform": (lambda: lora(target_modules=["q", "v"], layers_to_transform=[1]), 6),
    "regex target_modules": (lambda: lora(target_modules=r".*encoder.*SelfAttention\.(q|o)"),
                             4),
    "seq2seq prompt": (lambda: PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                  num_virtual_tokens=3), 0),
}


def peft_folder(backbone: VLBackbone, config, folder: Path):
    """A PEFT model over the backbone's LM with random (non-zero) weights, saved."""
    torch.manual_seed(5)
    model = get_peft_model(plain_lm(backbone), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "prompt" in name:
                param.normal_(0, 0.3)
    model.save_pretrained(str(folder))
    return model.eval()


def served(backbone: VLBackbone, folder: Path, root: Path) -> AdapterSet:
    """The registry's import, published and loaded the way the server loads a version."""
    registry_import(folder, root / "artifact", backbone.fingerprint(), tasks=("vqa",))
    registry = Registry(str(root / "store"))
    version = registry.publish(root / "artifact", "imported")
    store = AdapterStore(registry, BackboneFacts.of(backbone), backbone.fingerprint(), 1 << 30)
    return store.fetch("imported", version).result(timeout=60).serve["vqa"]


def inputs(backbone: VLBackbone) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, backbone.lm.config.vocab_size, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[mask == 0] = backbone.lm.config.pad_token_id
    dec = torch.randint(3, backbone.lm.config.vocab_size, (3, 4), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}


@torch.no_grad()
def our_logits(backbone: VLBackbone, adapter_set: AdapterSet, lm_inputs: dict) -> torch.Tensor:
    rows = lm_inputs["input_ids"].shape[0]
    batch = VLBatch(input_ids=lm_inputs["input_ids"],
                    text_mask=lm_inputs["attention_mask"].bool(),
                    visual=torch.zeros(rows, 1, backbone.config.feat_dim),
                    visual_mask=torch.zeros(rows, 1, dtype=torch.bool),
                    image_order=torch.zeros(rows, 1, dtype=torch.long))
    like = next(backbone.parameters())
    stacked = build_bank([adapter_set], backbone.frozen_tensors(), backbone.config.d_model, like)
    index = RowIndex.of(torch.zeros(rows, dtype=torch.long))
    hidden, mask = backbone.encode(batch, stacked, index)
    return backbone.decode(hidden, mask, lm_inputs["decoder_input_ids"], bank=stacked,
                           index=index).logits


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_both_entry_points_import_what_peft_computes(backbone, case, tmp_path):
    build, layers = ACCEPTED[case]
    peft_model = peft_folder(backbone, build(), tmp_path / "peft")
    lm_inputs = inputs(backbone)
    with torch.no_grad():
        theirs = peft_model(**lm_inputs).logits
    bare = our_logits(backbone, AdapterSet(), lm_inputs)
    assert (theirs - bare).abs().max() > 1e-3  # the adapter does change the output
    for serve in (modeling_import(tmp_path / "peft", backbone),
                  served(backbone, tmp_path / "peft", tmp_path)):
        assert len(serve.lora) == layers
        assert (our_logits(backbone, serve, lm_inputs) - theirs).abs().max() <= TOL


def _patched(folder: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    if config is not None:
        saved = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**saved, **config}))
    if tensors is not None:
        save_file({**load_file(str(folder / "adapter_model.safetensors")), **tensors},
                  str(folder / "adapter_model.safetensors"))
    return folder


Q0 = "encoder.block.0.layer.0.SelfAttention.q"
# Folders both refuse, and the words the (identical) message must hold.
REFUSED = {
    "DoRA": ({"use_dora": True}, None, "field 'use_dora' = True is not supported"),
    "LoRA bias": ({"bias": "lora_only"}, None, "field 'bias' = 'lora_only'"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, None, "field 'modules_to_save'"),
    "PiSSA init": ({"init_lora_weights": "pissa"}, None, "field 'init_lora_weights'"),
    "unknown option": ({"a_newer_peft_option": {"on": 1}}, None, "'a_newer_peft_option'"),
    "other peft type": ({"peft_type": "IA3"}, None, "'peft_type' = 'IA3'"),
    "rank is not r": ({"r": 8}, None, "lora_A.weight' has shape [4, 64]; expected rank 8"),
    "bad alpha": ({"lora_alpha": "eight"}, None, "'lora_alpha' = 'eight'"),
    "bad pattern": ({"rank_pattern": {"(q": 2}}, None, "'rank_pattern'"),
    "unpaired tensor": (None, {f"base_model.model.{Q0}.lora_A.weight": None}, "missing tensor"),
    "foreign tensor": (None, {"base_model.model.lm_head.weight": torch.zeros(2, 2)},
                       "unexpected tensor 'base_model.model.lm_head.weight'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_both_entry_points_refuse_with_the_same_message(backbone, case, tmp_path):
    config, tensors, words = REFUSED[case]
    folder = tmp_path / "peft"
    peft_folder(backbone, lora(target_modules=["q", "v"]), folder)
    if tensors and None in tensors.values():  # drop a tensor
        kept = {k: v for k, v in load_file(str(folder / "adapter_model.safetensors")).items()
                if k not in tensors}
        save_file(kept, str(folder / "adapter_model.safetensors"))
        tensors = None
    _patched(folder, config, tensors)
    with pytest.raises(ValueError) as ours:
        modeling_import(folder, backbone)
    with pytest.raises(InvalidArtifact) as registry:
        registry_import(folder, tmp_path / "out", backbone.fingerprint())
    assert words in str(ours.value)
    assert str(registry.value) == str(ours.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("config", "words"), [
    ({"task_type": "CAUSAL_LM"}, "'task_type' = 'CAUSAL_LM'"),
    ({"num_transformer_submodules": 3}, "'num_transformer_submodules' = 3"),
    ({"token_dim": 32}, "'prompt_embeddings' has shape [6, 64]; expected [6, 32]"),
])
def test_both_entry_points_refuse_prompts_we_cannot_prepend(backbone, config, words, tmp_path):
    folder = tmp_path / "peft"
    peft_folder(backbone, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3),
                folder)
    _patched(folder, config)
    with pytest.raises(ValueError) as ours:
        modeling_import(folder, backbone)
    with pytest.raises(InvalidArtifact) as registry:
        registry_import(folder, tmp_path / "out", backbone.fingerprint())
    assert words in str(ours.value)
    assert str(registry.value) == str(ours.value)


def test_a_layer_the_backbone_lacks_is_refused_where_the_backbone_is_known(backbone, tmp_path):
    """The registry cannot see the backbone: its import passes and the server's load
    refuses, naming the layer; the modeling import refuses at once."""
    folder = tmp_path / "peft"
    peft_folder(backbone, lora(target_modules=["q"]), folder)
    path = "encoder.block.9.layer.0.SelfAttention.q"
    _patched(folder, tensors={f"base_model.model.{path}.lora_A.weight": torch.zeros(4, 64),
                              f"base_model.model.{path}.lora_B.weight": torch.zeros(64, 4)})
    with pytest.raises(ValueError, match=rf"{path}.*not a Linear layer"):
        modeling_import(folder, backbone)
    with pytest.raises(AdapterRejected, match=rf"lm\.{path}"):
        served(backbone, folder, tmp_path)
