"""Offline decoding over a mixed-adapter batch: greedy, beam search and candidate scoring
(training evaluation, the tests, the reference the server is compared with).

The encoder runs once per batch with each row's adapter; greedy and beam search then
decode through the one decode loop, `modeling.decoding.DecodeBatch` (the one the server
runs): a key/value cache, a row that is done leaves it, and under beam search each beam
is a cache row with its request's adapter slot (STYLE.md, "encoder-decoder detail").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import AdapterBank
from modeling.decoding import DecodeBatch, DecodeRow
from modeling.kernels import RowIndex


@torch.no_grad()
def greedy(backbone: VLBackbone, batch: VLBatch, bank: AdapterBank | None = None,
           index: RowIndex | None = None, max_new_tokens: int = 20) -> list[list[int]]:
    """Greedy decoding -> per row the generated ids (start and eos removed)."""
    return beam_search(backbone, batch, bank, index, max_new_tokens, num_beams=1)


@torch.no_grad()
def beam_search(backbone: VLBackbone, batch: VLBatch, bank: AdapterBank | None = None,
                index: RowIndex | None = None, max_new_tokens: int = 20, num_beams: int = 4,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search -> per row the best hypothesis (score = sum log p / length**penalty);
    num_beams 1 is greedy decoding.

    index [b]: each row's slot in `bank` (None without bank).
    """
    hidden, mask = backbone.encode(batch, bank, index)
    slots = [None] * batch.size if index is None else list(index.host_slots)
    rows = [DecodeRow(slot, max_new_tokens, num_beams, length_penalty, prompt=prompt)
            for slot, prompt in zip(slots, batch.decoder_prompts(), strict=True)]
    decoding = DecodeBatch(backbone)
    decoding.join(rows, hidden, mask, bank)
    while decoding:
        decoding.step(bank)
    return [row.tokens for row in rows]


@torch.no_grad()
def score_candidates(backbone: VLBackbone, batch: VLBatch, candidates: torch.Tensor,
                     bank: AdapterBank | None = None,
                     index: RowIndex | None = None,
                     per_token: Sequence[bool] = ()) -> torch.Tensor:
    """Sum of token log-probabilities of each candidate answer, in one batched call; for
    the rows where `per_token` [b] is true, their mean over the candidate's tokens.

    candidates [b, c, t] token ids with -100 padding (eos included) -> scores [b, c].
    Used for NLVR2 ("true" / "false") and multiple choice ("a0" .. "a4", or the options'
    texts: `ChoiceAnswer`).
    """
    rows, count, _ = candidates.shape
    encoder_hidden, encoder_mask = backbone.encode(batch, bank, index)
    labels = candidates.reshape(rows * count, -1)
    cand_index = None if index is None else index.repeat_interleave(count)
    logits = backbone.decode(encoder_hidden.repeat_interleave(count, 0),
                             encoder_mask.repeat_interleave(count, 0), labels=labels,
                             bank=bank, index=cand_index).logits
    log_probs = logits.float().log_softmax(-1)
    valid = labels != -100
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    totals = (picked * valid).sum(-1).view(rows, count)
    if per_token and len(per_token) != rows:
        raise ValueError(f"per_token has {len(per_token)} entries for {rows} rows")
    if not any(per_token):
        return totals
    lengths = valid.sum(-1).view(rows, count)
    averaged = torch.tensor(list(per_token), device=totals.device)[:, None]
    return torch.where(averaged, totals / lengths, totals)

