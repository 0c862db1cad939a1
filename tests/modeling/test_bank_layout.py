"""The bank stores every weight matrix the way the gathered kernels read it: a slot's
`W.T` is contiguous, so a per-row gather copies whole slots (a strided gather is several
times slower, `benchmarks/mixed_adapters.py`); writing a slot in place keeps it so."""

from __future__ import annotations

import torch
from test_kernel_reference import _Attention

from modeling.bank import PrefixBank, build_bank, write_slot
from modeling.hooks import AdapterContext, prefix_attention
from modeling.kernels import RowIndex
from modeling.serve_forms import AdapterSet, Bottleneck, LowRankDelta, PrefixKV

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


HEADS, HEAD_DIM = 2, 4


def _prefix_set(seed: int, length: int) -> AdapterSet:
    gen = torch.Generator().manual_seed(seed)
    return AdapterSet(prefix={"site": PrefixKV(torch.randn(HEADS, length, HEAD_DIM, generator=gen),
                                               torch.randn(HEADS, length, HEAD_DIM,
                                                           generator=gen))})


def _attend(bank, slots: list[int]) -> torch.Tensor:
    """Prefix attention of fixed queries / keys / values [rows, heads, 3, head_dim], row i
    on slot slots[i] of `bank`."""
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(len(slots), HEADS, 3, HEAD_DIM, generator=gen) for _ in range(3))
    ctx = AdapterContext()
    with ctx.use(bank, RowIndex.of(slots), rows=len(slots)):
        return prefix_attention(_Attention(ctx, causal=False), q, k, v, None)[0]


def test_prefix_sites_record_their_slots_as_a_restack_would_through_slot_writes():
    """The rows a prefix site attends with its prefix come from `used_by`: a slot write
    that left it stale would drop a new prefix or keep an evicted one."""
    sets = [_prefix_set(0, 2), AdapterSet(lora=_set(1).lora), AdapterSet()]
    bank = build_bank(sets, FROZEN, D, torch.zeros(()))
    assert bank.prefix["site"].used_by == {0}
    sets[0], sets[2] = AdapterSet(lora=_set(2).lora), _prefix_set(3, 1)
    assert write_slot(bank, 0, sets[0], FROZEN) and write_slot(bank, 2, sets[2], FROZEN)
    fresh = build_bank(sets, FROZEN, D, torch.zeros(()))
    prefix = bank.prefix["site"]
    assert prefix.used_by == fresh.prefix["site"].used_by == {2}
    assert PrefixBank(prefix.key, prefix.value, prefix.length).used_by == {2}  # from lengths
    slots = [2, 0, 1, 2]
    torch.testing.assert_close(_attend(bank, slots), _attend(fresh, slots), rtol=0, atol=1e-6)
