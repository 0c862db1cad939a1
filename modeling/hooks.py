"""Hooks that let a frozen Hugging Face LM read the stacked adapter bank.

`install(backbone)` runs once per backbone. It registers forward hooks on the Linear,
LayerNorm and Embedding modules (LoRA deltas, overrides), on every block position
(serial and parallel bottlenecks), and routes attention through `prefix_attention`
(key/value prefixes). Hooks do nothing unless an `AdapterContext` is active, so the bare
backbone computes exactly what the Hugging Face model computes.

The context holds the stacked weights and the slot of every row for the current call;
under beam search the caller hands the decoder an index repeated per beam.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from modeling.bank import StackedPrefix, StackedWeights
from modeling.kernels import RowIndex, gathered_bottleneck, gathered_lora, gathered_rows
from modeling.sites import BlockPosition, attention_sites, block_positions, is_layer_norm

ATTENTION_IMPLEMENTATION = "vladapter"


class AdapterContext:
    """The stacked weights and per-row slots that the hooks read during one call."""

    def __init__(self) -> None:
        self.weights: StackedWeights | None = None
        self.index: RowIndex | None = None
        self.captured: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.weights is not None

    @contextmanager
    def use(self, weights: StackedWeights | None, index: RowIndex | None,
            rows: int | None = None) -> Iterator[None]:
        """Activate `weights` for rows `index` (both None: the bare backbone).

        rows: the batch size the hooks will see. The index is checked against it and
        against the bank here, once per forward and before any compute (ValueError);
        the hooks then trust it.
        """
        if weights is not None:
            if index is None:
                raise ValueError("adapter weights given without an index: expected one slot "
                                 "per row")
            index.check(rows, weights.slots)
        saved = (self.weights, self.index)
        self.weights, self.index = weights, index
        try:
            yield
        finally:
            self.weights, self.index = saved
            self.captured.clear()


def _layer_norm(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """Recompute a LayerNorm with per-row affine parameters weight/bias [b, d]."""
    if isinstance(module, nn.LayerNorm):
        normed = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    else:  # T5LayerNorm: RMS norm computed in fp32, no mean subtraction, no bias.
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        normed = (x * torch.rsqrt(variance + module.variance_epsilon)).to(weight.dtype)
    out = normed * weight.unsqueeze(1)
    return out if bias is None else out + bias.unsqueeze(1)


def _linear_hook(name: str, ctx: AdapterContext):
    def hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        weights, index = ctx.weights, ctx.index
        if weights is None:
            return None
        x = args[0]
        w_over = weights.overrides.get(f"{name}.weight")
        b_over = weights.overrides.get(f"{name}.bias")
        if w_over is not None:
            output = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]),
                               gathered_rows(w_over, index).transpose(1, 2)).view_as(output)
            if module.bias is not None and b_over is None:
                output = output + module.bias
        elif b_over is not None and module.bias is not None:
            output = output - module.bias
        if b_over is not None:
            output = output + gathered_rows(b_over, index).view(x.shape[0], *[1] * (x.dim() - 2),
                                                                -1)
        lora = weights.lora.get(name)
        if lora is not None:
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            if lora.dropout > 0:  # non-zero only for train forms in training mode
                flat = F.dropout(flat, lora.dropout, training=True)
            delta = gathered_lora(flat, lora.lora_a, lora.lora_b, lora.scale, index)
            output = output + delta.view_as(output)
        return output

    return hook


def _norm_hook(name: str, ctx: AdapterContext):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        weights = ctx.weights
        if weights is None:
            return None
        w_over = weights.overrides.get(f"{name}.weight")
        b_over = weights.overrides.get(f"{name}.bias")
        if w_over is None and b_over is None:
            return None
        weight = gathered_rows(w_over, ctx.index) if w_over is not None else \
            module.weight.expand(args[0].shape[0], -1)
        bias = None
        if getattr(module, "bias", None) is not None:
            bias = gathered_rows(b_over, ctx.index) if b_over is not None else \
                module.bias.expand(args[0].shape[0], -1)
        return _layer_norm(module, args[0], weight, bias)

    return hook


def _embedding_hook(name: str, ctx: AdapterContext):
    def hook(module: nn.Embedding, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        weights = ctx.weights
        table = None if weights is None else weights.overrides.get(f"{name}.weight")
        if table is None:
            return None
        ids = args[0]  # [b, n]
        slots, vocab = ctx.index.slots, table.shape[1]
        flat = (slots.view(-1, 1) * vocab + ids).reshape(-1)
        return table.reshape(-1, table.shape[-1])[flat].view(*ids.shape, -1)

    return hook


def _position_hooks(name: str, position: BlockPosition, ctx: AdapterContext) -> None:
    """Serial / parallel bottleneck at one block position."""

    def capture_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        weights = ctx.weights
        if weights is not None and name in weights.bottleneck and \
                weights.bottleneck[name].any_parallel:
            ctx.captured[name] = args[0] if args else kwargs["hidden_states"]

    def add_adapter(module: nn.Module, args: tuple, output: Any) -> Any:
        weights = ctx.weights
        stacked = None if weights is None else weights.bottleneck.get(name)
        if stacked is None:
            return None
        h = output[0] if position.output_is_tuple else output
        z = h
        if stacked.any_parallel:
            x = ctx.captured.pop(name)
            z = torch.where(stacked.parallel[ctx.index.slots].view(-1, 1, 1), x, h)
        delta = gathered_bottleneck(z, stacked.down_weight, stacked.down_bias, stacked.up_weight,
                                    stacked.up_bias, stacked.scale, stacked.activations,
                                    ctx.index)
        h = h + delta
        return (h, *output[1:]) if position.output_is_tuple else h

    position.input_module.register_forward_pre_hook(capture_input, with_kwargs=True)
    position.output_module.register_forward_hook(add_adapter)


def _with_prefix(module: nn.Module, prefix: StackedPrefix, index: RowIndex,
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
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: prefixes carry no relative-position bias.
        kwargs = {**kwargs, "position_bias": F.pad(bias, (p_len, 0))}
    return (torch.cat([prefix_key, key], dim=2), torch.cat([prefix_value, value], dim=2),
            mask, kwargs)


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any):
    """SDPA attention that prepends the active rows' key/value prefixes (prefix tuning)."""
    ctx: AdapterContext | None = getattr(module, "vladapter_context", None)
    if ctx is not None and ctx.weights is not None:
        prefix = ctx.weights.prefix.get(module.vladapter_site)
        if prefix is not None:
            index = ctx.index
            key, value, attention_mask, kwargs = _with_prefix(
                module, prefix, index, query, key, value, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, prefix_attention)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


def install(backbone: nn.Module, lm_type: str, lm: nn.Module) -> AdapterContext:
    """Register every hook on `backbone` once; returns the context the hooks read."""
    ctx = AdapterContext()
    for name, module in backbone.named_modules():
        if name.startswith("vision.") or name == "vision":
            continue
        if isinstance(module, nn.Linear):
            module.register_forward_hook(_linear_hook(name, ctx))
        elif isinstance(module, nn.Embedding) and name.startswith("visual."):
            module.register_forward_hook(_embedding_hook(name, ctx))
        elif is_layer_norm(module):
            module.register_forward_hook(_norm_hook(name, ctx))
    for name, position in block_positions(lm_type, lm).items():
        _position_hooks(name, position, ctx)
    for name, attention in attention_sites(lm_type, lm).items():
        attention.vladapter_context = ctx
        attention.vladapter_site = name
    lm.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    return ctx
