"""Hooks sit only on the modules of sites some bank has used, and compose in one order
whatever bank came first. Each test builds its own backbone: the shared fixture's hooks
depend on which tests ran before."""

from __future__ import annotations

import copy

import torch
from modeling_helpers import random_batch

from modeling import hooks
from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.config import preset
from modeling.kernels import RowIndex
from modeling.serve_forms import AdapterSet, Bottleneck, LowRankDelta


def _hooked(backbone: VLBackbone) -> set[str]:
    """Names of the modules that carry any forward hook or pre-hook."""
    return {name for name, m in backbone.named_modules()
            if m._forward_hooks or m._forward_pre_hooks}


def _run(backbone: VLBackbone, adapter_set: AdapterSet) -> torch.Tensor:
    """Teacher-forced logits of a two-row batch, both rows on `adapter_set`."""
    bank = build_bank([adapter_set], backbone.frozen_tensors(), backbone.config.d_model,
                         torch.zeros(()))
    with torch.no_grad():
        return backbone(random_batch(backbone, [3, 5]), bank, RowIndex.of([0, 0]))


def _lora(backbone: VLBackbone, site: str) -> LowRankDelta:
    out_f, in_f = backbone.frozen_tensors()[f"{site}.weight"].shape
    gen = torch.Generator().manual_seed(1)
    return LowRankDelta(torch.randn(2, in_f, generator=gen), torch.randn(out_f, 2, generator=gen),
                        0.5)


def _bottleneck(d: int) -> Bottleneck:
    gen = torch.Generator().manual_seed(2)
    return Bottleneck(torch.randn(4, d, generator=gen), torch.randn(4, generator=gen),
                      torch.randn(d, 4, generator=gen), torch.randn(d, generator=gen),
                      parallel=False, scale=1.0, activation="relu")


def test_a_bank_hooks_only_the_modules_of_its_sites():
    backbone = VLBackbone.from_config(preset("tiny"), seed=0)
    assert _hooked(backbone) == set()
    site = "lm.encoder.block.0.layer.0.SelfAttention.q"
    _run(backbone, AdapterSet(lora={site: _lora(backbone, site)}))
    assert _hooked(backbone) == {site}
    _run(backbone, AdapterSet(bottleneck={"decoder.1.ffn": _bottleneck(backbone.config.d_model)}))
    ffn = "lm.decoder.block.1.layer.2.DenseReluDense"  # its input, then its last Linear
    assert _hooked(backbone) == {site, ffn, f"{ffn}.wo"}


def test_a_deep_copy_of_a_hooked_backbone_computes_with_its_own_weights():
    """A LoRA site's Linear takes our forward (it may merge the delta into the frozen
    weight); a deep copy (full fine-tuning trains one) must multiply by the copy's own."""
    backbone = VLBackbone.from_config(preset("tiny-bart"), seed=0)
    site = "lm.model.encoder.layers.0.self_attn.q_proj"
    _run(backbone, AdapterSet(lora={site: _lora(backbone, site)}))
    original = backbone.get_submodule(site)
    assert "forward" in vars(original)  # ours, bound to the module
    twin = copy.deepcopy(backbone).get_submodule(site)
    with torch.no_grad():
        twin.weight.mul_(2.0)
        x = torch.randn(2, 3, original.in_features)
        assert torch.equal(twin(x), torch.nn.functional.linear(x, twin.weight, twin.bias))
        assert torch.equal(original(x), torch.nn.functional.linear(x, original.weight,
                                                                   original.bias))


def test_lora_on_fc2_and_the_ffn_bottleneck_compose_alike_whatever_bank_came_first():
    """A position ends at its sublayer's last Linear (here BART's fc2), which may carry
    LoRA too: the bottleneck adds to the LoRA output, also when a bank with only the
    bottleneck came first."""
    site, position = "lm.model.decoder.layers.0.fc2", "decoder.0.ffn"
    logits = []
    for bottleneck_first in (False, True):
        backbone = VLBackbone.from_config(preset("tiny-bart"), seed=0)
        only_bottleneck = AdapterSet(bottleneck={position: _bottleneck(backbone.config.d_model)})
        if bottleneck_first:
            _run(backbone, only_bottleneck)
        both = AdapterSet(lora={site: _lora(backbone, site)},
                            bottleneck=only_bottleneck.bottleneck)
        logits.append(_run(backbone, both))
    assert not torch.equal(logits[0], _run(backbone, only_bottleneck)), \
        "guard: the LoRA must change the logits"
    assert torch.equal(logits[0], logits[1])


def test_rows_whose_slot_lacks_a_site_keep_the_frozen_modules_output_bit_for_bit():
    """A site runs only on the rows whose slot uses it; the other rows keep what the frozen
    module computed, not a recomputation with the frozen tensors (a LayerNorm recomputed
    with per-row affine parameters differs in the last bits)."""
    backbone = VLBackbone.from_config(preset("tiny-bart"), seed=0)
    norm, site = "lm.model.encoder.layers.0.self_attn_layer_norm", "lm.model.encoder.layers.0.fc1"
    frozen = backbone.frozen_tensors()
    adapted = AdapterSet(
        lora={site: _lora(backbone, site)},
        bottleneck={"encoder.0.ffn": _bottleneck(backbone.config.d_model)},
        overrides={f"{norm}.weight": frozen[f"{norm}.weight"] * 2,
                   f"{norm}.bias": frozen[f"{norm}.bias"] + 1})
    bank = build_bank([adapted, AdapterSet()], frozen, backbone.config.d_model,
                         torch.zeros(()))
    batch, paths = random_batch(backbone, [3, 5]), (norm, site, "lm.model.encoder.layers.0.fc2")
    outputs = []
    for weights, index in ((bank, RowIndex.of([0, 1])), (None, None)):
        seen = {}
        handles = [backbone.get_submodule(p).register_forward_hook(
            lambda m, a, out, p=p, seen=seen: seen.setdefault(p, out)) for p in paths]
        with torch.no_grad():
            backbone.encode(batch, weights, index)
        for handle in handles:
            handle.remove()
        outputs.append(seen)
    for path in paths:
        assert not torch.equal(outputs[0][path][0], outputs[1][path][0]), path  # guard
        assert torch.equal(outputs[0][path][1], outputs[1][path][1]), path


def test_a_site_computes_only_the_rows_whose_slot_uses_it(monkeypatch):
    """Mixed serve forms pay each form on its own rows; a batch none of whose rows uses a
    site skips it (here: a uniform LoRA batch over a bank that also holds a bottleneck)."""
    backbone = VLBackbone.from_config(preset("tiny"), seed=0)
    site = "lm.encoder.block.0.layer.0.SelfAttention.q"
    d = backbone.config.d_model
    bank = build_bank([AdapterSet(lora={site: _lora(backbone, site)}),
                          AdapterSet(bottleneck={"encoder.0.ffn": _bottleneck(d)})],
                         backbone.frozen_tensors(), d, torch.zeros(()))
    rows_seen = {"lora": [], "bottleneck": []}
    for kernel, kind in (("gathered_lora", "lora"), ("gathered_bottleneck", "bottleneck")):
        real = getattr(hooks, kernel)
        monkeypatch.setattr(hooks, kernel, lambda x, *args, real=real, kind=kind, **kwargs: (
            rows_seen[kind].append(x.shape[0]), real(x, *args, **kwargs))[1])
    batch = random_batch(backbone, [3, 5, 2, 4])
    with torch.no_grad():
        backbone.encode(batch, bank, RowIndex.of([0, 1, 0, 0]))
        assert rows_seen == {"lora": [3], "bottleneck": [1]}
        backbone.encode(batch, bank, RowIndex.of([0, 0, 0, 0]))
    assert rows_seen == {"lora": [3, 4], "bottleneck": [1]}
