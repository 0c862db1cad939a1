"""Beam-search bookkeeping of one request (a beam row of `DecodeBatch`, offline and in the
engine): k live beams, eos ends a hypothesis, the limit ends them all, the best normalised
score wins."""

from __future__ import annotations

import pytest
import torch

from modeling.decoding import BeamRow


def test_beam_row_keeps_k_live_beams_finishes_on_eos_and_stops_at_the_limit():
    search = BeamRow(num_beams=2, eos=0, max_new_tokens=3)
    first = torch.tensor([[0.2, 0.5, 0.25, 0.05]]).log()  # one live beam at the start
    assert search.advance(first) == [0, 0] and search.next_tokens() == [1, 2]
    assert not search.finished and not search.done
    second = torch.tensor([[0.9, 0.05, 0.03, 0.02],   # beam [1]: eos is its best
                           [0.01, 0.1, 0.79, 0.1]]).log()  # beam [2]: token 2
    sources = search.advance(second)
    assert sources == [1, 0] and search.sequences == [[2, 2], [1, 1]]
    # [1] then eos: 2 generated tokens, eos counted (transformers' beam search)
    assert search.finished == [(pytest.approx(float(torch.tensor(0.45).log()) / 2), [1])]
    assert search.advance(torch.full((2, 4), 0.25).log()) == []  # the last step: all finish
    assert search.done and len(search.finished) >= 2
    best_score, best = max(search.finished, key=lambda h: h[0])
    assert search.best() == best == [1]  # sum log p / length: 0.45 over 2 tokens wins


def test_an_eos_ranked_below_the_k_best_is_dropped_not_finished():
    search = BeamRow(num_beams=2, eos=0, max_new_tokens=5)
    search.advance(torch.tensor([[0.05, 0.5, 0.45, 0.0]]).log())  # live: [1] .5, [2] .45
    second = torch.tensor([[0.3, 0.4, 0.2, 0.1],    # [1]: eos .15 (rank 2), [1, 1] .2
                           [0.5, 0.1, 0.1, 0.3]]).log()  # [2]: eos .225 (rank 0), [2, 3]
    assert search.advance(second) == [0, 1]
    assert search.sequences == [[1, 1], [2, 3]]
    assert search.finished == [(pytest.approx(float(torch.tensor(0.225).log()) / 2), [2])]
