"""Hooks that let a frozen Hugging Face LM read the stacked adapter bank.

`install(backbone)` runs once per backbone. It finds the Linear, LayerNorm and Embedding
modules (LoRA deltas, overrides) and every block position (serial and parallel
bottlenecks), and routes attention through `prefix_attention` (key/value prefixes).
A module gets its hooks the first time a bank has a site on it, and keeps them: a site
no bank uses costs nothing per call, and a kept hook costs a dict lookup when the active
bank lacks its site (registering hooks per bank would cost more than that). Hooks do
nothing unless an `AdapterContext` is active, so the bare backbone computes exactly what
the Hugging Face model computes.

The context holds the stacked weights and the slot of every row for the current call;
under beam search the caller hands the decoder an index repeated per beam. A hook runs
its site only on the rows whose slot uses it (`LoraBank.used_by`, ...): the other rows
keep the frozen module's output, and a site no row uses costs nothing. Prefix attention
does the same (`PrefixBank.used_by`): only rows with a prefix at a site attend over the
widened keys. When those rows are consecutive (`VLBackbone.forward` and the serving
engine order rows by form, `RowIndex.grouping`), a site computes on views of the batch
and writes its rows in place; scattered rows (a decode that rows joined at different
times) are gathered and written back. A Linear whose LoRA every row uses may instead
run its frozen product with the delta merged into the weight (`_linear_forward`): rows
on one adapter, or in long runs by adapter.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from modeling.bank import AdapterBank, BottleneckBank, LoraBank, PrefixBank
from modeling.kernels import (
    RowIndex,
    RowSubset,
    all_rows,
    gathered_bottleneck,
    gathered_lora,
    gathered_matmul,
    gathered_rows,
    merge_pays,
    merged_lora,
    row_vectors,
)
from modeling.sites import BlockPosition, attention_sites, block_positions, is_layer_norm

ATTENTION_IMPLEMENTATION = "vladapter"


class _LazyHooks:
    """Our hooks per module, registered on a module when a bank first uses a site on it.

    All of a module's hooks are registered together and ahead of hooks others registered
    (a tracer in tests), in one order whatever bank came first: a Linear's own hook
    (LoRA, overrides), then the bottleneck of a block position that ends at that Linear
    (BART's fc2), which adds to the Linear's adapted output.
    """

    def __init__(self) -> None:
        self.modules_of: dict[str, list[nn.Module]] = {}  # site -> modules, until hooked
        self.forward: dict[nn.Module, list[Callable]] = {}  # module -> hooks, in run order
        self.pre: dict[nn.Module, list[Callable]] = {}  # module -> pre-hooks (kwargs)
        self.own_forward: dict[nn.Module, Callable] = {}  # module -> forward replacing its own
        self.hooked: set[nn.Module] = set()

    def add(self, site: str, module: nn.Module, forward: Callable | None = None,
            pre: Callable | None = None, own_forward: Callable | None = None) -> None:
        """own_forward(module, *args): the module's forward from then on (bound to it, so a
        deep copy of the module computes with its own weights)."""
        self.modules_of.setdefault(site, []).append(module)
        if forward is not None:
            self.forward.setdefault(module, []).append(forward)
        if pre is not None:
            self.pre.setdefault(module, []).append(pre)
        if own_forward is not None:
            self.own_forward[module] = own_forward

    def register(self, sites: set[str]) -> None:
        """Register the hooks of every module of `sites` that has none of ours yet."""
        for site in sites & self.modules_of.keys():
            for module in self.modules_of.pop(site):
                if module in self.hooked:
                    continue
                self.hooked.add(module)
                if module in self.own_forward:
                    module.forward = MethodType(self.own_forward.pop(module), module)
                for hook in reversed(self.forward.get(module, [])):
                    module.register_forward_hook(hook, prepend=True)
                for hook in reversed(self.pre.get(module, [])):
                    module.register_forward_pre_hook(hook, prepend=True, with_kwargs=True)


class AdapterContext:
    """The stacked weights and per-row slots that the hooks read during one call."""

    def __init__(self) -> None:
        self.weights: AdapterBank | None = None
        self.index: RowIndex | None = None
        self.captured: dict[str, torch.Tensor] = {}
        self.hooks = _LazyHooks()
        self._hooked_for: weakref.ref | None = None  # the last bank whose sites are hooked
        # cross-attention site -> its prefix-widened keys, during a cached decode only
        self.widened_cross: dict[str, WidenedCross] | None = None
        # the Linear whose own forward just ran its LoRA merged (`_linear_forward`): its
        # hook, which runs right after, then adds no delta and need not decide again
        self.merged_by: nn.Module | None = None

    @contextmanager
    def use(self, bank: AdapterBank | None, index: RowIndex | None, *,
            rows: int) -> Iterator[None]:
        """Activate `bank` for rows `index` (both None: the bare backbone).

        rows: the batch size the hooks will see. The index is checked against it and
        against the bank here, once per forward and before any compute (ValueError);
        the hooks then trust it.
        """
        if bank is not None:
            if index is None:
                raise ValueError("adapter bank given without an index: expected one slot "
                                 "per row")
            index.check(rows, bank.slots)
            self._hook_sites_of(bank)
        saved = (self.weights, self.index)
        self.weights, self.index = bank, index
        try:
            yield
        finally:
            self.weights, self.index = saved
            self.captured.clear()

    @contextmanager
    def keep_widened_cross(self, store: dict[str, WidenedCross]) -> Iterator[None]:
        """During one cached decoder pass: cross-attention sites read their prefix-widened
        keys from `store` and put there the ones they had to compute
        (`modeling.decode_rows` keeps it beside the cross-attention keys)."""
        saved, self.widened_cross = self.widened_cross, store
        try:
            yield
        finally:
            self.widened_cross = saved

    def _hook_sites_of(self, bank: AdapterBank) -> None:
        """Register the hooks of every site `bank` uses that has none yet.

        A bank's sites never change after stacking (`write_slot` writes only into stacks
        it has), so the bank seen last time is skipped without looking at its sites.
        """
        if self._hooked_for is not None and self._hooked_for() is bank:
            return
        self.hooks.register({*bank.lora, *bank.bottleneck,
                             *(name.rsplit(".", 1)[0] for name in bank.overrides)})
        self._hooked_for = weakref.ref(bank)


def _on_rows(used_by: frozenset[int], index: RowIndex, compute: Callable[..., torch.Tensor],
             out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """`compute(index, out, *inputs)` on the rows whose slot is in `used_by` only.

    out [b, ...] (the hooked module's output) and inputs [b, ...] are cut to those rows
    (views when the rows are a span, `RowIndex.grouping`) and the result written back
    into `out`'s rows; the other rows keep the frozen module's output, as their slots hold
    zeros or the frozen tensors at this site. `out` is the hooked module's fresh output,
    seen by no one yet (our hooks run first), so it is written in place unless autograd
    records.
    """
    subset = index.subset(used_by)
    if subset is None:
        return compute(index, out, *inputs)
    if not len(subset.index):
        return out
    taken = subset.of(out)  # a view of `out` when the rows are a span
    part = compute(subset.index, taken, *(subset.of(t) for t in inputs))
    if torch.is_grad_enabled():
        return out.index_copy(0, subset.positions, part)
    if subset.span is None:
        return out.index_copy_(0, subset.positions, part)
    if part is not taken:  # LoRA adds into `taken` itself: already in `out`
        taken.copy_(part)
    return out


def _layer_norm(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """Recompute a LayerNorm with affine parameters weight/bias [d] or per row [b, 1, d]."""
    if isinstance(module, nn.LayerNorm):
        if weight.dim() == 1 and (bias is None or bias.dim() == 1):
            return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
        normed = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    else:  # T5LayerNorm: RMS norm computed in fp32, no mean subtraction, no bias.
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        normed = (x * torch.rsqrt(variance + module.variance_epsilon)).to(weight.dtype)
    return normed * weight if bias is None else torch.addcmul(bias, normed, weight)


def _overridden_linear(module: nn.Linear, w_over: torch.Tensor | None,
                       b_over: torch.Tensor | None, index: RowIndex, output: torch.Tensor,
                       x: torch.Tensor) -> torch.Tensor:
    """The Linear's output [b, s, out] with per-row weight [slots, out, in] and/or bias
    [slots, out] overrides; x [b, s, in], output [b, s, out] the frozen layer's."""
    bias = module.bias if b_over is None else row_vectors(b_over, index)
    if w_over is not None:
        return gathered_matmul(x, w_over, index, base=bias)
    return output - module.bias + bias


def _lora_rows(lora: LoraBank, index: RowIndex, output: torch.Tensor,
               x: torch.Tensor) -> torch.Tensor:
    """output [b, s, out] plus each row's LoRA delta of x [b, s, in].

    output is ours to overwrite unless autograd records: the Linear's fresh output, a view
    of its rows or the copy `_on_rows` cut from it, so the delta is added into it in place.
    """
    return gathered_lora(x, lora.lora_a, lora.lora_b, None, index, base=output,
                         into_base=not torch.is_grad_enabled())


def _lora_to_merge(weights: AdapterBank, index: RowIndex, name: str, x: torch.Tensor
                   ) -> LoraBank | None:
    """The LoRA of Linear site `name` when this call folds it into the frozen weight
    (`merged_lora`), else None: every row's slot has LoRA here, no row's overrides the
    Linear's weight or bias (an override recomputes the output from the frozen one), and
    merging pays for x [b, ..., in] (`merge_pays`)."""
    lora = weights.lora.get(name)
    if lora is None or lora.dropout > 0 or index.subset(lora.used_by) is not None:
        return None
    if name in weights.override_used_by:
        overriding = index.subset(weights.override_used_by[name])  # None: every row
        if overriding is None or overriding.rows:
            return None
    return lora if merge_pays(x, lora.lora_a, lora.lora_b, index) else None


def _linear_forward(name: str, ctx: AdapterContext, module: nn.Linear, x: torch.Tensor
                    ) -> torch.Tensor:
    """A hooked Linear's forward: nn.Linear's, or with the site's LoRA merged into the
    frozen weight for this call (`_lora_to_merge`; `ctx.merged_by` tells its hook to add
    no delta). A forward hook could only add to the frozen product already computed, not
    replace it."""
    lora = None if ctx.weights is None else _lora_to_merge(ctx.weights, ctx.index, name, x)
    ctx.merged_by = None if lora is None else module
    if lora is None:
        return F.linear(x, module.weight, module.bias)
    return merged_lora(x, module.weight, module.bias, lora.lora_a, lora.lora_b, ctx.index)


def _linear_hook(name: str, ctx: AdapterContext):
    weight_key, bias_key = f"{name}.weight", f"{name}.bias"

    def hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        weights = ctx.weights
        if weights is None:
            return None
        if ctx.merged_by is module:
            ctx.merged_by = None
            return None  # the Linear's forward ran its LoRA merged (`_linear_forward`)
        w_over, b_over = weights.overrides.get(weight_key), weights.overrides.get(bias_key)
        lora = weights.lora.get(name)
        if lora is None and w_over is None and b_over is None:
            return None
        x, out = args[0], output
        if x.dim() != 3:  # the kernels take [b, s, features]
            x, out = x.reshape(x.shape[0], -1, x.shape[-1]), out.view(x.shape[0], -1,
                                                                      out.shape[-1])
        if w_over is not None or b_over is not None:
            out = _on_rows(weights.override_used_by[name], ctx.index,
                           partial(_overridden_linear, module, w_over, b_over), out, x)
        if lora is not None:
            if lora.dropout > 0:  # non-zero only for train forms in training mode
                x = F.dropout(x, lora.dropout, training=True)
            out = _on_rows(lora.used_by, ctx.index, partial(_lora_rows, lora), out, x)
        return out if out.dim() == output.dim() else out.view(output.shape)

    return hook


def _norm_rows(module: nn.Module, w_over: torch.Tensor | None, b_over: torch.Tensor | None,
               index: RowIndex, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The LayerNorm of x [b, n, d] with each row's weight / bias overrides."""
    weight = module.weight if w_over is None else row_vectors(w_over, index)
    bias = getattr(module, "bias", None)
    if bias is not None and b_over is not None:
        bias = row_vectors(b_over, index)
    return _layer_norm(module, x, weight, bias)


def _norm_hook(name: str, ctx: AdapterContext):
    weight_key, bias_key = f"{name}.weight", f"{name}.bias"

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        weights = ctx.weights
        if weights is None:
            return None
        w_over, b_over = weights.overrides.get(weight_key), weights.overrides.get(bias_key)
        if w_over is None and b_over is None:
            return None
        return _on_rows(weights.override_used_by[name], ctx.index,
                        partial(_norm_rows, module, w_over, b_over), output, args[0])

    return hook


def _embedding_rows(table: torch.Tensor, index: RowIndex, output: torch.Tensor,
                    ids: torch.Tensor) -> torch.Tensor:
    """Each row's embeddings of ids [b, n] from its slot's table [slots, vocab, d]."""
    if index.uniform is not None:
        return F.embedding(ids, table[index.uniform])
    return table[index.slots.view(-1, 1).expand_as(ids), ids]  # [b, n, d]


def _embedding_hook(name: str, ctx: AdapterContext):
    weight_key = f"{name}.weight"

    def hook(module: nn.Embedding, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        weights = ctx.weights
        table = None if weights is None else weights.overrides.get(weight_key)
        if table is None:
            return None
        return _on_rows(weights.override_used_by[name], ctx.index,
                        partial(_embedding_rows, table), output, args[0])

    return hook


def _bottleneck_rows(stacked: BottleneckBank, index: RowIndex, h: torch.Tensor,
                     x: torch.Tensor | None = None) -> torch.Tensor:
    """The sublayer's output h [b, s, d] plus each row's bottleneck of h (serial) or of
    the sublayer's input x (parallel rows; x given when any slot is parallel)."""
    z = h
    if x is not None:
        z = torch.where(gathered_rows(stacked.parallel, index).view(-1, 1, 1), x, h)
    return gathered_bottleneck(z, stacked.down_weight, stacked.down_bias, stacked.up_weight,
                               stacked.up_bias, None, stacked.activations, index, base=h)


def _position_hooks(name: str, position: BlockPosition, ctx: AdapterContext) -> None:
    """Serial / parallel bottleneck at one block position (hooks added to `ctx.hooks`)."""

    def capture_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        weights = ctx.weights
        stacked = None if weights is None else weights.bottleneck.get(name)
        if stacked is not None and stacked.any_parallel:
            ctx.captured[name] = args[0] if args else kwargs["hidden_states"]

    def add_adapter(module: nn.Module, args: tuple, output: torch.Tensor
                    ) -> torch.Tensor | None:
        weights = ctx.weights
        stacked = None if weights is None else weights.bottleneck.get(name)
        if stacked is None:
            return None
        inputs = (ctx.captured.pop(name),) if stacked.any_parallel else ()
        return _on_rows(stacked.used_by, ctx.index, partial(_bottleneck_rows, stacked), output,
                        *inputs)

    ctx.hooks.add(name, position.input_module, pre=capture_input)
    ctx.hooks.add(name, position.output_module, forward=add_adapter)


def _with_prefix(module: nn.Module, prefix: PrefixBank, index: RowIndex,
                 query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 mask: torch.Tensor | None, kwargs: dict) -> tuple:
    """Prepend per-row prefixes to key/value [b, heads, k, head_dim] and widen the mask."""
    batch, _, q_len, _ = query.shape
    k_len = key.shape[2]
    prefix_key = gathered_rows(prefix.key, index).to(key.dtype)
    prefix_value = gathered_rows(prefix.value, index).to(value.dtype)
    p_len = prefix_key.shape[2]
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        if getattr(module, "is_causal", False) and q_len > 1:
            mask = torch.tril(mask, diagonal=k_len - q_len)
        mask = mask.view(1, 1, q_len, k_len)
    elif mask.dtype != torch.bool:
        raise TypeError("prefix attention expects boolean masks (sdpa mask interface)")
    valid = torch.arange(p_len, device=query.device) < gathered_rows(prefix.length, index)[:, None]
    prefix_mask = valid.view(batch, 1, 1, p_len).expand(batch, 1, q_len, p_len)
    mask = torch.cat([prefix_mask, mask.expand(batch, 1, q_len, k_len)], dim=-1)
    return (torch.cat([prefix_key, key], dim=2), torch.cat([prefix_value, value], dim=2),
            mask, _bias_widened(kwargs, p_len))


def _bias_widened(kwargs: dict, p_len: int) -> dict:
    """T5's position bias [.., q, k] padded for p_len prefix keys: they carry no bias."""
    bias = kwargs.get("position_bias")
    if bias is None:
        return kwargs
    return {**kwargs, "position_bias": F.pad(bias, (p_len, 0))}


@dataclass
class WidenedCross:
    """One cross-attention site's prefix-widened keys for the decode-cache rows that attend
    over a prefix there. The encoder side of a row does not change while it decodes, so
    `modeling.decode_rows` keeps these from the row's first step on, as it keeps the
    cross-attention keys themselves, instead of widening them again every step.

    rows: the cache rows they belong to (row i of each tensor is cache row rows[i]);
    prefix: the bank stack they were read from (another one, after a restack: recomputed);
    key / value [k, heads, P + E, head_dim]: the prefix then the encoder keys;
    mask [k, 1, q, P + E] bool.
    """

    rows: tuple[int, ...]
    prefix: PrefixBank
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor


def _widened(module: nn.Module, prefix: PrefixBank, index: RowIndex,
             subset: RowSubset | None, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, mask: torch.Tensor | None, kwargs: dict) -> tuple:
    """`_with_prefix` for the rows of `subset` (None: every row; index: theirs; query:
    theirs), key / value / mask the whole batch's: read from the context's
    cross-attention store when it holds them (same rows, stack and widths; nothing is
    cut from the batch then) and put there otherwise; without a store (no cached decode,
    or not a cross-attention) computed."""
    rows = all_rows(query.shape[0]) if subset is None else subset.rows
    store = module.vladapter_context.widened_cross \
        if getattr(module, "vladapter_cross_attention", False) else None
    entry = None if store is None else store.get(module.vladapter_site)
    p_len = prefix.key.shape[2]
    if (entry is not None and entry.prefix is prefix and entry.rows == rows
            and entry.key.shape[2] == p_len + key.shape[2]
            and entry.mask.shape[2] == query.shape[2]):
        return entry.key, entry.value, entry.mask, _bias_widened(kwargs, p_len)
    if subset is not None:
        key, value, mask = (_batch_rows(t, subset.of, key.shape[0]) for t in (key, value, mask))
    key, value, mask, kwargs = _with_prefix(module, prefix, index, query, key, value, mask,
                                            kwargs)
    if store is not None:
        store[module.vladapter_site] = WidenedCross(rows, prefix, key, value, mask)
    return key, value, mask, kwargs


def _batch_rows(t: torch.Tensor | None, take: Callable[[torch.Tensor], torch.Tensor],
                batch: int) -> torch.Tensor | None:
    """take(t): some rows of t [batch, ...]; t itself when None or broadcast over the batch
    [1, ...]."""
    if t is None or t.shape[0] != batch:
        return t
    return take(t)


def _rows_kwargs(kwargs: dict, take: Callable[[torch.Tensor], torch.Tensor],
                 batch: int) -> dict:
    """kwargs with T5's position bias cut to some rows (`_batch_rows`)."""
    bias = kwargs.get("position_bias")
    if bias is None:
        return kwargs
    return {**kwargs, "position_bias": _batch_rows(bias, take, batch)}


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None, *,
                     widen_every_row: bool = False, **kwargs: Any):
    """SDPA attention that prepends the active rows' key/value prefixes (prefix tuning).

    query [b, heads, q, head_dim], key / value [b, heads, k, head_dim] -> ([b, q, heads,
    head_dim], None). Only the rows whose slot has a prefix here (`PrefixBank.used_by`)
    attend over prefix + keys; the others attend over their own keys alone, which is what
    a zero-length (fully masked) prefix computes, without widening every row's keys, mask
    and T5 bias to the longest prefix. widen_every_row: widen every row's keys instead (a
    family whose rows without a prefix run its own attention code when alone, BLIP's BERT,
    keeps its rows within rounding of that code this way).
    """
    ctx: AdapterContext | None = getattr(module, "vladapter_context", None)
    prefix = None if ctx is None or ctx.weights is None else \
        ctx.weights.prefix.get(module.vladapter_site)
    subset = None if prefix is None or widen_every_row else ctx.index.subset(prefix.used_by)
    # Causal only where the module says so (BLIP's BERT attention does not), for the rows
    # without a prefix too: sdpa_attention_forward's default would be causal.
    kwargs = {"is_causal": getattr(module, "is_causal", False), **kwargs}
    batch = query.shape[0]
    if prefix is not None and subset is None:  # every row has a prefix (or is widened)
        key, value, attention_mask, kwargs = _widened(
            module, prefix, ctx.index, None, query, key, value, attention_mask, kwargs)
    if subset is None or not len(subset.index):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if subset.span is not None:  # each part on its own rows, views of the batch
        start, stop = subset.span
        parts = [_plain_rows(module, slice(0, start), query, key, value, attention_mask,
                             kwargs),
                 _prefix_rows(module, prefix, subset, query, key, value, attention_mask,
                              kwargs),
                 _plain_rows(module, slice(stop, batch), query, key, value, attention_mask,
                             kwargs)]
        return torch.cat([part for part in parts if part is not None]), None
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    part = _prefix_rows(module, prefix, subset, query, key, value, attention_mask, kwargs)
    if torch.is_grad_enabled():  # `out` is sdpa's fresh output: written in place otherwise
        return out.index_copy(0, subset.positions, part), weights
    return out.index_copy_(0, subset.positions, part), weights


def _plain_rows(module: nn.Module, rows: slice, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, mask: torch.Tensor | None, kwargs: dict
                ) -> torch.Tensor | None:
    """Attention of batch rows `rows` (a span without a prefix) over their own keys
    -> [rows, q, heads, head_dim], or None for no rows."""
    if rows.start == rows.stop:
        return None
    batch = query.shape[0]

    def take(t: torch.Tensor) -> torch.Tensor:
        return t[rows]

    out, _ = sdpa_attention_forward(module, query[rows], key[rows], value[rows],
                                    _batch_rows(mask, take, batch),
                                    **_rows_kwargs(kwargs, take, batch))
    return out


def _prefix_rows(module: nn.Module, prefix: PrefixBank, subset: RowSubset,
                 query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 mask: torch.Tensor | None, kwargs: dict) -> torch.Tensor:
    """Attention of the subset's rows over their prefix and their own keys
    -> [rows, q, heads, head_dim]."""
    kwargs = _rows_kwargs(kwargs, subset.of, query.shape[0])
    key, value, mask, kwargs = _widened(module, prefix, subset.index, subset,
                                        subset.of(query), key, value, mask, kwargs)
    out, _ = sdpa_attention_forward(module, subset.of(query), key, value, mask, **kwargs)
    return out


AttentionInterface.register(ATTENTION_IMPLEMENTATION, prefix_attention)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


def route_through_interface(lm: nn.Module) -> None:
    """Attention of T5 / BART goes through `prefix_attention` (their attention interface)."""
    lm.set_attn_implementation(ATTENTION_IMPLEMENTATION)


def install(backbone: nn.Module, lm_type: str, lm: nn.Module,
            route_attention: Callable[[nn.Module], None] = route_through_interface
            ) -> AdapterContext:
    """Find every adapter site of `backbone` once; returns the context the hooks read.

    A site's hooks are registered when a bank first uses it (`AdapterContext.use`).
    route_attention(lm): makes the attention sites (tagged with `vladapter_context` and
    `vladapter_site`) call `prefix_attention`; a family whose attention bypasses the
    Hugging Face attention interface (BLIP's BERT) brings its own.
    """
    ctx = AdapterContext()
    for name, module in backbone.named_modules():
        if name.startswith("vision.") or name == "vision":
            continue
        if isinstance(module, nn.Linear):
            ctx.hooks.add(name, module, forward=_linear_hook(name, ctx),
                          own_forward=partial(_linear_forward, name, ctx))
        elif isinstance(module, nn.Embedding) and name.startswith("visual."):
            ctx.hooks.add(name, module, forward=_embedding_hook(name, ctx))
        elif is_layer_norm(module):
            ctx.hooks.add(name, module, forward=_norm_hook(name, ctx))
    for name, position in block_positions(lm_type, lm).items():
        _position_hooks(name, position, ctx)
    for name, attention in attention_sites(lm_type, lm).items():
        attention.vladapter_context = ctx
        attention.vladapter_site = name
        attention.vladapter_cross_attention = name.endswith(".cross_attn")
    route_attention(lm)
    return ctx
