"""The one decode loop (`DecodeBatch`), through its own API: greedy and beam rows that join at
different steps, and rows dropped mid-decode, leave every other row with the tokens it
decodes alone; finished rows leave at once; streamed pieces are the settled text."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modeling_helpers import random_batch
from test_mixed_batch import (
    ORACLE_SETTINGS,
    _chatty_sets,
    _materialize,
    _run_alone,
    _stack,
    adapter_mix,
)

from modeling.decoding import DecodeBatch, DecodeRow, stream_piece
from modeling.generation import beam_search
from modeling.kernels import RowIndex
from modeling.recipe import MethodEntry
from modeling.tokenizer import SPECIALS, build_word_tokenizer


def _decode(decoding: DecodeBatch, hidden, mask, weights, rows: list[DecodeRow],
            joins: list[int], drops: list[int | None]) -> tuple[list[DecodeRow], set[int]]:
    """Row i joins at step joins[i] (with the others of that step, padded to their own
    longest encoder row, as the engine does) and, when still running at step drops[i], is
    dropped before that step. Returns the finished rows in finishing order and the rows
    dropped while running."""
    finished, dropped, step = [], set(), 0
    while step <= max(joins) or decoding:
        if decoding:
            gone = [r for r, row in enumerate(rows) if drops[r] == step and row in decoding.rows]
            decoding.drop([rows[r] for r in gone])
            dropped.update(gone)
            if decoding:
                finished += _checked(decoding, decoding.step(weights))
        new = [r for r, join in enumerate(joins) if join == step]
        if new:
            width = int(mask[new].sum(1).max())
            finished += _checked(decoding, decoding.join(
                [rows[r] for r in new], hidden[new, :width], mask[new, :width], weights))
        step += 1
    return finished, dropped


def _checked(decoding: DecodeBatch, finished: list[DecodeRow]) -> list[DecodeRow]:
    """A finished row has left the batch, with its cache rows."""
    assert not set(finished) & set(decoding.rows)
    assert decoding.width == sum(row.width for row in decoding.rows)
    return finished


def _plan(data, rows: int) -> tuple[list[int], list[int], list[int], list[int | None]]:
    draw = data.draw
    joins = draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))
    beams = draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=rows, max_size=rows))
    limits = draw(st.lists(st.integers(1, 5), min_size=rows, max_size=rows))
    drops = draw(st.lists(st.integers(1, 7), min_size=rows, max_size=rows))  # 6+: none
    return joins, beams, limits, drops


@settings(max_examples=8, **ORACLE_SETTINGS)
@given(mix=adapter_mix(), data=st.data())
def test_rows_joining_and_dropped_at_different_steps_decode_as_each_row_alone(family_backbone,
                                                                              mix, data):
    """On every backbone family."""
    backbone = family_backbone
    sets, slots, lengths, seed = mix
    joins, beams, limits, drops = _plan(data, len(slots))
    serve = _materialize(backbone, sets, seed)
    stacked = _stack(backbone, [*serve, type(serve[0])()])
    batch = random_batch(backbone, lengths, seed=seed, with_labels=False)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, stacked, RowIndex.of(torch.tensor(slots)))
    rows = [DecodeRow(slot, limit, num_beams) for slot, limit, num_beams
            in zip(slots, limits, beams, strict=True)]
    decoding = DecodeBatch(backbone)
    finished, dropped = _decode(decoding, hidden, mask, stacked, rows, joins, drops)
    assert len(decoding) == 0
    assert sorted(rows.index(row) for row in finished) == \
        [r for r in range(len(rows)) if r not in dropped]  # each once, dropped ones never
    for row in finished:
        r = rows.index(row)
        one, weights, index = _run_alone(backbone, batch, r, serve, slots[r])
        assert row.tokens == beam_search(backbone, one, weights, index,
                                         max_new_tokens=limits[r], num_beams=beams[r])[0], r


def test_dropping_a_beam_row_keeps_the_cache_rows_of_the_rows_after_it(backbone):
    """Guard for the property above: a dropped row ahead of others, holding several cache
    rows, really is dropped mid-decode, and the rows behind it still decode as alone (on
    both families, these rows' tokens change when they read another row's cache)."""
    sets = _chatty_sets(backbone) + _materialize(backbone, [
        [MethodEntry("lora", {"rank": 4})],
        [MethodEntry("prefix_tuning", {"length": 2, "hidden_dim": 8})]], 3)
    stacked, slots = _stack(backbone, sets), [2, 0, 3, 1]
    batch = random_batch(backbone, [5, 3, 6, 4], seed=3, with_labels=False)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, stacked, RowIndex.of(torch.tensor(slots)))
    rows = [DecodeRow(slot, 6, num_beams) for slot, num_beams in zip(slots, [3, 1, 2, 1],
                                                                     strict=True)]
    decoding = DecodeBatch(backbone)
    finished, dropped = _decode(decoding, hidden, mask, stacked, rows, [0, 0, 0, 1],
                                [2, None, None, None])
    assert dropped == {0} and rows[0] not in finished
    for row in finished:
        r = rows.index(row)
        one = batch.select([r])
        alone = beam_search(backbone, one, _stack(backbone, [sets[slots[r]]]),
                            RowIndex.of(torch.zeros(1, dtype=torch.long)), max_new_tokens=6,
                            num_beams=row.num_beams)[0]
        assert row.tokens == alone, r


def _word_tokenizer(backbone):
    """Every id decodes to a word, so a greedy row's text grows by one word per token."""
    vocab = backbone.lm.config.vocab_size
    lm_type = backbone.config.lm_type
    words = [f"w{i}" for i in range(vocab - len(SPECIALS[lm_type]))]
    return build_word_tokenizer(words, lm_type, vocab)


def test_streamed_pieces_are_the_text_each_step_settles_and_join_to_the_final_text(backbone):
    tokenizer = _word_tokenizer(backbone)
    stacked, slots = _stack(backbone, _chatty_sets(backbone)), [0, 1, 0, 0, 1]
    batch = random_batch(backbone, [5, 3, 6, 2, 4], seed=1, with_labels=False)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, stacked, RowIndex.of(torch.tensor(slots)))
    pieces: list[list[str]] = [[] for _ in slots]
    rows = [DecodeRow(slot, 6, num_beams, stream=pieces[r].append)
            for r, (slot, num_beams) in enumerate(zip(slots, [1, 1, 2, 1, 1], strict=True))]
    decoding = DecodeBatch(backbone, tokenizer)
    finished, _ = _decode(decoding, hidden, mask, stacked, rows, [0, 1, 0, 2, 0], [None] * 5)
    assert len(finished) == len(rows)
    for r, row in enumerate(rows):
        assert row.text == tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
        assert all(pieces[r]) and "".join(pieces[r]) == row.streamed
        assert row.streamed + stream_piece(row.streamed, row.text, final=True) == row.text
        # Streamed while decoding: each token that did not end the row (a row ends at eos,
        # after its last token, or on its max_new_tokens-th token).
        going_on = len(row.tokens) - (len(row.tokens) == row.max_new_tokens)
        expected, streamed = [], ""
        for end in range(1, going_on + 1) if row.num_beams == 1 else []:
            piece = stream_piece(streamed, tokenizer.decode(row.tokens[:end],
                                                            skip_special_tokens=True).strip())
            expected += [piece] if piece else []
            streamed += piece
        assert pieces[r] == expected, r
    assert max(len(p) for p in pieces) >= 3, "guard: greedy rows stream several pieces"
    assert not pieces[2] and rows[2].text, "a beam row's text is only known at its end"


def test_a_streaming_row_without_a_tokenizer_is_refused(backbone):
    decoding = DecodeBatch(backbone)
    assert decoding.tokenizer is None  # the tiny presets come without one
    hidden = torch.zeros(1, 2, backbone.config.d_model)
    with pytest.raises(ValueError, match="streaming row needs a tokenizer"):
        decoding.join([DecodeRow(None, 3, stream=print)], hidden,
                      torch.ones(1, 2, dtype=torch.bool), None)
    assert len(decoding) == 0


def test_steps_over_the_same_rows_reuse_one_index_and_a_row_leaving_builds_a_new_one(
        backbone, monkeypatch):
    sets = _materialize(backbone, [[MethodEntry("lora", {"rank": 4})],
                                   [MethodEntry("prefix_tuning", {"length": 2,
                                                                  "hidden_dim": 8})]], 3)
    stacked = _stack(backbone, sets)
    batch = random_batch(backbone, [5, 3], seed=3, with_labels=False)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, stacked, RowIndex.of([0, 1]))
    # A decoder prompt is fed one token per step and chooses nothing: no row can end early.
    rows = [DecodeRow(0, 50, prompt=[5, 6, 7, 8, 9]) for _ in range(2)]
    rows[1].slot = 1
    decoding = DecodeBatch(backbone)
    assert not decoding.join(rows, hidden, mask, stacked)
    built = []
    original = RowIndex.of.__func__
    monkeypatch.setattr(RowIndex, "of", classmethod(
        lambda cls, slots, device=None: built.append(tuple(slots)) or original(cls, slots,
                                                                               device)))
    per_step = []
    for _ in range(3):
        before = len(built)
        assert not decoding.step(stacked)
        per_step.append(len(built) - before)
    assert per_step[0] > 0 and per_step[1:] == [0, 0]  # built once, then reused
    decoding.drop([rows[0]])
    before = len(built)
    assert not decoding.step(stacked)
    assert len(built) > before and decoding._step_index.host_slots == (1,)
