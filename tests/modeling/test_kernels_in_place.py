"""Kernels that add into a tensor the caller owns (`into_base`) write the result there,
bit for bit what the out-of-place kernels compute, and leave tensors they do not own
alone: a hooked layer then pays no copy of its output per adapter site."""

from __future__ import annotations

import pytest
import torch

from modeling.kernels import RowIndex, gathered_bottleneck, gathered_lora

SLOTS, BATCH, SEQ, D, RANK, WIDTH = 4, 5, 3, 8, 3, 6
INDICES = {"mixed": [2, 0, 3, 0, 1], "uniform": [3] * BATCH}


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


@pytest.mark.parametrize("slots", INDICES.values(), ids=INDICES.keys())
def test_lora_into_base_writes_the_out_of_place_result_into_the_base(slots):
    gen = torch.Generator().manual_seed(0)
    x, base = _randn(gen, BATCH, SEQ, D), _randn(gen, BATCH, SEQ, D)
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, D, RANK)
    index = RowIndex.of(slots)
    expected = gathered_lora(x, lora_a, lora_b, None, index, base=base)
    owned = base.clone()
    result = gathered_lora(x, lora_a, lora_b, None, index, base=owned, into_base=True)
    assert result.data_ptr() == owned.data_ptr()  # written in place, no new tensor
    assert torch.equal(result, expected)
    # Not told it owns the base, the kernel leaves it as it was.
    kept = base.clone()
    gathered_lora(x, lora_a, lora_b, None, index, base=kept)
    assert torch.equal(kept, base)


@pytest.mark.parametrize("slots", INDICES.values(), ids=INDICES.keys())
def test_bottleneck_adds_its_base_without_touching_it_and_equals_base_plus_delta(slots):
    gen = torch.Generator().manual_seed(1)
    z, base = _randn(gen, BATCH, SEQ, D), _randn(gen, BATCH, SEQ, D)
    weights = (_randn(gen, SLOTS, WIDTH, D), _randn(gen, SLOTS, WIDTH),
               _randn(gen, SLOTS, D, WIDTH), _randn(gen, SLOTS, D))
    index = RowIndex.of(slots)
    delta = gathered_bottleneck(z, *weights, None, "relu", index)
    untouched = base.clone()
    result = gathered_bottleneck(z, *weights, None, "relu", index, base=base)
    assert torch.equal(result, base + delta) and torch.equal(base, untouched)
    assert result.data_ptr() != base.data_ptr()
