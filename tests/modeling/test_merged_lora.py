"""Rows on one adapter, or in long runs by adapter, fold each LoRA delta into the frozen
weight for the call (`kernels.merged_lora`): one product per Linear and run instead of the
frozen product plus two rank-wide ones. The kernel follows the equation; the rule pins
where merging is taken (enough tokens per run, float32, no autograd; runs on CPU in widths
`F.grouped_mm` takes) and where the hooks keep the two products (short or scattered runs,
a row overriding the Linear, rows without LoRA there)."""

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
INDICES = {"uniform": [3] * 5, "runs": [2, 2, 0, 0, 0]}


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


@pytest.mark.parametrize("slots", INDICES.values(), ids=INDICES.keys())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_merged_lora_is_the_frozen_linear_plus_each_rows_b_a_x(slots, bias):
    """x W^T + b + (x A_j^T) B_j^T with row i's slot j, the scale already in B."""
    gen = torch.Generator().manual_seed(7)
    x, weight = _randn(gen, len(slots), 3, D), _randn(gen, OUT, D)
    frozen_bias = _randn(gen, OUT) if bias else None
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, OUT, RANK)
    with torch.no_grad():
        out = merged_lora(x, weight, frozen_bias, lora_a, lora_b, RowIndex.of(slots))
    for i, j in enumerate(slots):
        expected = x[i] @ weight.T + (x[i] @ lora_a[j].T) @ lora_b[j].T
        if bias:
            expected = expected + frozen_bias
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@torch.no_grad()
def test_merging_is_taken_where_a_run_has_enough_float32_tokens_and_no_autograd():
    lora_a, lora_b = torch.randn(SLOTS, RANK, D), torch.randn(SLOTS, OUT, RANK)
    # pays once a run's tokens x (in + out) reach MERGE_RATIO x in x out
    per_run = -(-kernels.MERGE_RATIO * D * OUT // (D + OUT))
    for rows, pays in ((per_run, True), (per_run - 1, False)):  # one slot, one position
        assert merge_pays(torch.randn(rows, 1, D), lora_a, lora_b,
                          RowIndex.of([1] * rows)) is pays
    runs = RowIndex.of([2] * 4 + [0] * 4)  # two runs of 4 rows
    positions = -(-per_run // 4)
    x = torch.randn(len(runs), positions, D)
    assert merge_pays(x, lora_a, lora_b, runs)
    assert not merge_pays(x[:, :positions - 1], lora_a, lora_b, runs)
    # one-row runs would merge a weight per row; widths F.grouped_mm cannot take
    assert not merge_pays(x, lora_a, lora_b, RowIndex.of([2, 0] * 4))
    assert not merge_pays(x, lora_a, torch.randn(SLOTS, OUT + 1, RANK), runs)
    assert merge_pays(x, lora_a, torch.randn(SLOTS, OUT + 1, RANK), RowIndex.of([1] * 8))
    # bf16 would round the delta away; training keeps PEFT's two products
    assert not merge_pays(x.bfloat16(), lora_a.bfloat16(), lora_b.bfloat16(), runs)
    with torch.enable_grad():
        assert not merge_pays(x, lora_a, lora_b, runs)


SITE = "lm.model.encoder.layers.0.self_attn.q_proj"


def _delta(backbone: VLBackbone, seed: int) -> LowRankDelta:
    out_f, in_f = backbone.frozen_tensors()[f"{SITE}.weight"].shape
    gen = torch.Generator().manual_seed(seed)
    return LowRankDelta(_randn(gen, RANK, in_f), _randn(gen, out_f, RANK), 0.5)


@torch.no_grad()
def test_rows_on_one_adapter_or_in_runs_run_lora_merged_and_others_keep_two_products(
        monkeypatch):
    """Through the hooked backbone (merging forced at any size): rows on one LoRA slot,
    or in runs, run it merged, with the logits of the two products; a row without LoRA
    at the site, a slot that also overrides the Linear's bias, scattered rows and
    autograd keep the two products."""
    backbone = VLBackbone.from_config(preset("tiny-bart"), seed=0)
    monkeypatch.setattr(kernels, "MERGE_RATIO", 0)
    calls: list[int | None] = []
    merged_product = hooks.merged_lora
    monkeypatch.setattr(hooks, "merged_lora",
                        lambda *args: calls.append(args[-1].uniform) or merged_product(*args))
    bias = backbone.frozen_tensors()[f"{SITE}.bias"]
    sets = [AdapterSet(),
            AdapterSet(lora={SITE: _delta(backbone, 1)}),
            AdapterSet(lora={SITE: _delta(backbone, 2)}),
            AdapterSet(lora={SITE: _delta(backbone, 3)},
                       overrides={f"{SITE}.bias": bias + 1.0})]
    bank = build_bank(sets, backbone.frozen_tensors(), backbone.config.d_model,
                      torch.zeros(()))
    batch = random_batch(backbone, [3, 5, 4, 6])

    def logits(slots: list[int]) -> torch.Tensor:
        return backbone(batch, bank, RowIndex.of(slots))

    merged = {slots: logits(list(slots)) for slots in ((1, 1, 1, 1), (1, 1, 2, 2))}
    assert calls == [1, None]
    monkeypatch.setattr(kernels, "MERGE_RATIO", float("inf"))
    for slots, result in merged.items():
        torch.testing.assert_close(result, logits(list(slots)), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(kernels, "MERGE_RATIO", 0)
    calls.clear()
    logits([0, 1, 1, 1])  # row 0 has no LoRA there
    logits([1, 2, 1, 2])  # runs of one row (the forward orders rows by form, not by slot)
    logits([3, 3, 3, 3])  # its bias override recomputes the Linear's output
    with torch.enable_grad():
        logits([1, 1, 1, 1])
    assert calls == []
