"""The decode cache keeps each prefix row's widened cross-attention keys
(`modeling.decode_rows.DecodeRows.widened`): they are built once, at a row's first step,
carried through rows joining, leaving, reordering and repeating (beams), and every step
then computes exactly what widening them again would."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from modeling_helpers import random_batch
from test_mixed_batch import _materialize, _stack

from modeling import decode_rows, hooks
from modeling.kernels import RowIndex
from modeling.recipe import MethodEntry
from modeling.serve_forms import AdapterSet

SETS = [
    [MethodEntry("prefix_tuning", {"length": 3, "hidden_dim": 16})],
    [MethodEntry("lora", {"rank": 4, "targets": ["q", "v"]})],
    [MethodEntry("prefix_tuning", {"length": 5, "hidden_dim": 16}),
     MethodEntry("adapter", {"width": 8})],
]
SLOTS = [0, 1, 2, 3, 0]  # slot 3: no adapter at all
LENGTHS = [3, 5, 2, 6, 4]


def _decode(backbone, bank, calls: list[tuple[str, str]]) -> tuple[list[torch.Tensor], dict]:
    """Rows 0-1 join, step twice; rows 2-4 join; rows are reordered and repeated (a beam
    continued twice), one leaves; three more steps. Returns each pass's logits and the
    final cache's widened keys; `calls` gets (phase, site) per prefix widening."""
    batch = random_batch(backbone, LENGTHS, seed=5, with_labels=False)
    hidden, mask = backbone.encode(batch, bank, RowIndex.of(SLOTS))
    phase = ["start"]
    original = hooks._with_prefix

    def counted(module, *args, **kwargs):
        calls.append((phase[0], module.vladapter_site))
        return original(module, *args, **kwargs)

    outputs, running = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hooks, "_with_prefix", counted)
        state, logits = decode_rows.start(backbone, hidden[:2], mask[:2], bank,
                                          RowIndex.of(SLOTS[:2]))
        outputs.append(logits)
        running = [0, 1]
        for step in range(6):
            if step == 2:
                phase[0] = "start"
                new, logits = decode_rows.start(backbone, hidden[2:], mask[2:], bank,
                                                RowIndex.of(SLOTS[2:]))
                outputs.append(logits)
                state, running = decode_rows.concat(state, new), running + [2, 3, 4]
            if step == 3:
                keep = [2, 0, 0, 4, 3]  # row 1 leaves, row 0 continues twice
                state, running = state.select(keep), [running[r] for r in keep]
            phase[0] = "step"
            ids = torch.full((len(running),), 7, dtype=torch.long)
            outputs.append(state.step(backbone, ids, bank,
                                      RowIndex.of([SLOTS[r] for r in running])))
    return outputs, {"running": running, "widened": state.widened}


@contextmanager
def _no_store(self, store):
    yield


@torch.no_grad()
def test_widened_cross_attention_keys_are_built_once_per_join_and_equal_widening_every_step(
        family_backbone):
    backbone = family_backbone
    bank = _stack(backbone, [*_materialize(backbone, SETS, seed=11), AdapterSet()])
    kept_calls, widened_calls = [], []
    kept, final = _decode(backbone, bank, kept_calls)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hooks.AdapterContext, "keep_widened_cross", _no_store)
        widened, _ = _decode(backbone, bank, widened_calls)

    assert len(kept) == len(widened) == 8
    for a, b in zip(kept, widened, strict=True):
        assert torch.equal(a, b)

    def cross(calls, phase):
        return [site for p, site in calls if p == phase and site.endswith(".cross_attn")]

    # Without the store every step widens every cross-attention site again; with it only
    # a row's first step does (self-attention keys grow, so they are widened each step).
    assert cross(widened_calls, "step") and not cross(kept_calls, "step")
    assert cross(kept_calls, "start") == cross(widened_calls, "start")
    assert [s for p, s in kept_calls if p == "step"] == \
        [s for p, s in widened_calls if p == "step" and not s.endswith(".cross_attn")]

    # The cache holds, per decoder cross-attention site, the rows whose slot has a prefix.
    assert set(final["widened"]) == set(cross(widened_calls, "step"))
    for site, entry in final["widened"].items():
        used_by = bank.prefix[site].used_by
        rows = tuple(i for i, r in enumerate(final["running"]) if SLOTS[r] in used_by)
        every_row = tuple(range(len(final["running"])))  # BLIP widens every row's keys
        assert entry.prefix is bank.prefix[site] and entry.rows in (rows, every_row)
        assert entry.key.shape[0] == len(entry.rows)

