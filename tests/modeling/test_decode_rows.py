"""Cached decoding with rows joining and leaving (the cache of the one decode loop,
`modeling.decoding.DecodeBatch`): every row gets the logits and tokens it gets alone, on
T5 (relative bias under left padding) and BART (per-row learned positions), over random
adapter mixes."""

from __future__ import annotations

import pytest
import torch
from blip_helpers import blip_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from modeling_helpers import on_every_family, random_batch
from test_mixed_batch import ORACLE_SETTINGS, _materialize, _run_alone, _stack, adapter_mix

from modeling import decode_rows
from modeling.generation import greedy
from modeling.kernels import RowIndex

MAX_TOKENS = 5


def _staggered(backbone, batch, stacked, slots, joins):
    """Decode with rows joining at step joins[row] and leaving at eos or MAX_TOKENS.

    Returns per row its tokens (eos excluded) and its next-token logits [steps, vocab].
    """
    hidden, mask = backbone.encode(batch, stacked, RowIndex.of(torch.tensor(slots)))
    eos = backbone.eos_token_id
    tokens = {row: [] for row in range(len(slots))}
    logits = {row: [] for row in range(len(slots))}
    state, running = None, []

    def emit(rows, step_logits):
        going_on = []
        for i, row in enumerate(rows):
            token = int(step_logits[i].argmax())
            logits[row].append(step_logits[i])
            if token == eos:
                continue
            tokens[row].append(token)
            if len(tokens[row]) < MAX_TOKENS:
                going_on.append(i)
        return going_on

    for step in range(max(joins) + MAX_TOKENS + 1):
        if running:
            index = RowIndex.of(torch.tensor([slots[r] for r in running]))
            last = torch.tensor([tokens[r][-1] for r in running])
            keep = emit(running, state.step(backbone, last, stacked, index))
            running = [running[i] for i in keep]
            state = state.select(keep) if keep else None
        new = [row for row, join in enumerate(joins) if join == step]
        if new:
            width = int(mask[new].sum(1).max())  # as the engine: the group's own padding
            first, step_logits = decode_rows.start(
                backbone, hidden[new, :width], mask[new, :width], stacked,
                RowIndex.of(torch.tensor([slots[r] for r in new])))
            keep = emit(new, step_logits)
            running += [new[i] for i in keep]
            if keep:
                state = decode_rows.concat(state, first.select(keep))
    return tokens, {row: torch.stack(values) for row, values in logits.items()}


@on_every_family
@settings(max_examples=8, **ORACLE_SETTINGS)
@given(mix=adapter_mix(), data=st.data())
def test_rows_joining_and_leaving_a_cached_decode_match_each_row_alone(backbone, mix, data):
    sets, slots, lengths, seed = mix
    joins = data.draw(st.lists(st.integers(0, 3), min_size=len(slots), max_size=len(slots)))
    serve = _materialize(backbone, sets, seed)
    stacked = _stack(backbone, [*serve, type(serve[0])()])
    batch = random_batch(backbone, lengths, seed=seed, with_labels=False)
    with torch.no_grad():
        tokens, logits = _staggered(backbone, batch, stacked, slots, joins)
        for row, slot in enumerate(slots):
            one, weights, index = _run_alone(backbone, batch, row, serve, slot)
            assert tokens[row] == greedy(backbone, one, weights, index,
                                         max_new_tokens=MAX_TOKENS)[0]
            # The same positions without any cache: the whole prefix recomputed.
            hidden, mask = backbone.encode(one, weights, index)
            ids = torch.tensor([[backbone.decoder_start_token_id, *tokens[row]]])
            full = backbone.decode(hidden, mask, ids[:, :len(logits[row])], bank=weights,
                                   index=index).logits[0]
            # relative to logits of several units: the two sides may sum in another order
            # (a group's prefill merges LoRA into its weights where one row alone does not)
            assert (logits[row] - full).abs().max() <= 1e-5 * (1 + full.abs().max())


@pytest.mark.parametrize("family", ["tiny-bart", "blip-vqa", "blip-caption"])
def test_rows_of_different_lengths_need_their_own_learned_positions(family, tmp_path):
    """Guard: without per-row positions a padded BART or BLIP row computes something else,
    so the oracle above can fail."""
    from modeling.backbone import VLBackbone
    from modeling.config import preset
    from modeling.families import blip

    if family.startswith("blip-"):
        backbone = blip.load(blip_folder(tmp_path, family.removeprefix("blip-")))
    else:
        backbone = VLBackbone.from_config(preset(family), seed=0)
    batch = random_batch(backbone, [4, 6], seed=3, with_labels=False)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch)
        old, step_logits = decode_rows.start(backbone, hidden[:1], mask[:1], None, None)
        for _ in range(3):
            step_logits = old.step(backbone, step_logits.argmax(-1), None, None)
        new, new_logits = decode_rows.start(backbone, hidden[1:], mask[1:], None, None)
        both = decode_rows.concat(old, new)
        ids = torch.cat([step_logits.argmax(-1), new_logits.argmax(-1)])
        right = both.step(backbone, ids, None, None)[1]
        original = backbone.row_positions
        backbone.row_positions = lambda positions: original(
            torch.full_like(positions, int(positions.max())))
        try:
            both = decode_rows.concat(old, new)
            wrong = both.step(backbone, ids, None, None)[1]
        finally:
            del backbone.row_positions
    assert (right - wrong).abs().max() > 1e-3



def test_keeping_every_row_in_place_copies_nothing_and_dropping_padding_still_cuts_it():
    from modeling.backbone import VLBackbone
    from modeling.config import preset

    backbone = VLBackbone.from_config(preset("tiny"), seed=0)
    batch = random_batch(backbone, [2, 6], seed=3, with_labels=False)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch)
        state, logits = decode_rows.start(backbone, hidden, mask, None, None)
        state.step(backbone, logits.argmax(-1), None, None)
        assert state.select([0, 1]) is state  # a decode step where no row left
        moved = state.select([1, 0])
        assert moved is not state and torch.equal(moved.self_kv[0][0],
                                                  state.self_kv[0][0][[1, 0]])
        short = state.select([0])  # the longer row left: its encoder padding goes
        assert short.encoder_mask.shape[1] == int(mask[0].sum()) < mask.shape[1]
        assert short.select([0]) is short
