"""The per-row adapter index is checked against the batch and the bank once per forward,
before any compute: a wrong index is a ValueError naming what does not fit, never a
silent broadcast (a short uniform index) or a wrapped-around gather (a negative slot)."""

from __future__ import annotations

import pytest
import torch
from modeling_helpers import random_batch

from modeling.bank import build_bank
from modeling.kernels import RowIndex
from modeling.serve_forms import AdapterSet, LowRankDelta


def _bank(backbone, slots: int):
    site = "lm.lm_head"
    out_f, in_f = backbone.frozen_tensors()[f"{site}.weight"].shape
    sets = [AdapterSet(lora={site: LowRankDelta(torch.ones(2, in_f), torch.ones(out_f, 2),
                                                  1.0)}) for _ in range(slots)]
    return build_bank(sets, backbone.frozen_tensors(), backbone.config.d_model,
                         torch.zeros(()))


class _Calls:
    """Counts forward calls of the visual projection and the LM (did any compute start?)."""

    def __init__(self, backbone):
        self.count = 0
        self.handles = [m.register_forward_pre_hook(self._seen)
                        for m in (backbone.visual, backbone.lm.get_encoder(),
                                  backbone.lm.get_decoder())]

    def _seen(self, module, args):
        self.count += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize(("slots", "message"), [
    ([0], r"index has 1 row\(s\) but the batch has 3"),
    ([0, 1, 0, 1], r"index has 4 row\(s\) but the batch has 3"),
    ([0, 2, 1], r"slot\(s\) \[2\] but the bank holds 2 slot\(s\)"),
    ([0, -1, 1], r"slot\(s\) \[-1\] but the bank holds 2"),
])
def test_an_index_that_does_not_fit_the_batch_or_bank_is_refused_before_any_compute(
        backbone, slots, message):
    batch = random_batch(backbone, [3, 4, 2])
    calls = _Calls(backbone)
    try:
        with pytest.raises(ValueError, match=message):
            backbone(batch, _bank(backbone, 2), RowIndex.of(torch.tensor(slots)))
    finally:
        calls.remove()
    assert calls.count == 0


def test_the_decoder_checks_its_index_against_its_own_rows(backbone):
    """Under beam search the decoder sees more rows than the encoder; it checks its own."""
    batch = random_batch(backbone, [3, 4, 2])
    bank = _bank(backbone, 2)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, bank, RowIndex.of(torch.tensor([0, 1, 0])))
        ids = torch.full((3, 1), backbone.decoder_start_token_id)
        short = RowIndex.of(torch.tensor([0, 1]))
        with pytest.raises(ValueError, match=r"index has 2 row\(s\) but the batch has 3"):
            backbone.decode(hidden, mask, ids, bank=bank, index=short)
        per_beam = RowIndex.of(torch.tensor([0, 1, 0])).repeat_interleave(2)
        logits = backbone.decode(hidden.repeat_interleave(2, 0), mask.repeat_interleave(2, 0),
                                 ids.repeat_interleave(2, 0), bank=bank, index=per_beam).logits
    assert logits.shape[0] == 6


def test_weights_without_an_index_are_refused(backbone):
    with pytest.raises(ValueError, match="without an index"):
        backbone(random_batch(backbone, [3]), _bank(backbone, 1), None)


def test_the_adapter_context_cannot_be_entered_without_the_batch_size(backbone):
    """Every caller states the batch size, so the check above always runs (a short uniform
    index on a direct LM call would otherwise broadcast silently)."""
    with pytest.raises(TypeError, match="rows"):
        with backbone.adapter_context.use(_bank(backbone, 1), RowIndex.of(torch.tensor([0]))):
            pass


def test_an_index_of_host_slot_numbers_is_never_read_back_from_the_device():
    """Serving and decoding build each step's index from Python ints; checking it, a row
    leaving (`select`) and beams (`repeat_interleave`) use the host copy. A meta tensor
    has no data, so any read-back from the device would raise here."""
    index = RowIndex.of([2, 0, 2], device="meta")
    assert index.slots.device.type == "meta" and index.slots.dtype == torch.long
    assert index.host_slots == (2, 0, 2) and index.uniform is None and len(index) == 3
    index.check(3, 3)
    left = index.select([2, 0])
    assert left.host_slots == (2, 2) and left.uniform == 2 and left.slots.device.type == "meta"
    per_beam = index.repeat_interleave(2)
    assert per_beam.host_slots == (2, 2, 0, 0, 2, 2) and tuple(per_beam.slots.shape) == (6,)


def test_an_index_of_ints_holds_the_same_slots_on_the_device():
    index = RowIndex.of([1, 0, 1])
    assert index.slots.tolist() == [1, 0, 1] and index.slots.dtype == torch.long
    assert RowIndex.of(torch.tensor([1, 0, 1])).host_slots == index.host_slots


def test_the_rows_of_a_set_of_slots_are_found_once_per_index():
    index = RowIndex.of([3, 1, 3, 0])
    used_by = frozenset({3, 2})
    subset = index.subset(used_by)
    assert subset.positions.tolist() == [0, 2] and subset.index.host_slots == (3, 3)
    assert subset.index.uniform == 3
    assert index.subset(used_by) is subset
    assert index.subset(frozenset({0, 1, 3})) is None  # every row: no cut
    assert len(index.subset(frozenset({2})).index) == 0


def test_grouping_orders_rows_so_each_disjoint_set_of_slots_is_one_span():
    index = RowIndex.of([0, 1, 2, 3, 0, 1, 2, 3, 4])
    sets = [frozenset({0}), frozenset({1, 3}), frozenset({2})]  # slot 4: no site at all
    order = index.grouping(sets)
    assert sorted(order) == list(range(9))
    grouped = index.select(order)
    for used_by in sets:
        subset = grouped.subset(used_by)
        assert subset.span is not None and subset.rows == tuple(range(*subset.span))
        assert {grouped.host_slots[r] for r in subset.rows} <= used_by
    assert grouped.grouping(sets) is None  # already grouped: nothing to reorder
    # sets consecutive but slots not in runs: reordered for runs unless told not to
    interleaved = RowIndex.of([1, 3, 1, 3])
    assert interleaved.select(interleaved.grouping(sets)).host_slots == (1, 1, 3, 3)
    assert interleaved.grouping(sets, runs=False) is None
    assert RowIndex.of([2, 2, 2]).grouping(sets) is None  # uniform


def test_a_span_of_rows_is_cut_as_a_view_and_scattered_rows_as_a_copy():
    t = torch.arange(8.0).view(4, 2)
    span = RowIndex.of([3, 3, 1, 0]).subset(frozenset({3}))
    assert span.span == (0, 2) and span.of(t).data_ptr() == t.data_ptr()
    scattered = RowIndex.of([3, 1, 3, 0]).subset(frozenset({3}))
    assert scattered.span is None and scattered.rows == (0, 2)
    assert scattered.of(t).tolist() == [[0.0, 1.0], [4.0, 5.0]]
