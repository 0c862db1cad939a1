"""VL-T5 / VL-BART's joint encoder: visual tokens carry no text positions.

The encoder input of a row is [prompt vectors | text tokens | visual tokens], packed to
the left (`VLBackbone.encoder_inputs`), each token tagged with its kind: PROMPT, TEXT or
VISUAL ([b, L] long, `kinds`). With `visual_semantics="vlt5"` the encoder computes what
the papers' `JointEncoder` computes (j-min/VL-T5 `modeling_t5.py` / `modeling_bart.py`,
ylsung/VL_adapter for the prompts):

T5 (VL-T5): the relative position bias B = compute_bias(L, L) [heads, L, L] of the first
self-attention, which T5 shares with every layer, is kept only between positional tokens
(prompt or text: VL-Adapter's prompts precede the text inside T5's positions):

    B'[h, i, j] = B[h, i, j]   if kinds[i] != VISUAL and kinds[j] != VISUAL
                  0            otherwise (text-vision, vision-text, vision-vision)

Positional tokens come first in a packed row, so B[h, i, j] over them is VL-T5's
compute_bias(n_text, n_text).

BART (VL-BART, `share_vis_lang_layer_norm` off, its default): the learned position
embedding P (offset 2) is added to the text tokens only, counted from the first text
token (so only text is bounded by P's length: `BackboneConfig.text_budget`); the
embedding LayerNorm normalises prompt and text, not the visual tokens (their projection
has its own norms):

    text token k of the row:  h = LN_emb(e_k + P[k + 2])
    prompt vector p:          h = LN_emb(p)            (VL-Adapter: prompts get no position)
    visual token v:           h = v

The hooks read the kinds from an attribute of the module they sit on (not from a
closure), so a deep copy of the backbone (full fine-tuning) hooks its own copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

PROMPT, TEXT, VISUAL = 0, 1, 2
_KINDS = "vladapter_token_kinds"  # module attribute: kinds [b, L] during `use`, else None


def _t5_text_only_bias(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    """Pre-hook of the encoder's first T5Attention: hand it the masked bias [b, h, L, L]."""
    kinds = getattr(module, _KINDS)
    if kinds is None or kwargs.get("position_bias") is not None:
        return None
    hidden = args[0] if args else kwargs["hidden_states"]
    length = kinds.shape[1]
    if hidden.shape[:2] != kinds.shape:
        raise ValueError(f"token kinds {tuple(kinds.shape)} do not match the encoder input "
                         f"{tuple(hidden.shape[:2])}")
    bias = module.compute_bias(length, length, device=hidden.device)  # [1, heads, L, L]
    positional = kinds != VISUAL
    pairs = (positional[:, :, None] & positional[:, None, :]).unsqueeze(1)  # [b, 1, L, L]
    return args, {**kwargs, "position_bias": bias * pairs.to(bias.dtype)}


def _bart_lookup_shape_only(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of the BART encoder's position embedding: it reads its input
    [b, L] for the shape alone and would look up positions 0..L-1, past its table when
    visual tokens and text together outnumber it; `_bart_text_positions` computes the
    output from the kinds, so the lookup is cut to one position."""
    if getattr(module, _KINDS) is None:
        return None
    return (args[0][:, :1], *args[1:])


def _bart_text_positions(module: nn.Module, args: tuple, output: torch.Tensor
                         ) -> torch.Tensor | None:
    """Forward hook of the BART encoder's position embedding: output [b, L, d] becomes
    P[k + offset] on the k-th text token of each row and zero on the other tokens."""
    kinds = getattr(module, _KINDS)
    if kinds is None:
        return None
    text = kinds == TEXT
    positions = (text.long().cumsum(1) - 1).clamp(min=0)  # [b, L]
    table = F.embedding(positions + module.offset, module.weight)
    return (table * text.unsqueeze(-1).to(table.dtype)).to(output.dtype)


def _bart_norm_skips_visual(module: nn.Module, args: tuple, output: torch.Tensor
                            ) -> torch.Tensor | None:
    """Forward hook of the BART encoder's embedding LayerNorm: visual tokens [b, L, d]
    keep their input (runs after the adapter hooks, which may re-norm per row)."""
    kinds = getattr(module, _KINDS)
    if kinds is None:
        return None
    return torch.where((kinds == VISUAL).unsqueeze(-1), args[0], output)


class JointEncoder:
    """The hooks that give a T5 / BART encoder VL-T5's semantics inside `use(kinds)`."""

    def __init__(self, lm_type: str, lm: nn.Module):
        if lm_type == "t5":
            attention = lm.encoder.block[0].layer[0].SelfAttention
            attention.register_forward_pre_hook(_t5_text_only_bias, with_kwargs=True)
            self.modules = [attention]
        elif lm_type == "bart":
            encoder = lm.model.encoder
            encoder.embed_positions.register_forward_pre_hook(_bart_lookup_shape_only)
            encoder.embed_positions.register_forward_hook(_bart_text_positions)
            encoder.layernorm_embedding.register_forward_hook(_bart_norm_skips_visual)
            self.modules = [encoder.embed_positions, encoder.layernorm_embedding]
        else:
            raise ValueError(f"VL-T5 semantics need a T5 or BART LM, got {lm_type!r}")
        for module in self.modules:
            setattr(module, _KINDS, None)

    @contextmanager
    def use(self, kinds: torch.Tensor) -> Iterator[None]:
        """Run the encoder on rows whose tokens have these kinds [b, L] (packed)."""
        saved = [getattr(module, _KINDS) for module in self.modules]
        for module in self.modules:
            setattr(module, _KINDS, kinds)
        try:
            yield
        finally:
            for module, value in zip(self.modules, saved, strict=True):
                setattr(module, _KINDS, value)
