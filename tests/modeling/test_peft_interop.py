"""PEFT interoperability: our LoRA / prompt adapters load in `peft` and back, same logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from peft_helpers import plain_lm
from safetensors.torch import load_file, save_file
from torch import nn

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import build_bank
from modeling.config import preset
from modeling.kernels import RowIndex
from modeling.peft_format import export_peft, import_peft
from modeling.serve_forms import AdapterSet, Bottleneck, LowRankDelta

TOL = 1e-5
TARGETS = {"tiny": ["q", "v"], "tiny-bart": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module", params=["tiny", "tiny-bart"])
def name(request: pytest.FixtureRequest) -> str:
    return request.param


_BACKBONES: dict[str, VLBackbone] = {}


def backbone_of(name: str) -> VLBackbone:
    if name not in _BACKBONES:
        _BACKBONES[name] = VLBackbone.from_config(preset(name), seed=0)
    return _BACKBONES[name]


def lm_inputs(backbone: VLBackbone, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = backbone.lm.config.vocab_size
    input_ids = torch.randint(3, vocab, (3, 7), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, 5:] = 0  # right padding
    mask[2, 3:] = 0
    input_ids[mask == 0] = backbone.lm.config.pad_token_id
    return {"input_ids": input_ids, "attention_mask": mask,
            "decoder_input_ids": torch.randint(3, vocab, (3, 4), generator=g)}


def random_lora(backbone: VLBackbone, leaves: list[str], rank: int = 4,
                scale: float = 2.0) -> AdapterSet:
    g = torch.Generator().manual_seed(2)
    lora = {}
    for path, module in backbone.lm.named_modules():
        if isinstance(module, nn.Linear) and path.rsplit(".", 1)[-1] in leaves:
            a = torch.randn(rank, module.in_features, generator=g) * 0.3
            b = torch.randn(module.out_features, rank, generator=g) * 0.3
            lora[f"lm.{path}"] = LowRankDelta(a, b, scale)
    return AdapterSet(lora=lora)


@torch.no_grad()
def our_logits(backbone: VLBackbone, adapter_set: AdapterSet, inputs: dict) -> torch.Tensor:
    like = next(backbone.parameters())
    bank = build_bank([adapter_set], backbone.frozen_tensors(), backbone.config.d_model, like)
    index = RowIndex.of(torch.zeros(inputs["input_ids"].shape[0], dtype=torch.long))
    with backbone.adapter_context.use(bank, index, rows=inputs["input_ids"].shape[0]):
        return backbone.lm(**inputs).logits


def test_exported_lora_loads_in_peft_with_identical_logits(name: str, tmp_path: Path) -> None:
    backbone = backbone_of(name)
    serve = random_lora(backbone, TARGETS[name])
    out = export_peft(serve, backbone, tmp_path / "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == sorted(TARGETS[name])
    peft_model = PeftModel.from_pretrained(plain_lm(backbone), str(out)).eval()
    inputs = lm_inputs(backbone)
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
        bare = backbone.lm(**inputs).logits
    ours = our_logits(backbone, serve, inputs)
    assert (ours - bare).abs().max() > 1e-3  # the adapter does change the output
    assert (ours - theirs).abs().max() <= TOL


def test_peft_saved_lora_imports_into_bank_with_identical_logits(name: str,
                                                                 tmp_path: Path) -> None:
    backbone = backbone_of(name)
    torch.manual_seed(3)
    peft_model = get_peft_model(plain_lm(backbone), LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS[name], task_type="SEQ_2_SEQ_LM"))
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(str(tmp_path / "saved"))
    serve = import_peft(tmp_path / "saved", backbone)
    n_layers = 2 * 2 + 2  # q, v in every self attention (enc+dec) and cross attention
    assert len(serve.lora) == 2 * n_layers
    assert all(d.scale == 2.0 and d.lora_a.shape[0] == 4 for d in serve.lora.values())
    inputs = lm_inputs(backbone)
    with torch.no_grad():
        theirs = peft_model.eval()(**inputs).logits
        bare = backbone.lm(**inputs).logits
    ours = our_logits(backbone, serve, inputs)
    assert (ours - bare).abs().max() > 1e-3
    assert (ours - theirs).abs().max() <= TOL


def test_partial_sites_export_exact_module_paths(tmp_path: Path) -> None:
    backbone = backbone_of("tiny")
    full = random_lora(backbone, ["q"])
    serve = AdapterSet(lora={k: v for k, v in full.lora.items() if ".encoder." in k})
    out = export_peft(serve, backbone, tmp_path)
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(k.removeprefix("lm.") for k in serve.lora)
    peft_model = PeftModel.from_pretrained(plain_lm(backbone), str(out)).eval()
    inputs = lm_inputs(backbone)
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    assert (our_logits(backbone, serve, inputs) - theirs).abs().max() <= TOL


def test_prompt_round_trip_and_peft_saved_prompt(name: str, tmp_path: Path) -> None:
    backbone = backbone_of(name)
    d = backbone.config.d_model
    prompt = torch.randn(5, d, generator=torch.Generator().manual_seed(4))
    out = export_peft(AdapterSet(prompt=prompt), backbone, tmp_path / "ours")
    assert torch.equal(import_peft(out, backbone).prompt, prompt)
    for submodules in (1, 2):
        peft_model = get_peft_model(plain_lm(backbone), PromptTuningConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=6,
            num_transformer_submodules=submodules))
        folder = tmp_path / f"peft{submodules}"
        peft_model.save_pretrained(str(folder))
        serve = import_peft(folder, backbone)
        saved = load_file(str(folder / "adapter_model.safetensors"))["prompt_embeddings"]
        assert serve.prompt.shape == (6, d) and torch.equal(serve.prompt, saved[:6])
    # Same logits as PEFT (here with 2 submodules: it prepends only the first 6 rows).
    inputs = lm_inputs(backbone)
    with torch.no_grad():
        theirs = peft_model.eval()(**inputs).logits
        batch = VLBatch(input_ids=inputs["input_ids"], text_mask=inputs["attention_mask"].bool(),
                        visual=torch.zeros(3, 1, backbone.config.feat_dim),
                        visual_mask=torch.zeros(3, 1, dtype=torch.bool),
                        image_order=torch.zeros(3, 1, dtype=torch.long))
        stacked = build_bank([serve], backbone.frozen_tensors(), d, prompt)
        index = RowIndex.of(torch.zeros(3, dtype=torch.long))
        hidden, mask = backbone.encode(batch, stacked, index)
        ours = backbone.decode(hidden, mask, inputs["decoder_input_ids"], bank=stacked,
                               index=index).logits
    assert (ours - theirs).abs().max() <= TOL


def _lora_folder(tmp_path: Path) -> tuple[VLBackbone, Path]:
    backbone = backbone_of("tiny")
    return backbone, export_peft(random_lora(backbone, ["q"]), backbone, tmp_path / "lora")


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = backbone_of("tiny")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (tmp_path / "adapter_model.bin").write_bytes(b"not even a pickle")

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError, match=r"adapter_model\.bin.*pickle"):
        import_peft(tmp_path, backbone)


def test_lora_that_does_not_fit_the_backbone_layer_is_refused(tmp_path: Path) -> None:
    """Rank and key are fine (the shared PEFT policy accepts it); the width is not."""
    backbone, folder = _lora_folder(tmp_path)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
    tensors[key] = torch.zeros(4, 32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=re.escape(f"{key} has shape (4, 32); expected (4, 64)")):
        import_peft(folder, backbone)


def test_export_refuses_what_peft_cannot_express(tmp_path: Path) -> None:
    backbone = backbone_of("tiny")
    serve = random_lora(backbone, ["q"])
    site = next(iter(serve.lora))
    serve.lora[site] = LowRankDelta(torch.zeros(2, 64), torch.zeros(64, 2), 4.0)
    with pytest.raises(ValueError, match="ranks differ"):
        export_peft(serve, backbone, tmp_path)
    adapter = Bottleneck(torch.zeros(8, 64), torch.zeros(8), torch.zeros(64, 8), torch.zeros(64))
    with pytest.raises(ValueError, match="bottleneck"):
        export_peft(AdapterSet(bottleneck={"encoder.0.ffn": adapter}), backbone, tmp_path)
    visual = AdapterSet(lora={"visual.feat_linear": LowRankDelta(
        torch.zeros(4, 64), torch.zeros(64, 4), 1.0)})
    with pytest.raises(ValueError, match=r"'visual\.feat_linear' is not a Linear layer of the LM"):
        export_peft(visual, backbone, tmp_path)
