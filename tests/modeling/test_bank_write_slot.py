"""Writing one slot of a stacked bank in place (what the server does on a cache miss)
computes exactly what restacking every slot computes, over random method mixes; a set
that does not fit the bank's shapes is refused and leaves the bank unchanged."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modeling_helpers import random_batch
from test_mixed_batch import ORACLE_SETTINGS, _materialize, _stack, adapter_mix

from modeling.bank import write_slot
from modeling.kernels import RowIndex
from modeling.recipe import MethodEntry
from modeling.serve_forms import AdapterSet


def _logits(backbone, bank, slots: int):
    batch = random_batch(backbone, [5] * slots, seed=4)
    with torch.no_grad():
        return backbone(batch, bank, RowIndex.of(torch.arange(slots)))


def _snapshot(bank) -> list[torch.Tensor]:
    out = [t.clone() for lora in bank.lora.values()
           for t in (lora.lora_a, lora.lora_b, lora.scale)]
    out += [t.clone() for b in bank.bottleneck.values()
            for t in (b.down_weight, b.up_weight, b.scale, b.parallel)]
    out += [t.clone() for p in bank.prefix.values() for t in (p.key, p.length)]
    out += [t.clone() for t in bank.overrides.values()]
    if bank.prompt is not None:
        out += [bank.prompt.clone(), bank.prompt_length.clone()]
    return out


@settings(max_examples=10, **ORACLE_SETTINGS)
@given(first=adapter_mix(), second=adapter_mix(), data=st.data())
def test_in_place_slot_writes_compute_what_a_full_restack_computes(backbone, first, second,
                                                                   data):
    current = [*_materialize(backbone, first[0], first[3]), AdapterSet()]
    bank = _stack(backbone, current)
    frozen = backbone.frozen_tensors()
    for weights in _materialize(backbone, second[0], second[3]):
        slot = data.draw(st.integers(0, len(current) - 1))
        before = _snapshot(bank)
        current[slot] = weights
        if not write_slot(bank, slot, weights, frozen):
            after = _snapshot(bank)
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
            bank = _stack(backbone, current)  # what the slot table does when it does not fit
    fresh = _stack(backbone, current)
    assert (_logits(backbone, bank, len(current)) -
            _logits(backbone, fresh, len(current))).abs().max() <= 1e-5


def test_a_fitting_set_is_written_in_place_and_a_new_site_is_refused(backbone):
    big, small, other = _materialize(backbone, [
        [MethodEntry("lora", {"rank": 6, "targets": ["q", "v"]}),
         MethodEntry("adapter", {"width": 12})],
        [MethodEntry("lora", {"rank": 2, "targets": ["q", "v"]}),
         MethodEntry("adapter", {"width": 3})],
        [MethodEntry("prefix_tuning", {"length": 2, "hidden_dim": 8})]], 7)
    bank = _stack(backbone, [big, big])
    frozen = backbone.frozen_tensors()
    # Rank 2 and width 3 fit the rank-6, width-12 stacks; slot 1's old rows must go.
    assert write_slot(bank, 1, small, frozen)
    assert (_logits(backbone, bank, 2) - _logits(backbone, _stack(backbone, [big, small]), 2)
            ).abs().max() <= 1e-5
    assert (_logits(backbone, bank, 2)[1] - _logits(backbone, bank, 2)[0]).abs().max() > 1e-3
    assert not write_slot(bank, 1, other, frozen)  # prefixes: a site the bank lacks
    assert not write_slot(_stack(backbone, [small]), 0, big, frozen)  # rank 6 > 2
