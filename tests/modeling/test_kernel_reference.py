"""The gathered kernels and prefix attention against a plain per-row loop of the equations.

Each kernel reads stacked weights [slots, ...] through a per-row slot index; the
reference takes row i's own slot j = index[i] and applies the equation to that row alone
(LoRA: s * B A x; bottleneck: s * (act(z Wd^T + bd) Wu^T + bu); prefix attention:
softmax(q [P_k ; K]^T) [P_v ; V]). Mixed, repeated and uniform indices are covered: a
uniform index takes the kernels' dense path, a mixed one the gather.
"""

from __future__ import annotations

import pytest
import torch
from paper_reference import ACTIVATION
from torch import nn

from modeling.bank import AdapterBank, PrefixBank
from modeling.hooks import AdapterContext, prefix_attention
from modeling.kernels import (
    RowIndex,
    gathered_bottleneck,
    gathered_lora,
    gathered_matmul,
    gathered_rows,
)
from modeling.serve_forms import ACTIVATIONS

SLOTS, BATCH, SEQ, D, WIDTH, RANK = 4, 5, 3, 8, 6, 3
INDICES = {"mixed": [2, 0, 3, 0, 1], "uniform": [3] * BATCH, "one_row": [1]}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # fp32 sums of <= 8 O(1) terms


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_gathered_matmul_multiplies_each_row_by_its_slots_weight(rows):
    gen = _gen(1)
    x, weight = _randn(gen, len(rows), SEQ, D), _randn(gen, SLOTS, WIDTH, D)
    out = gathered_matmul(x, weight, RowIndex.of(torch.tensor(rows)))
    for i, j in enumerate(rows):
        torch.testing.assert_close(out[i], x[i] @ weight[j].T, **TOLERANCE)


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_gathered_lora_is_scale_times_b_a_x_per_row(rows):
    gen = _gen(2)
    x = _randn(gen, len(rows), SEQ, D)
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, WIDTH, RANK)
    lora_a[0, 1:] = 0  # slot 0 has rank 1, zero-padded as the bank pads it
    lora_b[0, :, 1:] = 0
    scale = torch.tensor([0.5, 2.0, 0.0, 1.5])
    out = gathered_lora(x, lora_a, lora_b, scale, RowIndex.of(torch.tensor(rows)))
    for i, j in enumerate(rows):
        rank = 1 if j == 0 else RANK
        expected = scale[j] * (x[i] @ lora_a[j, :rank].T) @ lora_b[j, :, :rank].T
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


def _bottleneck_bank(gen):
    return dict(down_weight=_randn(gen, SLOTS, WIDTH, D), down_bias=_randn(gen, SLOTS, WIDTH),
                up_weight=_randn(gen, SLOTS, D, WIDTH), up_bias=_randn(gen, SLOTS, D),
                scale=torch.tensor([1.0, 0.5, 2.0, 1.3]))


def _bottleneck_reference(z, bank, act: str) -> torch.Tensor:
    """One row: s * (act(z Wd^T + bd) Wu^T + bu) with that row's slot tensors."""
    hidden = ACTIVATION[act](z @ bank["down_weight"].T + bank["down_bias"])
    return bank["scale"] * (hidden @ bank["up_weight"].T + bank["up_bias"])


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gathered_bottleneck_applies_one_activation_with_both_biases_per_row(rows, activation):
    gen = _gen(3)
    z, bank = _randn(gen, len(rows), SEQ, D), _bottleneck_bank(gen)
    out = gathered_bottleneck(z, **bank, activations=activation,
                              index=RowIndex.of(torch.tensor(rows)))
    for i, j in enumerate(rows):
        expected = _bottleneck_reference(z[i], {k: v[j] for k, v in bank.items()}, activation)
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_gathered_bottleneck_applies_each_slots_own_activation(rows):
    gen = _gen(4)
    z, bank = _randn(gen, len(rows), SEQ, D), _bottleneck_bank(gen)
    per_slot = ["tanh", "relu", "silu", "gelu"]
    out = gathered_bottleneck(z, **bank, activations=per_slot,
                              index=RowIndex.of(torch.tensor(rows)))
    for i, j in enumerate(rows):
        expected = _bottleneck_reference(z[i], {k: v[j] for k, v in bank.items()}, per_slot[j])
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_gathered_lora_adds_onto_base_with_the_scale_folded_into_b(rows):
    """The hooks' call: the frozen layer's output as `base`, each slot's scale inside B."""
    gen = _gen(7)
    x, base = _randn(gen, len(rows), SEQ, D), _randn(gen, len(rows), SEQ, WIDTH)
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, WIDTH, RANK)
    scale = torch.tensor([0.5, 2.0, 0.0, 1.5])
    out = gathered_lora(x, lora_a, lora_b * scale.view(-1, 1, 1), None,
                        RowIndex.of(torch.tensor(rows)), base=base)
    for i, j in enumerate(rows):
        expected = base[i] + scale[j] * (x[i] @ lora_a[j].T) @ lora_b[j].T
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_gathered_bottleneck_adds_onto_base_with_the_scale_folded_into_the_up_projection(rows):
    gen = _gen(8)
    z, bank = _randn(gen, len(rows), SEQ, D), _bottleneck_bank(gen)
    base = _randn(gen, len(rows), SEQ, D)
    scale = bank["scale"]
    out = gathered_bottleneck(z, bank["down_weight"], bank["down_bias"],
                              bank["up_weight"] * scale.view(-1, 1, 1),
                              bank["up_bias"] * scale.view(-1, 1), None, "relu",
                              RowIndex.of(torch.tensor(rows)), base=base)
    for i, j in enumerate(rows):
        expected = base[i] + _bottleneck_reference(z[i], {k: v[j] for k, v in bank.items()},
                                                   "relu")
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_gathered_rows_gives_each_row_its_slots_table(rows):
    table = _randn(_gen(5), SLOTS, 2, D)
    out = gathered_rows(table, RowIndex.of(torch.tensor(rows)))
    assert out.shape == (len(rows), 2, D)
    for i, j in enumerate(rows):
        assert torch.equal(out[i], table[j])


HEADS, HEAD_DIM, PREFIX = 2, 4, 3


class _Attention(nn.Module):
    """What `prefix_attention` reads of an attention module: its site and causality."""

    def __init__(self, ctx: AdapterContext, causal: bool):
        super().__init__()
        self.vladapter_context, self.vladapter_site, self.is_causal = ctx, "site", causal


def _attention_reference(q, k, v, pk, pv, causal: bool, scale: float) -> torch.Tensor:
    """One row: softmax(q [P_k ; K]^T * scale) [P_v ; V]; every query sees the prefix."""
    scores = q @ k.transpose(-1, -2) * scale  # [heads, n, m]
    if causal:
        n, m = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool).tril(m - n),
                                    float("-inf"))
    scores = torch.cat([q @ pk.transpose(-1, -2) * scale, scores], dim=-1)
    return torch.softmax(scores, -1) @ torch.cat([pv, v], dim=1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rows", INDICES.values(), ids=INDICES.keys())
def test_prefix_attention_prepends_each_rows_own_keys_and_values(rows, causal):
    gen = _gen(6)
    q, k, v = (_randn(gen, len(rows), HEADS, SEQ, HEAD_DIM) for _ in range(3))
    lengths = torch.tensor([3, 0, 1, 2])  # slot 1: no prefix; shorter ones are padded
    keys, values = _randn(gen, SLOTS, HEADS, PREFIX, HEAD_DIM), _randn(gen, SLOTS, HEADS, PREFIX,
                                                                       HEAD_DIM)
    bank = AdapterBank(slots=SLOTS, prefix={"site": PrefixBank(keys, values, lengths)})
    ctx = AdapterContext()
    with ctx.use(bank, RowIndex.of(torch.tensor(rows)), rows=len(rows)):
        out, _ = prefix_attention(_Attention(ctx, causal), q, k, v, None, scaling=0.5)
    for i, j in enumerate(rows):
        n = int(lengths[j])
        expected = _attention_reference(q[i], k[i], v[i], keys[j, :, :n], values[j, :, :n],
                                        causal, 0.5)
        torch.testing.assert_close(out[i], expected.transpose(0, 1), **TOLERANCE)
