"""Decoding over a mixed-adapter batch: greedy, beam search, candidate scoring.

The encoder runs once per batch with each row's adapter; the decoder runs step by step
with a key/value cache. Under beam search the slot index is repeated per beam, so each
beam decodes with its row's adapter (STYLE.md, "encoder-decoder detail").
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import StackedWeights
from modeling.kernels import RowIndex


def _cache() -> EncoderDecoderCache:
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def greedy(backbone: VLBackbone, batch: VLBatch, weights: StackedWeights | None = None,
           index: RowIndex | None = None, max_new_tokens: int = 20) -> list[list[int]]:
    """Greedy decoding -> per row the generated ids (start and eos removed)."""
    encoder_hidden, encoder_mask = backbone.encode(batch, weights, index)
    rows, eos = batch.size, backbone.eos_token_id
    step_ids = torch.full((rows, 1), backbone.decoder_start_token_id,
                          device=encoder_hidden.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=encoder_hidden.device)
    generated, cache = [], _cache()
    for _ in range(max_new_tokens):
        out = backbone.decode(encoder_hidden, encoder_mask, step_ids, weights=weights,
                              index=index, cache=cache)
        next_ids = out.logits[:, -1].argmax(-1)
        next_ids = torch.where(finished, torch.full_like(next_ids, eos), next_ids)
        generated.append(next_ids)
        finished |= next_ids == eos
        if bool(finished.all()):
            break
        step_ids = next_ids[:, None]
    ids = torch.stack(generated, 1).tolist()
    return [_strip(row, eos) for row in ids]


@torch.no_grad()
def beam_search(backbone: VLBackbone, batch: VLBatch, weights: StackedWeights | None = None,
                index: RowIndex | None = None, max_new_tokens: int = 20, num_beams: int = 4,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search -> per row the best hypothesis (score = sum log p / length**penalty)."""
    if num_beams == 1:
        return greedy(backbone, batch, weights, index, max_new_tokens)
    encoder_hidden, encoder_mask = backbone.encode(batch, weights, index)
    rows, eos, k = batch.size, backbone.eos_token_id, num_beams
    device = encoder_hidden.device
    encoder_hidden = encoder_hidden.repeat_interleave(k, 0)
    encoder_mask = encoder_mask.repeat_interleave(k, 0)
    beam_index = None if index is None else index.repeat_interleave(k)
    scores = torch.full((rows, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    sequences = torch.full((rows * k, 1), backbone.decoder_start_token_id, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(rows)]
    cache = _cache()
    for step in range(max_new_tokens):
        out = backbone.decode(encoder_hidden, encoder_mask, sequences[:, -1:], weights=weights,
                              index=beam_index, cache=cache)
        log_probs = out.logits[:, -1].float().log_softmax(-1)  # [rows*k, vocab]
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(rows, k * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)
        next_scores = torch.full((rows, k), float("-inf"), device=device)
        next_beams = torch.zeros(rows, k, dtype=torch.long, device=device)
        next_tokens = torch.full((rows, k), eos, dtype=torch.long, device=device)
        for row in range(rows):
            kept = 0
            for score, flat in zip(top_scores[row].tolist(), top_ids[row].tolist(), strict=True):
                beam, token = divmod(flat, vocab)
                if token == eos or step == max_new_tokens - 1:
                    hyp = sequences[row * k + beam, 1:].tolist() + ([] if token == eos else [token])
                    finished[row].append((score / max(len(hyp), 1) ** length_penalty, hyp))
                    continue
                next_scores[row, kept], next_beams[row, kept] = score, beam
                next_tokens[row, kept] = token
                kept += 1
                if kept == k:
                    break
        if all(len(f) >= k for f in finished):
            break
        scores = next_scores
        source = (torch.arange(rows, device=device)[:, None] * k + next_beams).view(-1)
        cache.reorder_cache(source)
        sequences = torch.cat([sequences[source], next_tokens.view(-1, 1)], 1)
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


@torch.no_grad()
def score_candidates(backbone: VLBackbone, batch: VLBatch, candidates: torch.Tensor,
                     weights: StackedWeights | None = None,
                     index: RowIndex | None = None) -> torch.Tensor:
    """Sum of token log-probabilities of each candidate answer, in one batched call.

    candidates [b, c, t] token ids with -100 padding (eos included) -> scores [b, c].
    Used for NLVR2 ("true" / "false") and multiple choice ("a0" .. "a4").
    """
    rows, count, _ = candidates.shape
    encoder_hidden, encoder_mask = backbone.encode(batch, weights, index)
    labels = candidates.reshape(rows * count, -1)
    cand_index = None if index is None else index.repeat_interleave(count)
    logits = backbone.decode(encoder_hidden.repeat_interleave(count, 0),
                             encoder_mask.repeat_interleave(count, 0), labels=labels,
                             weights=weights, index=cand_index).logits
    log_probs = logits.float().log_softmax(-1)
    valid = labels != -100
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum(-1).view(rows, count)
