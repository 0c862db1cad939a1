"""Rows that come in runs sharing a slot (`RowIndex.grouping` sorts them so) multiply
each run by its slot's weights in one grouped matmul on CPU (`F.grouped_mm`), instead of
copying every row's weights; the results follow the same equations as a per-row loop.

The dispatch rule is pinned here too: which products take the grouped matmul (long
enough runs, float32 / half types, 16-byte strides, no autograd, a sum into the caller's
tensor only where that costs less than the weights' copy) and which keep the batched one.
"""

from __future__ import annotations

import pytest
import torch
from modeling_helpers import random_batch, randomize

from modeling import kernels
from modeling.bank import build_bank
from modeling.kernels import RowIndex, gathered_bottleneck, gathered_lora, gathered_matmul
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel, MethodEntry

SLOTS, D, RANK, WIDTH, SEQ = 4, 64, 8, 16, 3
RUN = 16  # rows per run: 16 x 64 x 8 = RUN_WEIGHTS weights a run saves copying (LoRA's A)
SLOT_OF_RUN = [2, 0, 3]
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _runs_index() -> RowIndex:
    return RowIndex.of([slot for slot in SLOT_OF_RUN for _ in range(RUN)])


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


@pytest.fixture
def grouped_calls(monkeypatch) -> list[int]:
    """How many grouped matmuls ran (each call appends its number of groups)."""
    calls: list[int] = []
    grouped_mm = torch.nn.functional.grouped_mm

    def counted(mat_a, mat_b, **kwargs):
        calls.append(mat_b.shape[0])
        return grouped_mm(mat_a, mat_b, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", counted)
    return calls


def test_an_index_lists_its_runs_of_rows_sharing_a_slot():
    slots, ends = RowIndex.of([3, 3, 1, 1, 1, 3]).runs
    assert slots.tolist() == [3, 1, 3] and ends == (2, 5, 6)
    assert RowIndex.of([]).runs[1] == ()


def test_grouping_sorts_each_sets_rows_by_slot_so_each_slot_is_one_run():
    index = RowIndex.of([0, 1, 2, 0, 1, 2])
    order = index.grouping([frozenset({0, 1, 2})])  # one set: its rows were one span already
    assert index.select(order).host_slots == (0, 0, 1, 1, 2, 2)
    assert index.select(order).grouping([frozenset({0, 1, 2})]) is None


@torch.no_grad()
def test_lora_over_runs_is_b_a_x_per_row_in_one_grouped_matmul_per_product(grouped_calls):
    gen = torch.Generator().manual_seed(0)
    index = _runs_index()
    x = _randn(gen, len(index), SEQ, D)
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, D, RANK)
    scale = torch.tensor([0.5, 2.0, 0.0, 1.5])
    out = gathered_lora(x, lora_a, lora_b, scale, index)
    assert grouped_calls == [len(SLOT_OF_RUN)] * 2  # shrink and expand: one group per run
    for i, j in enumerate(index.host_slots):
        expected = scale[j] * (x[i] @ lora_a[j].T) @ lora_b[j].T
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@torch.no_grad()
@pytest.mark.parametrize("seq", [SEQ, 2 * RANK], ids=["few_positions", "many_positions"])
def test_lora_into_base_over_runs_writes_the_out_of_place_sum_into_the_base(seq, grouped_calls):
    """Few positions per row: the expand is grouped and added into the base in a pass of
    its own; many (more than the rank): the batched matmul fuses that sum. Either way the
    caller's tensor holds, bit for bit, what the out-of-place call returns."""
    gen = torch.Generator().manual_seed(1)
    index = _runs_index()
    x, base = _randn(gen, len(index), seq, D), _randn(gen, len(index), seq, D)
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, D, RANK)
    expected = gathered_lora(x, lora_a, lora_b, None, index, base=base)
    del grouped_calls[:]
    owned = base.clone()
    result = gathered_lora(x, lora_a, lora_b, None, index, base=owned, into_base=True)
    assert result.data_ptr() == owned.data_ptr() and torch.equal(result, expected)
    assert len(grouped_calls) == (2 if seq <= RANK else 1)
    for i, j in enumerate(index.host_slots):
        reference = base[i] + (x[i] @ lora_a[j].T) @ lora_b[j].T
        torch.testing.assert_close(result[i], reference, **TOLERANCE)


@torch.no_grad()
def test_bottleneck_over_runs_adds_each_rows_own_bottleneck_to_the_base(grouped_calls):
    gen = torch.Generator().manual_seed(2)
    index = RowIndex.of([slot for slot in SLOT_OF_RUN for _ in range(2 * RUN)])
    z, base = _randn(gen, len(index), SEQ, D), _randn(gen, len(index), SEQ, D)
    down, down_b = _randn(gen, SLOTS, WIDTH, D), _randn(gen, SLOTS, WIDTH)
    up, up_b = _randn(gen, SLOTS, D, WIDTH), _randn(gen, SLOTS, D)
    scale = torch.tensor([1.0, 0.5, 2.0, 1.3])
    out = gathered_bottleneck(z, down, down_b, up, up_b, scale, "gelu", index, base=base)
    assert grouped_calls == [len(SLOT_OF_RUN)] * 2
    for i, j in enumerate(index.host_slots):
        hidden = torch.nn.functional.gelu(z[i] @ down[j].T + down_b[j])
        expected = base[i] + scale[j] * (hidden @ up[j].T + up_b[j])
        torch.testing.assert_close(out[i], expected, **TOLERANCE)


@torch.no_grad()
def test_a_weight_override_over_runs_adds_each_rows_bias(grouped_calls):
    gen = torch.Generator().manual_seed(3)
    index = RowIndex.of([slot for slot in SLOT_OF_RUN for _ in range(2)])  # 2 x 64 x 64
    x, weight = _randn(gen, len(index), SEQ, D), _randn(gen, SLOTS, D, D)
    bias = _randn(gen, len(index), 1, D)
    out = gathered_matmul(x, weight, index, base=bias)
    assert grouped_calls == [len(SLOT_OF_RUN)]
    for i, j in enumerate(index.host_slots):
        torch.testing.assert_close(out[i], x[i] @ weight[j].T + bias[i], **TOLERANCE)


def _path(x: torch.Tensor, weight_t: torch.Tensor, index: RowIndex,
          into_base: bool = False) -> str | None:
    with torch.no_grad():
        return kernels._uncopied_path(x, weight_t, index, into_base)


def test_the_grouped_matmul_is_taken_only_where_it_computes_and_pays():
    index = _runs_index()
    x, weight_t = torch.randn(len(index), SEQ, D), torch.randn(SLOTS, D, RANK)
    assert _path(x, weight_t, index) == kernels.RUNS
    # one row per run is a loop of matmuls; shorter runs save less than their calls cost
    assert _path(x, weight_t, RowIndex.of(list(range(SLOTS)) * RUN)) is None
    assert _path(x, weight_t, RowIndex.of([s for s in SLOT_OF_RUN for _ in range(RUN // 2)])) \
        is None
    # what F.grouped_mm cannot take: float64, strides off 16 bytes, autograd
    assert _path(x.double(), weight_t.double(), index) is None
    assert _path(x, torch.randn(SLOTS, D, RANK - 1), index) is None
    with torch.enable_grad():
        assert kernels._uncopied_path(x, weight_t, index, False) is None
    # a sum into the caller's tensor over more positions than the product's input width
    wide = torch.randn(len(index), RANK + 1, RANK)
    assert _path(wide, torch.randn(SLOTS, RANK, 4 * D), index) == kernels.RUNS
    assert _path(wide, torch.randn(SLOTS, RANK, 4 * D), index, into_base=True) is None


def test_rows_of_few_positions_read_the_bank_unless_their_runs_are_long():
    weight_t = torch.randn(SLOTS, D, RANK)
    step = torch.randn(len(_runs_index()), 1, D)  # one position per row: a decode step
    assert _path(step, weight_t, _runs_index()) == kernels.BAGS
    scattered = RowIndex.of(list(range(SLOTS)) * RUN)
    assert _path(step, weight_t, scattered) == kernels.BAGS
    assert _path(step.double(), weight_t.double(), scattered) == kernels.BAGS
    long_runs = RowIndex.of([s for s in SLOT_OF_RUN for _ in range(kernels.BAG_RUN_ROWS)])
    assert _path(torch.randn(len(long_runs), 1, D), weight_t, long_runs) == kernels.RUNS
    # a bank that is not one table of weight rows keeps the batched matmul
    assert _path(step, torch.randn(SLOTS, RANK, D).transpose(1, 2), scattered) is None


@torch.no_grad()
@pytest.mark.parametrize("positions", [1, 2])
def test_products_read_from_the_bank_are_each_rows_lora_and_bottleneck(positions):
    gen = torch.Generator().manual_seed(5)
    index = RowIndex.of([2, 0, 3, 0, 1, 1, 3])
    x, base = _randn(gen, len(index), positions, D), _randn(gen, len(index), positions, D)
    lora_a, lora_b = _randn(gen, SLOTS, RANK, D), _randn(gen, SLOTS, D, RANK)
    assert _path(x, lora_a.transpose(1, 2).contiguous(), index) == kernels.BAGS
    expected = gathered_lora(x, lora_a, lora_b, None, index, base=base)
    owned = base.clone()
    lora = gathered_lora(x, lora_a, lora_b, None, index, base=owned, into_base=True)
    assert lora.data_ptr() == owned.data_ptr() and torch.equal(lora, expected)
    down, down_b = _randn(gen, SLOTS, WIDTH, D), _randn(gen, SLOTS, WIDTH)
    up, up_b = _randn(gen, SLOTS, D, WIDTH), _randn(gen, SLOTS, D)
    bottleneck = gathered_bottleneck(x, down, down_b, up, up_b, None, "relu", index, base=base)
    for i, j in enumerate(index.host_slots):
        torch.testing.assert_close(lora[i], base[i] + (x[i] @ lora_a[j].T) @ lora_b[j].T,
                                   **TOLERANCE)
        hidden = torch.relu(x[i] @ down[j].T + down_b[j])
        torch.testing.assert_close(bottleneck[i], base[i] + hidden @ up[j].T + up_b[j],
                                   **TOLERANCE)


@torch.no_grad()
def test_a_backbone_batch_in_runs_of_one_adapter_gives_each_run_what_it_gives_alone(
        backbone, grouped_calls):
    """Through a whole backbone: rows in runs (as the engine admits them) take grouped
    matmuls, and each run's logits equal the same rows run alone on their adapter."""
    facts = BackboneFacts.of(backbone)
    serve = []
    for seed in range(2):
        model = AdapterModel([MethodEntry("lora", {"rank": 8}),
                              MethodEntry("adapter", {"width": 16})], facts, ["task"])
        randomize(model, seed)
        serve.append(model.materialize("task"))
    bank = build_bank(serve, backbone.frozen_tensors(), backbone.config.d_model,
                      torch.zeros(()))
    run = -(-kernels.RUN_WEIGHTS // (backbone.config.d_model * 8))  # rows a LoRA run needs
    slots = [row // run for row in range(2 * run)]
    batch = random_batch(backbone, [5] * len(slots), seed=4)
    mixed = backbone(batch, bank, RowIndex.of(slots))
    assert grouped_calls  # the runs took the grouped matmul
    for slot in (0, 1):
        rows = [row for row, s in enumerate(slots) if s == slot]
        alone = backbone(batch.select(rows), bank, RowIndex.of([slot] * len(rows)))
        assert (mixed[rows] - alone).abs().max() <= 1e-5
