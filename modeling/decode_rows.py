"""Cached decoding for rows that join and leave the batch between steps.

The decode loop (`modeling.decoding.DecodeBatch`, run by the serving engine and by offline
greedy / beam search) batches at the iteration level: a row that finishes leaves, a new
request joins at the next step, beams are reordered. `DecodeRows` is its cache: every
running row's decoder key/value cache in one batch, so that a step feeds one new token per
row (no prefix recomputation):

- self-attention keys/values [b, heads, L, head_dim] are LEFT-padded to the longest row
  and masked. T5's relative position bias depends only on (key index - query index), and
  left padding keeps every real key at its true distance from the new token, so the bias
  is exact; BART's and BERT's learned absolute positions would be read from the padded
  length, so the backbone hands each row its own position for the step
  (`VLBackbone.row_positions`).
- cross-attention keys/values [b, heads, E, head_dim] are computed once, at a row's first
  step (`start`), and right-padded to the longest encoder sequence, masked by the encoder
  mask like the encoder states themselves.
- a row with a key/value prefix at a cross-attention site (prefix tuning) attends over
  its prefix and those keys; the widened keys, values and mask are also computed once, at
  its first step, and kept per site for the rows that have one (`widened`,
  `modeling.hooks.WidenedCross`), padded and reordered with the rows.

Rows are only ever added (`concat`) or removed / repeated (`select`) as whole rows, so a
row computes what it would compute alone (pinned by tests/modeling/test_decode_rows.py
against each row alone and against recomputing the whole prefix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from modeling.backbone import VLBackbone
from modeling.bank import AdapterBank
from modeling.hooks import WidenedCross
from modeling.kernels import RowIndex

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values)


@dataclass
class DecodeRows:
    """The decoder state of every running row, row i of each tensor being row i of the batch.

    self_kv: per layer keys/values [b, heads, L, head_dim], left-padded.
    self_mask: [b, L] bool, True where a cached decoder position is real.
    cross_kv: per layer keys/values [b, heads, E, head_dim] of the encoder states.
    encoder_hidden: [b, E, d]; encoder_mask: [b, E] bool (both right-padded).
    widened: cross-attention site -> the prefix-widened keys of the rows with a prefix
    there ([k, heads, P + E, head_dim]; filled by the hooks at a row's first step).
    """

    self_kv: KeyValues
    self_mask: torch.Tensor
    cross_kv: KeyValues
    encoder_hidden: torch.Tensor
    encoder_mask: torch.Tensor
    widened: dict[str, WidenedCross] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.self_mask.shape[0]

    def select(self, keep: list[int]) -> DecodeRows:
        """Only rows `keep`, in that order; columns that became padding in every row go.

        Every row kept in place (the common decode step: no row finished, no beam moved)
        returns this state itself unless padding columns can go: nothing is copied.
        """
        if keep == list(range(self.size)) and bool(self.self_mask[:, 0].any()) and \
                bool(self.encoder_mask[:, -1].any()):
            return self
        index = torch.tensor(keep, dtype=torch.long, device=self.self_mask.device)
        self_mask, encoder_mask = self.self_mask[index], self.encoder_mask[index]
        first = _first_true_column(self_mask)
        width = _last_true_column(encoder_mask) + 1
        return DecodeRows(
            [(k[index, :, first:], v[index, :, first:]) for k, v in self.self_kv],
            self_mask[:, first:],
            [(k[index, :, :width], v[index, :, :width]) for k, v in self.cross_kv],
            self.encoder_hidden[index, :width], encoder_mask[:, :width],
            _select_widened(self.widened, keep, self.encoder_mask.shape[1], width))

    def step(self, backbone: VLBackbone, ids: torch.Tensor, bank: AdapterBank | None,
             index: RowIndex | None) -> torch.Tensor:
        """Feed one token per row (ids [b]); returns next-token logits [b, vocab]."""
        positions = self.self_mask.sum(1)  # real tokens each row has seen
        mask = torch.cat([self.self_mask, self.self_mask.new_ones(self.size, 1)], dim=1)
        cache = _cache(self.self_kv, self.cross_kv)
        with backbone.row_positions(positions), \
                backbone.adapter_context.keep_widened_cross(self.widened):
            out = backbone.decode(self.encoder_hidden, self.encoder_mask, ids[:, None],
                                  bank=bank, index=index, cache=cache,
                                  decoder_mask=mask)
        self.self_kv = _key_values(cache.self_attention_cache)
        self.self_mask = mask
        return out.logits[:, -1]


def start(backbone: VLBackbone, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor,
          bank: AdapterBank | None, index: RowIndex | None
          ) -> tuple[DecodeRows, torch.Tensor]:
    """The first step of new rows (decoder start token; cross keys/values computed here).

    encoder_hidden [b, E, d], encoder_mask [b, E] -> (their DecodeRows, logits [b, vocab]).
    """
    rows = encoder_hidden.shape[0]
    ids = torch.full((rows, 1), backbone.decoder_start_token_id, device=encoder_hidden.device)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    widened: dict[str, WidenedCross] = {}
    with backbone.adapter_context.keep_widened_cross(widened):
        out = backbone.decode(encoder_hidden, encoder_mask, ids, bank=bank, index=index,
                              cache=cache)
    state = DecodeRows(_key_values(cache.self_attention_cache),
                       encoder_mask.new_ones(rows, 1), _key_values(cache.cross_attention_cache),
                       encoder_hidden, encoder_mask, widened)
    return state, out.logits[:, -1]


def concat(first: DecodeRows | None, second: DecodeRows) -> DecodeRows:
    """`first`'s rows then `second`'s, padded to a common decoder and encoder length."""
    if first is None or first.size == 0:
        return second
    length = max(first.self_mask.shape[1], second.self_mask.shape[1])
    width = max(first.encoder_mask.shape[1], second.encoder_mask.shape[1])

    def self_part(state: DecodeRows) -> tuple[KeyValues, torch.Tensor]:
        missing = length - state.self_mask.shape[1]  # left padding, along the key axis
        return ([(F.pad(k, (0, 0, missing, 0)), F.pad(v, (0, 0, missing, 0)))
                 for k, v in state.self_kv], F.pad(state.self_mask, (missing, 0)))

    def cross_part(state: DecodeRows) -> tuple[KeyValues, torch.Tensor, torch.Tensor]:
        missing = width - state.encoder_mask.shape[1]  # right padding
        return ([(F.pad(k, (0, 0, 0, missing)), F.pad(v, (0, 0, 0, missing)))
                 for k, v in state.cross_kv],
                F.pad(state.encoder_hidden, (0, 0, 0, missing)),
                F.pad(state.encoder_mask, (0, missing)))

    (kv_a, mask_a), (kv_b, mask_b) = self_part(first), self_part(second)
    (cross_a, hidden_a, enc_a), (cross_b, hidden_b, enc_b) = cross_part(first), cross_part(second)
    return DecodeRows(_cat(kv_a, kv_b), torch.cat([mask_a, mask_b]), _cat(cross_a, cross_b),
                      torch.cat([hidden_a, hidden_b]), torch.cat([enc_a, enc_b]),
                      _concat_widened(first, second, width))


def _select_widened(widened: dict[str, WidenedCross], keep: list[int], old_width: int,
                    width: int) -> dict[str, WidenedCross]:
    """The widened keys of cache rows `keep` (in that order), encoder columns cut from
    old_width to width (the padding every kept row has there), as `DecodeRows.select`."""
    out = {}
    for site, entry in widened.items():
        at = {row: i for i, row in enumerate(entry.rows)}
        picks = [(new, at[old]) for new, old in enumerate(keep) if old in at]
        if not picks:
            continue
        rows, take = tuple(new for new, _ in picks), [i for _, i in picks]
        columns = entry.key.shape[2] - old_width + width
        if take == list(range(len(entry.rows))) and columns == entry.key.shape[2]:
            out[site] = WidenedCross(rows, entry.prefix, entry.key, entry.value, entry.mask)
            continue
        index = torch.tensor(take, dtype=torch.long, device=entry.key.device)
        out[site] = WidenedCross(rows, entry.prefix, entry.key[index, :, :columns],
                                 entry.value[index, :, :columns],
                                 entry.mask[index, ..., :columns])
    return out


def _concat_widened(first: DecodeRows, second: DecodeRows, width: int
                    ) -> dict[str, WidenedCross]:
    """The widened keys of `first`'s rows then `second`'s, right-padded to encoder width
    `width` (as their cross-attention keys). A site whose two halves come from different
    stacks is left out: the hooks widen it again at the next step."""

    def padded(entry: WidenedCross, state: DecodeRows, offset: int) -> WidenedCross:
        missing = width - state.encoder_mask.shape[1]
        return WidenedCross(tuple(row + offset for row in entry.rows), entry.prefix,
                            F.pad(entry.key, (0, 0, 0, missing)),
                            F.pad(entry.value, (0, 0, 0, missing)),
                            F.pad(entry.mask, (0, missing)))

    out = {}
    for site in first.widened.keys() | second.widened.keys():
        a, b = first.widened.get(site), second.widened.get(site)
        if a is not None and b is not None and a.prefix is not b.prefix:
            continue
        parts = [padded(entry, state, offset) for entry, state, offset in
                 ((a, first, 0), (b, second, first.size)) if entry is not None]
        out[site] = parts[0] if len(parts) == 1 else WidenedCross(
            parts[0].rows + parts[1].rows, parts[0].prefix,
            *(torch.cat([getattr(parts[0], name), getattr(parts[1], name)])
              for name in ("key", "value", "mask")))
    return out


def _cat(a: KeyValues, b: KeyValues) -> KeyValues:
    return [(torch.cat([ka, kb]), torch.cat([va, vb])) for (ka, va), (kb, vb) in zip(a, b,
                                                                                    strict=True)]


def _cache(self_kv: KeyValues, cross_kv: KeyValues) -> EncoderDecoderCache:
    """A Hugging Face cache over these tensors (no copy); cross-attention marked computed."""
    cache = EncoderDecoderCache(_dynamic(self_kv), _dynamic(cross_kv))
    cache.is_updated = {layer: True for layer in range(len(cross_kv))}
    return cache


def _dynamic(key_values: KeyValues) -> DynamicCache:
    # Layers are filled directly: `DynamicCache.update` would copy every cached tensor
    # (it concatenates onto an empty one), each step.
    cache = DynamicCache()
    for keys, values in key_values:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def _key_values(cache: DynamicCache) -> KeyValues:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _first_true_column(mask: torch.Tensor) -> int:
    """Index of the first column [b, n] with a True in some row (n when none has)."""
    any_true = mask.any(0)
    return int(any_true.float().argmax()) if bool(any_true.any()) else mask.shape[1]


def _last_true_column(mask: torch.Tensor) -> int:
    """Index of the last column with a True in some row (-1 when none has)."""
    any_true = mask.any(0)
    if not bool(any_true.any()):
        return -1
    return mask.shape[1] - 1 - int(any_true.flip(0).float().argmax())
