"""The one decode loop: a batch of rows that join, step and leave (`DecodeBatch`).

Offline generation (`modeling.generation.greedy` / `beam_search`, used by training
evaluation and the tests) and the serving engine both decode through it:

    batch = DecodeBatch(backbone)
    finished = batch.join(rows, encoder_hidden, encoder_mask, bank)  # first step
    while batch:
        finished += batch.step(bank)           # one token per cache row
    batch.drop(rows)                           # cancelled rows leave mid-decode

A row (`DecodeRow`) is one request: greedy (one cache row) or beam search (one cache row
per live beam, `BeamRow`), with its adapter slot, its max_new_tokens and, when it streams,
a callback for the text each step settles (`stream_piece`). Greedy and beam rows decode in
the same step; their cache rows (`modeling.decode_rows.DecodeRows`, left-padded so rows of
different lengths share it) are consecutive per request and reordered after every step; a
finished row leaves at once and is returned with its token ids and final text.

Where to change decoding: tokens are chosen and rows end in ONE place, `DecodeBatch.
_advance` (greedy: `_advance_greedy`; beam search: `BeamRow.advance`, which already holds
the length penalty). Sampling, a length penalty for greedy rows or stop strings are a
change there and a field on `DecodeRow`; both the server and offline generation get it.
The per-step adapter index is built in `DecodeBatch._index` only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from modeling import decode_rows
from modeling.backbone import VLBackbone
from modeling.bank import AdapterBank
from modeling.decode_rows import DecodeRows
from modeling.kernels import RowIndex

_LAST_WORD = re.compile(r"\s+\S*\Z")  # the last run of whitespace and the word after it


class BeamRow:
    """Beam-search bookkeeping of one request: live hypotheses and finished ones.

    A hypothesis scores sum(log p) / length**length_penalty. Each step the 2k best
    continuations of the live beams are read in order: one ending in eos (or reaching
    max_new_tokens) is finished, the others fill the k live beams. The search ends when k
    hypotheses have finished, so a row's result never depends on the rows batched with it.
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


@dataclass(eq=False)
class DecodeRow:
    """One request being decoded (compared by identity).

    slot: its adapter's slot in the bank (None only when decoding without a
    bank). num_beams 1: greedy, one cache row; more: beam search, one cache row per
    live beam. stream: called with each piece of settled text while a greedy row decodes
    (None: no streaming; a beam row's text is only known at its end). owner: the caller's
    handle (the engine's request). started: `time.perf_counter()` at creation, for timings.

    Filled by `DecodeBatch`: tokens (greedy: generated so far; once finished: the result,
    eos excluded), text (the final text, once finished), streamed (the pieces sent so far).
    """

    slot: int | None
    max_new_tokens: int
    num_beams: int = 1
    length_penalty: float = 1.0
    stream: Callable[[str], None] | None = None
    owner: Any = None
    started: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    streamed: str = ""
    beams: BeamRow | None = field(default=None, init=False)

    @property
    def width(self) -> int:
        """Cache rows this request holds: 1 (greedy) or its live beams."""
        return 1 if self.beams is None else len(self.beams.sequences)

    def next_tokens(self) -> list[int]:
        """The token each of its cache rows feeds to the decoder next."""
        return [self.tokens[-1]] if self.beams is None else self.beams.next_tokens()


class DecodeBatch:
    """Every running row's decoder state in one key/value cache; see the module docstring.

    rows: the running requests, in cache order (request i's cache rows follow those of
    requests 0..i-1). Runs on one thread.
    """

    def __init__(self, backbone: VLBackbone, tokenizer: PreTrainedTokenizerBase | None = None):
        """tokenizer: for final text and streaming (default: the backbone's; without one
        a finished row's text stays "" and a streaming row is refused)."""
        self.backbone = backbone
        self.tokenizer = tokenizer if tokenizer is not None else backbone.tokenizer
        self.rows: list[DecodeRow] = []
        self._cache: DecodeRows | None = None  # row r of each tensor: cache row r

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Cache rows (one per greedy request and per live beam) the next step decodes."""
        return sum(row.width for row in self.rows)

    @torch.no_grad()
    def join(self, rows: list[DecodeRow], encoder_hidden: torch.Tensor,
             encoder_mask: torch.Tensor, bank: AdapterBank | None) -> list[DecodeRow]:
        """New rows' first step (their cross-attention keys/values are computed here).

        encoder_hidden [n, E, d], encoder_mask [n, E] bool: row i's encoder output (its
        own padding; the cache pads across rows). Returns the rows already finished; the
        others decode with the running rows from the next `step` on.
        """
        if self.tokenizer is None and any(row.stream is not None for row in rows):
            raise ValueError("a streaming row needs a tokenizer to decode its text")
        for row in rows:
            row.beams = None if row.num_beams == 1 else BeamRow(
                row.num_beams, self.backbone.eos_token_id, row.max_new_tokens,
                row.length_penalty)
        cache, logits = decode_rows.start(self.backbone, encoder_hidden, encoder_mask,
                                          bank, self._index(rows, encoder_hidden.device))
        going_on, order, finished = self._advance(rows, logits)
        if going_on:
            self.rows += going_on
            self._cache = decode_rows.concat(self._cache, cache.select(order))
        return finished

    @torch.no_grad()
    def step(self, bank: AdapterBank | None) -> list[DecodeRow]:
        """One decoder pass over every cache row (one token each) -> the rows that finished
        (they have left the batch); nothing when no row is running."""
        if not self.rows:
            return []
        device = self._cache.encoder_hidden.device
        tokens = torch.tensor([t for row in self.rows for t in row.next_tokens()], device=device)
        logits = self._cache.step(self.backbone, tokens, bank, self._index(self.rows, device))
        self.rows, order, finished = self._advance(self.rows, logits)
        self._cache = self._cache.select(order) if order else None
        return finished

    def drop(self, rows: Iterable[DecodeRow]) -> None:
        """`rows` leave unfinished (cancelled, expired), with their cache rows."""
        gone = set(rows)
        keep, order, offset = [], [], 0
        for row in self.rows:
            if row not in gone:
                keep.append(row)
                order += range(offset, offset + row.width)
            offset += row.width
        if len(keep) == len(self.rows):
            return
        self.rows = keep
        self._cache = self._cache.select(order) if order else None

    def _index(self, rows: list[DecodeRow], device: torch.device) -> RowIndex | None:
        """The step's adapter index: each cache row's slot ([width] long), None without
        a bank."""
        slots = [row.slot for row in rows for _ in range(row.width)]
        if all(slot is None for slot in slots):
            return None
        return RowIndex.of(slots, device=device)

    def _advance(self, rows: list[DecodeRow], logits: torch.Tensor
                 ) -> tuple[list[DecodeRow], list[int], list[DecodeRow]]:
        """Feed each row its cache rows' next-token logits [width, vocab].

        Returns (the rows that go on, for the cache the row each of their next cache rows
        continues (a beam's row may be continued twice, or not at all), the finished rows).
        """
        going_on, order, finished, offset = [], [], [], 0
        best = logits.argmax(-1).tolist()  # one device sync for every greedy row
        for row in rows:
            width = row.width
            if row.beams is None:
                sources = [0] if self._advance_greedy(row, best[offset]) else []
            else:
                sources = row.beams.advance(logits[offset:offset + width].float()
                                            .log_softmax(-1))
            order += [offset + source for source in sources]
            (going_on if sources else finished).append(row)
            offset += width
        for row in finished:
            row.tokens = row.tokens if row.beams is None else row.beams.best()
            row.text = self.detokenize(row.tokens)
        return going_on, order, finished

    def _advance_greedy(self, row: DecodeRow, token: int) -> bool:
        """Append a greedy row's next token, stream the text it settles; returns whether the
        row goes on (eos and max_new_tokens end it; an ending row's rest is the caller's)."""
        if token == self.backbone.eos_token_id:
            return False
        row.tokens.append(token)
        if len(row.tokens) >= row.max_new_tokens:
            return False
        if row.stream is not None:
            piece = stream_piece(row.streamed, self.detokenize(row.tokens))
            if piece:
                row.stream(piece)
                row.streamed += piece
        return True

    def detokenize(self, tokens: list[int]) -> str:
        """Generated ids (eos excluded) -> text, special tokens skipped, stripped."""
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


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
