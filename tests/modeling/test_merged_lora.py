"""A batch on one adapter folds its LoRA delta into the frozen weight for the call
(`kernels.merged_lora`): one product per Linear instead of the frozen product plus two
rank-wide ones. The kernel follows the equation; the rule pins where merging is taken
(one slot, enough tokens, float32, no autograd) and where the hooks keep the two products
(mixed rows, a row overriding the Linear, LoRA dropout)."""

from __future__ import annotations

import pytest
import torch
from modeling_helpers import random_batch

from modeling import hooks, kernels
from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.config import preset
from modeling.kernels import RowIndex, merge_pays, merged_lora
from modeling.serve_forms import AdapterSet, LowRankDelta

SLOTS, D, OUT, RANK = 4, 64, 32, 8
TOLERANCE = dict(rtol=1e-5, atol=1e-4)  # fp32 sums of 64 O(1) terms, in another order


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_merged_lora_is_the_frozen_linear_plus_b_a_x(bias):
    """x W^T + b + (x A^T) B^T with the slot's A and B, the scale already in B."""
    gen = torch.Generator().manual_seed(7)
    x, weight = _randn(gen, 3, 5, D), _randn(gen, OUT, D)
    frozen_bias = _randn(gen, OUT) if bias else None
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, OUT, RANK)
    out = merged_lora(x, weight, frozen_bias, lora_a, lora_b, 2)
    expected = x @ weight.T + (x @ lora_a[2].T) @ lora_b[2].T
    if bias:
        expected = expected + frozen_bias
    torch.testing.assert_close(out, expected, **TOLERANCE)


@torch.no_grad()
def test_merging_is_taken_for_one_slot_with_enough_float32_tokens_and_no_autograd():
    lora_a, lora_b = torch.randn(SLOTS, RANK, D), torch.randn(SLOTS, OUT, RANK)
    # pays once tokens x (in + out) reach MERGE_RATIO x in x out
    tokens = -(-kernels.MERGE_RATIO * D * OUT // (D + OUT))
    one_slot = RowIndex.of([1] * tokens)
    x = torch.randn(tokens, 1, D)
    assert merge_pays(x, lora_a, lora_b, one_slot)
    assert not merge_pays(x[1:], lora_a, lora_b, RowIndex.of([1] * (tokens - 1)))
    assert merge_pays(x.view(1, tokens, D), lora_a, lora_b, RowIndex.of([1]))  # any shape
    assert not merge_pays(x, lora_a, lora_b, RowIndex.of([1] * (tokens - 1) + [2]))
    # bf16 would round the delta away; training keeps PEFT's two products
    assert not merge_pays(x.bfloat16(), lora_a.bfloat16(), lora_b.bfloat16(), one_slot)
    with torch.enable_grad():
        assert not merge_pays(x, lora_a, lora_b, one_slot)


SITE = "lm.model.encoder.layers.0.self_attn.q_proj"


def _delta(backbone: VLBackbone, seed: int) -> LowRankDelta:
    out_f, in_f = backbone.frozen_tensors()[f"{SITE}.weight"].shape
    gen = torch.Generator().manual_seed(seed)
    return LowRankDelta(_randn(gen, RANK, in_f), _randn(gen, out_f, RANK), 0.5)


def _merged_calls(monkeypatch) -> list[int]:
    """The slot of each product the hooks ran merged."""
    calls: list[int] = []
    merged = hooks.merged_lora

    def counted(*args):
        calls.append(args[-1])
        return merged(*args)

    monkeypatch.setattr(hooks, "merged_lora", counted)
    return calls


@torch.no_grad()
def test_a_batch_on_one_adapter_runs_its_lora_merged_and_others_keep_two_products(
        monkeypatch):
    """Through the hooked backbone (merging forced at any size): rows on one LoRA slot run
    it merged, with the logits of the unmerged products; mixed rows, a slot that also
    overrides the Linear's bias, and autograd keep the two products."""
    backbone = VLBackbone.from_config(preset("tiny-bart"), seed=0)
    monkeypatch.setattr(kernels, "MERGE_RATIO", 0)
    calls = _merged_calls(monkeypatch)
    bias = backbone.frozen_tensors()[f"{SITE}.bias"]
    sets = [AdapterSet(lora={SITE: _delta(backbone, 1)}),
            AdapterSet(lora={SITE: _delta(backbone, 2)}),
            AdapterSet(lora={SITE: _delta(backbone, 3)},
                       overrides={f"{SITE}.bias": bias + 1.0})]
    bank = build_bank(sets, backbone.frozen_tensors(), backbone.config.d_model,
                      torch.zeros(()))
    batch = random_batch(backbone, [3, 5, 4])

    def logits(slots: list[int]) -> torch.Tensor:
        return backbone(batch, bank, RowIndex.of(slots))

    merged = logits([1, 1, 1])
    assert calls == [1]
    monkeypatch.setattr(kernels, "MERGE_RATIO", float("inf"))
    torch.testing.assert_close(merged, logits([1, 1, 1]), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(kernels, "MERGE_RATIO", 0)
    calls.clear()
    mixed = logits([0, 1, 1])
    torch.testing.assert_close(mixed[1:], merged[1:], rtol=1e-5, atol=1e-5)
    logits([2, 2, 2])  # its bias override recomputes the Linear's output
    with torch.enable_grad():
        logits([1, 1, 1])
    assert calls == []
