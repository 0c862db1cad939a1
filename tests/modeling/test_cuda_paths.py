"""The GPU's own code paths against the CPU's and against the equations (skipped without
CUDA; run them on a GPU machine: `pytest tests/modeling/test_cuda_paths.py`).

Some kernels choose their path by device (`modeling.kernels._uncopied_path`: grouped
matmuls and bags on the CPU, per-row gathers and batched matmuls on CUDA), so the CPU
suite leaves the CUDA paths untested. Here a mixed batch of every serve form, its cached
greedy decode and the gathered kernels run on the GPU in float32 and must give what the
CPU gives (the oracle tests prove the CPU's right) and what the equations give.
`VLADAPTER_TEST_DEVICE` names another device to run them on (`cpu` checks the tests
themselves on a machine without a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch
from modeling_helpers import alone, random_batch
from test_mixed_batch import _materialize

from modeling.bank import build_bank
from modeling.families import load_backbone
from modeling.generation import beam_search, greedy
from modeling.kernels import RowIndex, gathered_bottleneck, gathered_lora
from modeling.recipe import MethodEntry
from modeling.serve_forms import AdapterSet

DEVICE = os.environ.get("VLADAPTER_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a GPU (or VLADAPTER_TEST_DEVICE)")
# float32 on both devices (TF32 off, torch's default for matmuls): what differs is the
# order of the sums inside the kernels, a few ulps of values of order 1-10.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
FORMS = [  # one set per serve form, and a row with no adapter (the last slot)
    [MethodEntry("adapter", {"width": 8}),
     MethodEntry("trainable_tensors", {"layer_norms": True, "biases": True})],
    [MethodEntry("lora", {"rank": 4, "targets": ["q", "v", "o"]})],
    [MethodEntry("prompt_tuning", {"length": 3, "hidden_dim": 16})],
    [MethodEntry("prefix_tuning", {"length": 2, "hidden_dim": 16})],
]
SLOTS = [0, 1, 2, 3, 4, 1, 3, 0]


@pytest.fixture
def on_both(backbone, tmp_path):
    """(the session's backbone on the CPU, the same checkpoint loaded again onto the
    device, the bank of `FORMS` plus an empty set on each). Loaded, not deep-copied: a
    copy's hooks would still read the original's adapter context."""
    serve = [*_materialize(backbone, FORMS, seed=0), AdapterSet()]
    backbone.save_pretrained(tmp_path / "backbone")
    there = load_backbone(str(tmp_path / "backbone")).to(DEVICE)
    banks = [build_bank(serve, b.frozen_tensors(), b.config.d_model, next(b.parameters()))
             for b in (backbone, there)]
    return backbone, there, banks


def test_a_mixed_batch_of_every_serve_form_gives_the_cpus_logits(on_both):
    here, there, (bank_here, bank_there) = on_both
    batch = random_batch(here, [5, 3, 6, 2, 4, 7, 1, 5], seed=3)
    with torch.no_grad():
        expected = here(batch, bank_here, RowIndex.of(SLOTS))
        got = there(batch.to(DEVICE), bank_there, RowIndex.of(SLOTS, device=DEVICE))
    assert got.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(got.cpu(), expected, **TOLERANCE)
    assert (expected - here(batch)).abs().amax() > 1e-2  # the adapters act


def test_cached_greedy_decode_on_the_device_is_the_argmax_of_its_own_forward(on_both):
    """The engine's decode loop (rows leaving at eos, prefix keys kept per row) on the
    device: fed its own tokens back, the device's teacher-forced forward picks the same
    token at every step, row by row."""
    _, there, (_, bank) = on_both
    batch = random_batch(there, [5, 3, 6, 2, 4, 7, 1, 5], seed=4, with_labels=False)
    batch = batch.to(DEVICE)
    limit = 5
    tokens = greedy(there, batch, bank, RowIndex.of(SLOTS, device=DEVICE),
                    max_new_tokens=limit)
    for row, slot in enumerate(SLOTS):
        one = batch.select([row])
        one.labels = torch.tensor([tokens[row] + [there.eos_token_id]], device=DEVICE)
        with torch.no_grad():
            logits = there(one, bank, RowIndex.of([slot], device=DEVICE))[0]
        steps = len(tokens[row]) + (len(tokens[row]) < limit)
        assert logits[:steps].argmax(-1).tolist() == one.labels[0, :steps].tolist(), row


def test_beam_search_of_a_mixed_batch_on_the_device_gives_each_row_its_own_beams(on_both):
    """Beams reordered per row (`modeling.decode_rows`) on the device: each row of the
    mixed batch gets the tokens it gets searched alone there, with its own set."""
    _, there, (_, bank) = on_both
    batch = random_batch(there, [5, 3, 6, 2, 4, 7, 1, 5], seed=5, with_labels=False)
    batch = batch.to(DEVICE)
    mixed = beam_search(there, batch, bank, RowIndex.of(SLOTS, device=DEVICE),
                        max_new_tokens=4, num_beams=3)
    for row, slot in enumerate(SLOTS):
        searched = beam_search(there, alone(batch, row), bank,
                               RowIndex.of([slot], device=DEVICE), max_new_tokens=4,
                               num_beams=3)
        assert mixed[row] == searched[0], row


@pytest.mark.parametrize("slots", [[2, 0, 3, 0, 1], [3] * 5], ids=["mixed", "uniform"])
def test_gathered_kernels_on_the_device_follow_the_equations(slots):
    """LoRA y = base + s B A x and the bottleneck y = base + act(z Wd^T + bd) Wu^T + bu,
    row i with its own slot's tensors, against the device's gathered kernels."""
    gen = torch.Generator().manual_seed(0)
    count, rows, seq, d, rank, width = 4, 5, 3, 8, 3, 6

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    x, base = randn(rows, seq, d), randn(rows, seq, d)
    lora_a, lora_b, scale = randn(count, rank, d), randn(count, d, rank), randn(count)
    down_w, down_b, up_w, up_b = randn(count, width, d), randn(count, width), \
        randn(count, d, width), randn(count, d)
    lora_ref = torch.stack([base[i] + scale[j] * x[i] @ lora_a[j].T @ lora_b[j].T
                            for i, j in enumerate(slots)])
    bottleneck_ref = torch.stack([
        base[i] + torch.relu(x[i] @ down_w[j].T + down_b[j]) @ up_w[j].T + up_b[j]
        for i, j in enumerate(slots)])
    index = RowIndex.of(slots, device=DEVICE)
    with torch.no_grad():
        lora = gathered_lora(*(t.to(DEVICE) for t in (x, lora_a, lora_b, scale)), index,
                             base=base.to(DEVICE))
        bottleneck = gathered_bottleneck(
            *(t.to(DEVICE) for t in (x, down_w, down_b, up_w, up_b)), None, "relu", index,
            base=base.to(DEVICE))
    torch.testing.assert_close(lora.cpu(), lora_ref, **TOLERANCE)
    torch.testing.assert_close(bottleneck.cpu(), bottleneck_ref, **TOLERANCE)
