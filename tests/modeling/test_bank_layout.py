"""The bank stores every weight matrix the way the gathered kernels read it: a slot's
`W.T` is contiguous, so a per-row gather copies whole slots (a strided gather is several
times slower, `benchmarks/mixed_adapters.py`); writing a slot in place keeps it so."""

from __future__ import annotations

import torch

from modeling.bank import build_bank, write_slot
from modeling.serve_forms import AdapterSet, Bottleneck, LowRankDelta

D, OUT = 8, 6
FROZEN = {"lin.weight": torch.zeros(OUT, D), "norm.weight": torch.ones(D)}


def _set(seed: int, rank: int = 2, width: int = 3) -> AdapterSet:
    gen = torch.Generator().manual_seed(seed)
    return AdapterSet(
        lora={"lin": LowRankDelta(torch.randn(rank, D, generator=gen),
                                  torch.randn(OUT, rank, generator=gen), 2.0)},
        bottleneck={"encoder.0.ffn": Bottleneck(
            torch.randn(width, D, generator=gen), torch.randn(width, generator=gen),
            torch.randn(D, width, generator=gen), torch.randn(D, generator=gen),
            parallel=False, scale=0.5, activation="relu")},
        overrides={"lin.weight": torch.randn(OUT, D, generator=gen),
                   "norm.weight": torch.randn(D, generator=gen)})


def _matrices(bank) -> dict[str, torch.Tensor]:
    lora, bottleneck = bank.lora["lin"], bank.bottleneck["encoder.0.ffn"]
    return {"lora_a": lora.lora_a, "lora_b": lora.lora_b, "down": bottleneck.down_weight,
            "up": bottleneck.up_weight, "override": bank.overrides["lin.weight"]}


def test_stacked_matrices_keep_their_shape_over_memory_the_kernels_gather_in_one_copy():
    bank = build_bank([_set(0), _set(1)], FROZEN, D, torch.zeros(()))
    before = {name: m.data_ptr() for name, m in _matrices(bank).items()}
    assert tuple(bank.lora["lin"].lora_a.shape) == (2, 2, D)
    assert tuple(bank.overrides["lin.weight"].shape) == (2, OUT, D)
    assert write_slot(bank, 1, _set(2, rank=1, width=2), FROZEN)
    for name, matrix in _matrices(bank).items():
        assert matrix.transpose(1, 2).is_contiguous(), name
        assert matrix.data_ptr() == before[name], f"{name} was reallocated, not written"
    assert bank.overrides["norm.weight"].is_contiguous()


def test_each_site_records_the_slots_whose_set_uses_it_through_slot_writes():
    lora_only = AdapterSet(lora=_set(3).lora)
    bank = build_bank([_set(0), lora_only, AdapterSet()], FROZEN, D, torch.zeros(()))
    lora, bottleneck = bank.lora["lin"], bank.bottleneck["encoder.0.ffn"]
    assert lora.used_by == {0, 1} and bottleneck.used_by == {0}
    assert bank.override_used_by == {"lin": {0}, "norm": {0}}
    assert bank.override_used_by["lin"] is bottleneck.used_by  # equal sets are one object
    assert write_slot(bank, 0, lora_only, FROZEN) and write_slot(bank, 2, _set(4), FROZEN)
    assert lora.used_by == {0, 1, 2} and bottleneck.used_by == {2}
    assert bank.override_used_by == {"lin": {2}, "norm": {2}}
