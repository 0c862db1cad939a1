"""Decoding over a mixed-adapter batch: greedy, beam search, candidate scoring, and the
text a stream may send while a decode goes on (`stream_piece`).

The encoder runs once per batch with each row's adapter; the decoder runs step by step
with a key/value cache (`modeling.decode_rows`, the same cached decode the server runs),
and a row that is done leaves it. Under beam search the slot index is repeated per beam,
so each beam decodes with its row's adapter (STYLE.md, "encoder-decoder detail").
"""

from __future__ import annotations

import re

import torch

from modeling import decode_rows
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import StackedWeights
from modeling.kernels import RowIndex

_LAST_WORD = re.compile(r"\s+\S*\Z")  # the last run of whitespace and the word after it


def _slots_of(index: RowIndex | None, rows: list[int]) -> RowIndex | None:
    """The slot index of decoder rows, given the batch row each one belongs to."""
    if index is None:
        return None
    return index.select(rows)


@torch.no_grad()
def greedy(backbone: VLBackbone, batch: VLBatch, weights: StackedWeights | None = None,
           index: RowIndex | None = None, max_new_tokens: int = 20) -> list[list[int]]:
    """Greedy decoding -> per row the generated ids (start and eos removed)."""
    hidden, mask = backbone.encode(batch, weights, index)
    state, logits = decode_rows.start(backbone, hidden, mask, weights, index)
    generated: list[list[int]] = [[] for _ in range(batch.size)]
    live = list(range(batch.size))  # batch rows still decoding, in cache order
    while True:
        keep = []
        for i, (row, token) in enumerate(zip(live, logits.argmax(-1).tolist(), strict=True)):
            if token != backbone.eos_token_id:
                generated[row].append(token)
                keep += [i] if len(generated[row]) < max_new_tokens else []
        if not keep:
            return generated
        live, state = [live[i] for i in keep], state.select(keep)
        last = torch.tensor([generated[row][-1] for row in live], device=hidden.device)
        logits = state.step(backbone, last, weights, _slots_of(index, live))


class BeamRow:
    """Beam-search bookkeeping of one request: live hypotheses and finished ones.

    A hypothesis scores sum(log p) / length**length_penalty. Each step the 2k best
    continuations of the live beams are read in order: one ending in eos (or reaching
    max_new_tokens) is finished, the others fill the k live beams. The search ends when k
    hypotheses have finished, so a row's result never depends on the rows batched with it.
    Used by `beam_search` and by the serving engine, whose rows join and leave per step.
    """

    def __init__(self, num_beams: int, eos: int, max_new_tokens: int,
                 length_penalty: float = 1.0):
        self.k, self.eos, self.max_new_tokens = num_beams, eos, max_new_tokens
        self.length_penalty = length_penalty
        self.scores = [0.0]  # live beams' scores; one beam until the first step
        self.sequences: list[list[int]] = [[]]
        self.finished: list[tuple[float, list[int]]] = []
        self.step = 0

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.k or self.step >= self.max_new_tokens

    def advance(self, log_probs: torch.Tensor) -> list[int]:
        """log_probs [live, vocab] (float32) of each live beam's next token -> for each new
        live beam the live beam it continues (empty once the search is done)."""
        vocab = log_probs.shape[-1]
        scores = log_probs.new_tensor(self.scores)
        candidates = (scores[:, None] + log_probs).view(-1)
        top_scores, top_ids = candidates.topk(min(2 * self.k, candidates.numel()))
        last = self.step == self.max_new_tokens - 1
        sources, scores_, sequences = [], [], []
        for score, flat in zip(top_scores.tolist(), top_ids.tolist(), strict=True):
            beam, token = divmod(flat, vocab)
            if token == self.eos or last:
                hyp = self.sequences[beam] + ([] if token == self.eos else [token])
                self.finished.append((score / max(len(hyp), 1) ** self.length_penalty, hyp))
                continue
            sources.append(beam)
            scores_.append(score)
            sequences.append(self.sequences[beam] + [token])
            if len(sources) == self.k:
                break
        self.step += 1
        self.scores, self.sequences = scores_, sequences
        return [] if self.done else sources

    def next_tokens(self) -> list[int]:
        """The token each live beam feeds to the decoder next ([start] comes first)."""
        return [sequence[-1] for sequence in self.sequences]

    def best(self) -> list[int]:
        return max(self.finished, key=lambda h: h[0])[1] if self.finished else []


@torch.no_grad()
def beam_search(backbone: VLBackbone, batch: VLBatch, weights: StackedWeights | None = None,
                index: RowIndex | None = None, max_new_tokens: int = 20, num_beams: int = 4,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search -> per row the best hypothesis (score = sum log p / length**penalty).

    Each row's live beams are consecutive decoder rows; a row whose search is done leaves
    (`BeamRow`).
    """
    if num_beams == 1:
        return greedy(backbone, batch, weights, index, max_new_tokens)
    hidden, mask = backbone.encode(batch, weights, index)
    searches = [BeamRow(num_beams, backbone.eos_token_id, max_new_tokens, length_penalty)
                for _ in range(batch.size)]
    state, logits = decode_rows.start(backbone, hidden, mask, weights, index)
    live = list(range(batch.size))  # batch rows still searching, in cache order
    while True:
        order, going_on, offset = [], [], 0
        for row in live:
            width = len(searches[row].sequences)
            sources = searches[row].advance(logits[offset:offset + width].float().log_softmax(-1))
            order += [offset + source for source in sources]
            going_on += [row] if sources else []
            offset += width
        if not order:
            return [search.best() for search in searches]
        live, state = going_on, state.select(order)
        tokens = [token for row in live for token in searches[row].next_tokens()]
        owners = [row for row in live for _ in searches[row].sequences]
        logits = state.step(backbone, torch.tensor(tokens, device=hidden.device), weights,
                            _slots_of(index, owners))


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


def stream_piece(streamed: str, text: str, final: bool = False) -> str:
    """The next piece of a streamed answer: what `text` (the decode of every token so far)
    settles beyond `streamed` (the pieces sent so far); "" when nothing new is settled.

    Until the answer is `final`, the last word and the whitespace before it are held back,
    because a later token can still rewrite it: a character whose UTF-8 bytes span tokens
    decodes as a trailing U+FFFD until its last byte arrives (byte-level BPE, byte
    fallback), and a tokenizer that cleans up spaces turns "do n" + "'t" into "don't"
    (WordPiece, `clean_up_tokenization_spaces`). Text before that whitespace stays as it
    is (a token appends bytes; a clean-up rule only drops the space before the word it
    ends in), so the pieces join to the final text. Scripts written without spaces
    therefore settle only at the end.
    """
    if not final:
        last_word = _LAST_WORD.search(text)
        text = text[:last_word.start()] if last_word else ""
    return text[len(streamed):] if text.startswith(streamed) else ""
